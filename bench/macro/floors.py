"""What the server cannot avoid, measured on this machine in the same run.

The CPU-per-GiB target compares the server's CPU seconds per GiB ingested with the sum of
three floors, each measured here over :data:`SIZE` bytes:

- ``sha256_cpu_s_per_GiB``: one SHA-256 pass (hashlib, 64 KiB updates), the protocol's
  whole-file checksum (bench process).
- ``recycled_write_cpu_s_per_GiB``: ``pwrite`` of 64 KiB blocks into a new file, with
  ``fdatasync`` and ``posix_fadvise(POSIX_FADV_DONTNEED)`` of each 8 MiB range once the writer
  is past it, so the page cache recycles the same pages instead of growing (bench process,
  user + system). This is the cheapest way to store the bytes on these virtual machines.
- ``receive_cpu_s_per_GiB``: the discard server's CPU (``bench.baselines.discard``, a uvloop
  server reading into one reused buffer) while 8 connections send it the bytes over
  loopback: what receiving costs before any parsing.

``floor_cpu_s_per_GiB`` is their sum. ``pagecache_write_cpu_s_per_GiB`` (the same writes
without flush or advice: the page cache grows, and every page is a first touch on these VMs)
is shown beside them, as what a server that never recycles its pages pays.
"""

from __future__ import annotations

import hashlib
import os
import resource
import socket
import threading
from pathlib import Path

from bench.macro.procstat import cpu_seconds, descendants
from bench.macro.services import Discard

SIZE = 512 << 20
BLOCK = 64 << 10
#: flush and drop the page cache behind the writer every this many bytes
RECYCLE = 8 << 20
#: connections sending to the discard server (like the 8 uploaders of the throughput case)
SENDERS = 8
SEND_CHUNK = 1 << 20
GiB = 1 << 30


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def sha256_cost(size: int = SIZE) -> float:
    block = memoryview(os.urandom(BLOCK))
    h = hashlib.sha256()
    t0 = _cpu()
    for _ in range(size // BLOCK):
        h.update(block)
    h.digest()
    return (_cpu() - t0) * GiB / size


def pagecache_write_cost(directory: Path, size: int = SIZE, *, recycle: bool = False) -> float:
    """CPU seconds per GiB of 64 KiB ``pwrite`` calls into a new file; with ``recycle``,
    every :data:`RECYCLE` bytes are flushed and dropped from the page cache behind the
    writer."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "floor.bin"
    block = os.urandom(BLOCK)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t0 = _cpu()
        for i in range(size // BLOCK):
            os.pwrite(fd, block, i * BLOCK)
            end = (i + 1) * BLOCK
            if recycle and end % RECYCLE == 0:
                os.fdatasync(fd)
                os.posix_fadvise(fd, end - RECYCLE, RECYCLE, os.POSIX_FADV_DONTNEED)
        cost = (_cpu() - t0) * GiB / size
    finally:
        os.close(fd)
        path.unlink()
    return cost


def _send(port: int, size: int, chunk: memoryview, confirmed: list[int]) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        sent = 0
        while sent < size:
            part = chunk[: min(len(chunk), size - sent)]
            s.sendall(part)
            sent += len(part)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while data := s.recv(64):
            reply += data
    confirmed.append(int(reply or b"-1"))


def receive_cost(directory: Path, size: int = SIZE) -> float:
    """CPU seconds per GiB of the discard server receiving ``size`` bytes over
    :data:`SENDERS` loopback connections."""
    svc = Discard(directory / "discard").start()
    try:
        share = size // SENDERS
        chunk = memoryview(os.urandom(SEND_CHUNK))
        confirmed: list[int] = []
        threads = [
            threading.Thread(target=_send, args=(svc.port, share, chunk, confirmed))
            for _ in range(SENDERS)
        ]
        pids = descendants(svc.pids())
        t0 = sum(cpu_seconds(p) for p in pids)
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cost = sum(cpu_seconds(p) for p in pids) - t0
    finally:
        svc.stop()
    if confirmed != [share] * SENDERS:
        raise RuntimeError(f"discard server confirmed {confirmed}, sent {share} on each")
    return cost * GiB / (share * SENDERS)


def measure(directory: Path, size: int = SIZE) -> dict[str, float]:
    sha = sha256_cost(size)
    recycled = pagecache_write_cost(directory, size, recycle=True)
    receive = receive_cost(directory, size)
    return {
        "sha256_cpu_s_per_GiB": sha,
        "recycled_write_cpu_s_per_GiB": recycled,
        "receive_cpu_s_per_GiB": receive,
        "floor_cpu_s_per_GiB": sha + recycled + receive,
        "pagecache_write_cpu_s_per_GiB": pagecache_write_cost(directory, size),
    }

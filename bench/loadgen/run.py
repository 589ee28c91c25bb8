"""Running a load: devices in one or several processes, the READY/HELD/GO handshake with
whoever drives the run, and the verification that every upload really succeeded.

The driver (a person, or the bench suite through ``--sync-stdin``) sees ``READY`` once every
device is connected, answers ``GO``; with ``stop_after`` it sees ``HELD`` once every device
has that many segments acknowledged and answers ``GO`` again (after killing and restarting the
server, say). The last line on stdout is the JSON result.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import multiprocessing as mp
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from bench.loadgen.content import Content
from bench.loadgen.context import Context
from bench.loadgen.device import failure_kind
from bench.loadgen.spec import LoadSpec
from bench.loadgen.stats import Stats

#: connection attempts in flight per process when no ramp is given
CONNECT_CONCURRENCY = 256

Barrier = Callable[[str], Awaitable[None]]


class Device(Protocol):
    finished: asyncio.Future[None]

    async def connect(self) -> None: ...

    def begin(self) -> None: ...

    async def close(self) -> None: ...


def make_device(ctx: Context, index: int) -> Device:
    target = ctx.spec.target
    if target == "raw":
        from bench.loadgen.raw import RawDevice

        return RawDevice(ctx, index)
    if target == "http":
        from bench.loadgen.http import HttpDevice

        return HttpDevice(ctx, index)
    from bench.loadgen.mqtt import MqttDevice

    return MqttDevice(ctx, index)


#: open files the bench asks for (inherited by every server it starts), like a service's
#: LimitNOFILE: 10 000 uploading devices cost ftserver 4 descriptors each (socket, staging
#: lock, data, journal)
WANT_NOFILE = 262_144


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE: to :data:`WANT_NOFILE` where allowed (root), else to the hard
    limit. Returns the limit now in effect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < WANT_NOFILE:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (WANT_NOFILE, WANT_NOFILE))
            return WANT_NOFILE
        except (ValueError, OSError):
            pass
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def _connect_all(devices: list[Device], spec: LoadSpec, stats: Stats) -> None:
    ramp = spec.ramp / spec.procs if spec.ramp else 0.0
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    t0 = time.monotonic()

    async def one(i: int, d: Device) -> None:
        if ramp:
            await asyncio.sleep(t0 + i / ramp - time.monotonic())
        async with limit:
            for attempt in range(20):
                try:
                    await d.connect()
                    return
                except OSError as exc:  # TimeoutError and ConnectionError included
                    if attempt == 19:
                        stats.error(f"device {i}: cannot connect: {exc!r}", failure_kind(exc))
                        d.finished.set_result(None)
                        return
                    await asyncio.sleep(0.1)

    await asyncio.gather(*(one(i, d) for i, d in enumerate(devices)))


async def run_shard(spec: LoadSpec, indices: range, barrier: Barrier) -> Stats:
    """Run the devices ``indices`` in this process's event loop."""
    ctx = Context(spec, len(indices))
    stats = ctx.stats
    devices = [make_device(ctx, i) for i in indices]
    t0 = time.perf_counter()
    await _connect_all(devices, spec, stats)
    stats.connect_s = time.perf_counter() - t0
    await barrier("READY")
    cpu0 = time.process_time()
    stats.t_start = time.time()
    ctx.start()
    for d in devices:
        if not d.finished.done():
            d.begin()
    if spec.stop_after:
        all_done = asyncio.gather(*(d.finished for d in devices))
        waiters: list[asyncio.Future[Any]] = [ctx.all_held, all_done]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        await barrier("HELD")
        ctx.release()
    await asyncio.gather(*(d.finished for d in devices))
    stats.t_end = time.time()
    stats.cpu_s = time.process_time() - cpu0
    await asyncio.gather(*(d.close() for d in devices), return_exceptions=True)
    return stats


def _new_loop() -> asyncio.AbstractEventLoop:
    import uvloop

    return uvloop.new_event_loop()


def _stdin_barrier(sync: bool) -> Barrier:
    async def barrier(name: str) -> None:
        if not sync:
            return
        print(name, flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if line.strip() != "GO":
            raise SystemExit(f"expected GO after {name}, got {line!r}")

    return barrier


def _child(spec: LoadSpec, indices: range, conn: Connection) -> None:
    raise_fd_limit()

    async def barrier(name: str) -> None:
        conn.send(name)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    with asyncio.Runner(loop_factory=_new_loop) as runner:
        stats = runner.run(run_shard(spec, indices, barrier))
    conn.send(("DONE", stats))
    conn.close()


def _shards(spec: LoadSpec) -> list[range]:
    n, k = spec.devices, min(spec.procs, spec.devices)
    bounds = [n * i // k for i in range(k + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(k)]


def run_load(spec: LoadSpec, *, sync_stdin: bool = False) -> Stats:
    """Run the load described by ``spec``; returns the merged statistics (verified)."""
    raise_fd_limit()
    if spec.procs <= 1:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            stats = runner.run(run_shard(spec, range(spec.devices), _stdin_barrier(sync_stdin)))
    else:
        stats = _run_procs(spec, sync_stdin)
    verify(spec, stats)
    return stats


def _run_procs(spec: LoadSpec, sync_stdin: bool) -> Stats:
    ctx = mp.get_context("fork")
    pipes: list[Connection] = []
    procs = []
    for indices in _shards(spec):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_child, args=(spec, indices, child), daemon=True)
        p.start()
        child.close()
        pipes.append(parent)
        procs.append(p)
    stats = Stats()
    phases = ["READY", "HELD"] if spec.stop_after else ["READY"]
    try:
        for phase in phases:
            for conn in pipes:
                got = conn.recv()
                if got != phase:
                    raise RuntimeError(f"load generator process: expected {phase}, got {got!r}")
            if sync_stdin:
                print(phase, flush=True)
                if sys.stdin.readline().strip() != "GO":
                    raise SystemExit(f"expected GO after {phase}")
            for conn in pipes:
                conn.send("GO")
        for conn in pipes:
            _tag, shard = conn.recv()
            stats.merge(shard)
    finally:
        for p in procs:
            p.join(30)
    return stats


def verify(spec: LoadSpec, stats: Stats) -> None:
    """Check every upload reported successful really is there, with the right size (and
    bytes); count each failure as an error. A broken server cannot look fast."""
    expected_files = stats.files
    if spec.target in ("mosquitto", "raw"):
        return  # nothing is stored: the reason codes (or the byte count) were the check
    if not spec.verify_dir:
        stats.error("no --verify-dir: exports were not checked", "not verified")
        return
    root = Path(spec.verify_dir)
    content = Content(spec.seed) if spec.verify_content else None
    missing = 0
    for client_id, file_id, name, size in stats.exports:
        path = export_path(spec, root, client_id, file_id, name)
        try:
            got = path.stat().st_size
        except OSError:
            missing += 1
            stats.error(f"export missing: {path}", "export missing")
            continue
        if got != size:
            stats.error(f"export {path}: {got} bytes, uploaded {size}", "export size")
        elif content is not None and _sha256(path) != content.file_sha256(size):
            stats.error(f"export {path}: content differs from what was uploaded", "export content")
    if len(stats.exports) != expected_files:
        stats.error(
            f"{expected_files} files reported, {len(stats.exports)} recorded", "export records"
        )


def export_path(spec: LoadSpec, root: Path, client_id: str, file_id: str, name: str) -> Path:
    if spec.target == "ftserver":
        from ftserver.export.layout import export_relpath

        return root / "exports" / export_relpath(client_id, file_id, name)
    if spec.target == "naive":
        from bench.baselines.naive_subscriber import export_path as naive_path

        return naive_path(root, file_id, name)
    from bench.baselines.http_upload import export_path as http_path

    return http_path(root, client_id, file_id, name)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def result_json(spec: LoadSpec, stats: Stats) -> dict[str, Any]:
    d = stats.to_json()
    d["ok"] = stats.errors == 0 and stats.files > 0
    d["spec"] = {
        f.name: v if isinstance(v := getattr(spec, f.name), (int, float, str)) else str(v)
        for f in dataclasses.fields(spec)
    }
    return d

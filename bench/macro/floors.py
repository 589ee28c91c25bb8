"""What the server cannot avoid, measured on this machine in the same run (bench process).

- ``sha256_cpu_s_per_GiB``: CPU seconds of one SHA-256 pass (hashlib, 64 KiB updates); the
  yardstick of target 2.
- ``pagecache_write_cpu_s_per_GiB``: CPU seconds (user + system) to ``pwrite`` 64 KiB blocks
  into a new file (page cache, no flush). On a virtual machine whose memory is handed out on
  first touch this is far above the 0.25 s/GiB of bare metal, and every byte a server stores
  pays it.
"""

from __future__ import annotations

import hashlib
import os
import resource
from pathlib import Path

SIZE = 512 << 20
BLOCK = 64 << 10
GiB = 1 << 30


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def sha256_cost() -> float:
    block = memoryview(os.urandom(BLOCK))
    h = hashlib.sha256()
    t0 = _cpu()
    for _ in range(SIZE // BLOCK):
        h.update(block)
    h.digest()
    return (_cpu() - t0) * GiB / SIZE


def pagecache_write_cost(directory: Path) -> float:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "floor.bin"
    block = os.urandom(BLOCK)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t0 = _cpu()
        for i in range(SIZE // BLOCK):
            os.pwrite(fd, block, i * BLOCK)
        cost = (_cpu() - t0) * GiB / SIZE
    finally:
        os.close(fd)
        path.unlink()
    return cost


def measure(directory: Path) -> dict[str, float]:
    return {
        "sha256_cpu_s_per_GiB": sha256_cost(),
        "pagecache_write_cpu_s_per_GiB": pagecache_write_cost(directory),
    }

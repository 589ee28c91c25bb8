"""CPU seconds, RSS and bytes read of a process tree, from /proc (no dependency).

A :class:`Sampler` thread follows the processes of a server (its root pids and every
descendant, re-resolved as workers come and go or the server restarts) every 50 ms: it keeps
the peak RSS per process and of the sum, and the last CPU time and ``rchar`` seen per pid, so
a measured interval counts a process that died during it too.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
INTERVAL = 0.05


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text.rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of one process (its threads included)."""
    f = _stat_fields(pid)
    return (int(f[11]) + int(f[12])) / CLK


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def rchar(pid: int) -> int:
    """Bytes the process asked read()/pread() for (page cache hits included)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def accepted(port: int) -> tuple[int, int]:
    """The established TCP connections whose local port is ``port`` (a server's accepted
    connections, as the kernel sees them) and the bytes waiting in their receive queues:
    sent to the server, not yet read by it. From ``/proc/net/tcp`` and ``tcp6`` of this
    network namespace."""
    count = unread = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 4 and f[3] == "01" and int(f[1].rsplit(":", 1)[1], 16) == port:
                count += 1
                unread += int(f[4].split(":")[1], 16)
    return count, unread


def descendants(roots: list[int]) -> list[int]:
    """``roots`` and all their live descendants."""
    parent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
    found = [p for p in roots if p in parent]
    frontier = set(found)
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier and p not in found}
        found.extend(sorted(frontier))
    return found


@dataclass
class Usage:
    """What a measured interval cost a process tree."""

    cpu_s: float = 0.0
    rchar: int = 0
    rss_peak: int = 0  # peak of the sum over the tree
    rss_end: int = 0
    rss_start: int = 0
    per_process: dict[str, dict[str, float]] = field(default_factory=dict)


class Sampler:
    def __init__(self, pids: Callable[[], list[int]], names: Callable[[int], str]) -> None:
        self._roots = pids
        self._names = names
        self._pids: list[int] = []
        self._cpu: dict[int, float] = {}
        self._io: dict[int, int] = {}
        self._cpu0: dict[int, float] = {}
        self._io0: dict[int, int] = {}
        self._peak: dict[int, int] = {}
        self._peak_total = 0
        self._rss_now = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._last_scan = 0.0
        self._lock = threading.Lock()

    def _scan(self) -> None:
        self._pids = descendants(self._roots())
        self._last_scan = time.monotonic()

    def _sample(self) -> None:
        if time.monotonic() - self._last_scan > 0.5:
            self._scan()
        total = 0
        for pid in self._pids:
            try:
                cpu = cpu_seconds(pid)
                rss = rss_bytes(pid)
                io = rchar(pid)
            except (OSError, IndexError, ValueError):
                continue
            with self._lock:
                self._cpu[pid] = cpu
                self._io[pid] = io
                if rss > self._peak.get(pid, 0):
                    self._peak[pid] = rss
            total += rss
        self._rss_now = total
        self._peak_total = max(self._peak_total, total)

    def rss_now(self) -> int:
        self._scan()
        self._sample()
        return self._rss_now

    def start(self) -> Sampler:
        self._scan()
        self._sample()
        self._cpu0 = dict(self._cpu)
        self._io0 = dict(self._io)
        self._rss_start = self._rss_now
        self._peak = {}
        self._peak_total = self._rss_now
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            self._sample()

    def stop(self) -> Usage:
        self._stop.set()
        self._thread.join()
        self._scan()
        self._sample()
        u = Usage(rss_peak=self._peak_total, rss_end=self._rss_now, rss_start=self._rss_start)
        for pid, cpu in self._cpu.items():
            d_cpu = cpu - self._cpu0.get(pid, 0.0)
            d_io = self._io[pid] - self._io0.get(pid, 0)
            u.cpu_s += d_cpu
            u.rchar += d_io
            name = f"{self._names(pid)}[{pid}]"
            u.per_process[name] = {
                "pid": pid,
                "cpu_s": d_cpu,
                "rchar": d_io,
                "rss_peak": self._peak.get(pid, 0),
            }
        return u

"""Limits and quotas that keep one client (or a flood of them) from taking the server down.

Each limit is a configuration key (``[limits]``, docs/configuration.md) with a safe default
and a metric when it is hit. With several worker processes, the connection limits are
enforced per worker, each worker taking its share (rounded up) of the configured total.
"""

from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ftserver.errors import QuotaExceeded, StorageFull


@dataclass(frozen=True, slots=True)
class Limits:
    #: connections this process accepts at once (0: no limit)
    max_connections: int = 0
    #: connections from one source address this process accepts at once (0: no limit)
    max_connections_per_ip: int = 0
    #: unfinished transfers one client may have (0: no limit); more -> 0x83
    max_transfers_per_client: int = 0
    #: segment bytes per second one client may send (0: no limit); faster -> 0x97
    client_byte_rate: int = 0
    #: below this much free space on the staging filesystem new data gets 0x97
    staging_low_water: int = 0

    def share(self, workers: int) -> Limits:
        """This worker's part of the connection limits."""
        if workers <= 1:
            return self

        def part(n: int) -> int:
            return math.ceil(n / workers) if n else 0

        return Limits(
            part(self.max_connections),
            part(self.max_connections_per_ip),
            self.max_transfers_per_client,
            self.client_byte_rate,
            self.staging_low_water,
        )


@dataclass(frozen=True, slots=True)
class Descriptors:
    """How one process shares out its descriptors (``RLIMIT_NOFILE``), chosen at start.

    A connection holds one (its socket), an open transfer one (its data file, which also
    holds its lock; the journal is opened per write). The headroom is for everything else:
    listeners, logs, the metric files, and the short-lived descriptors of exports, journal
    writes, directory flushes and recoveries running in threads."""

    #: the soft limit in force (after raising it to the hard limit)
    nofile: int
    #: what the soft limit was before
    was: int
    #: connections this process accepts at once
    connections: int
    #: transfers this process keeps open at once (the store's cache)
    open_transfers: int
    #: descriptors kept for everything else
    headroom: int
    #: said after the connection count (relay mode: each holds its upstream leg's too)
    note: str = ""

    def describe(self) -> str:
        raised = f" (raised from {self.was})" if self.was != self.nofile else ""
        return (
            f"descriptors: limit {self.nofile}{raised}; this process accepts at most "
            f"{self.connections} connections{self.note} and keeps at most {self.open_transfers} "
            f"transfers open, {self.headroom} kept for listeners, logs and exports"
        )


#: descriptors always kept aside, whatever the limit
HEADROOM_MIN = 64


def raise_nofile() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; returns (before, now)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, hard
    return soft, soft


def size_descriptors(
    nofile: int, was: int, max_connections: int, per_connection: int = 1
) -> Descriptors:
    """Share ``nofile`` descriptors out: the headroom first (1/32 of the limit, at least
    :data:`HEADROOM_MIN`), then half of the rest for connections (fewer when the configured
    ``max_connections``, this process's share, is lower) and the rest for open transfers.

    ``per_connection`` is what one client connection holds: 2 in relay mode (the device's
    socket and its upstream leg's)."""
    headroom = max(HEADROOM_MIN, nofile // 32)
    usable = max(nofile - headroom, 2)
    connections = max(usable // 2 // per_connection, 1)
    if max_connections:
        connections = min(connections, max_connections)
    return Descriptors(
        nofile, was, connections, max(usable - connections * per_connection, 1), headroom
    )


def within(limits: Limits, descriptors: Descriptors) -> Limits:
    """``limits`` with the connection limit no higher than the descriptors allow."""
    return replace(limits, max_connections=descriptors.connections)


class ConnectionCounter:
    """Open connections, in total and per source address."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.total = 0
        self.per_ip: dict[str, int] = {}

    def admit(self, ip: str) -> bool:
        lim = self.limits
        if lim.max_connections and self.total >= lim.max_connections:
            return False
        n = self.per_ip.get(ip, 0)
        if lim.max_connections_per_ip and n >= lim.max_connections_per_ip:
            return False
        self.total += 1
        self.per_ip[ip] = n + 1
        return True

    def release(self, ip: str) -> None:
        self.total -= 1
        n = self.per_ip.get(ip, 1) - 1
        if n:
            self.per_ip[ip] = n
        else:
            self.per_ip.pop(ip, None)


class ByteRate:
    """A token bucket per client: ``rate`` bytes per second, bursts up to one second's
    worth. A segment larger than that passes when the bucket is full (and leaves a debt),
    so every legal segment eventually gets through."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.capacity = float(rate)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, client_id: str, n: int, now: float | None = None) -> None:
        """Consume ``n`` bytes or raise QuotaExceeded (nothing consumed then)."""
        if not self.rate:
            return
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(client_id, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if n > tokens and tokens < self.capacity:
            self._buckets[client_id] = (tokens, now)
            raise QuotaExceeded()
        self._buckets[client_id] = (tokens - n, now)

    def forget(self, client_id: str) -> None:
        self._buckets.pop(client_id, None)


class DiskWatch:
    """Free space on the staging filesystem, measured at most every ``interval`` seconds."""

    def __init__(self, path: Path, low_water: int, interval: float = 1.0) -> None:
        self.path = path
        self.low_water = low_water
        self.interval = interval
        self._checked = -interval
        self.free = 1 << 62

    def check(self, now: float | None = None) -> None:
        """Raise StorageFull when free space is under the low-water mark."""
        if not self.low_water:
            return
        now = time.monotonic() if now is None else now
        if now - self._checked >= self.interval:
            self._checked = now
            try:
                st = os.statvfs(self.path)
                self.free = st.f_bavail * st.f_frsize
            except OSError:
                pass
        if self.free < self.low_water:
            raise StorageFull()

"""Prometheus metrics (prometheus-client; multiprocess mode when there are workers).

Every metric is declared here, once, with its help text; ``docs/metrics.md`` lists them and a
test checks that the list and this module agree.

The per-segment path only bumps plain Python counters (:class:`Meter`); a periodic flush
(every second, and at shutdown) moves them into the prometheus-client objects, whose
multiprocess values cost a lock and an mmap write each. Segment latency is sampled (one
segment in ``SEGMENT_SAMPLE``). Workers label what they count with ``worker``, so a scrape
shows how the load spread.

With workers, ``PROMETHEUS_MULTIPROC_DIR`` must be set before prometheus_client is first
imported in a process: the supervisor sets it (see :func:`prepare_multiprocess`) before it
imports this module and before it starts the workers, which inherit it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import time
from collections import Counter as LocalCounter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

if TYPE_CHECKING:
    from ftserver.errors import Outcome

ENV = "PROMETHEUS_MULTIPROC_DIR"
#: one segment in this many has its handling time observed
SEGMENT_SAMPLE = 32

_LAT = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
_SLOW = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

CONNECTIONS = Gauge(
    "ftserver_connections_open",
    "MQTT connections open now.",
    ["worker"],
    multiprocess_mode="livesum",
)
CONNECTIONS_TOTAL = Counter(
    "ftserver_connections_total",
    "MQTT connections accepted (CONNECT succeeded), by protocol version.",
    ["worker", "protocol"],
)
PROTOCOL_ERRORS = Counter(
    "ftserver_protocol_errors_total",
    "Connections closed for breaking the MQTT specification.",
    ["worker"],
)
CONNECTIONS_REFUSED = Counter(
    "ftserver_connections_refused_total",
    "Connections refused because a connection limit was reached (CONNECT answered busy).",
    ["worker"],
)
LOGIN_FAILURES = Counter(
    "ftserver_login_failures_total",
    "CONNECTs refused for bad credentials or missing authentication.",
    ["worker"],
)
TAKEOVERS = Counter(
    "ftserver_takeovers_total", "Sessions taken over by a new connection.", ["worker"]
)
PARTIAL_PACKET_BYTES = Gauge(
    "ftserver_partial_packet_bytes",
    "Receive-buffer memory held for packets not yet complete (limits.partial_packet_budget).",
    ["worker"],
    multiprocess_mode="livesum",
)
PARTIAL_PACKET_PEAK = Gauge(
    "ftserver_partial_packet_bytes_peak",
    "Highest ftserver_partial_packet_bytes since the worker started.",
    ["worker"],
    multiprocess_mode="livemax",
)
TRANSFERS_STARTED = Counter(
    "ftserver_transfers_started_total", "Transfers whose init metadata was first stored."
)
TRANSFERS_COMPLETED = Counter(
    "ftserver_transfers_completed_total", "Transfers exported (fin succeeded)."
)
TRANSFERS_FAILED = Counter(
    "ftserver_transfers_failed_total",
    "Fin commands that failed, by reason description.",
    ["reason"],
)
OPEN_TRANSFERS_CLOSED = Counter(
    "ftserver_open_transfers_closed_total",
    "Open transfers closed to free their descriptor (reopened from disk when needed), by why: "
    "cache_full (the bounded cache of open transfers made room for another).",
    ["why"],
)
TRANSFERS_ABORTED = Counter("ftserver_transfers_aborted_total", "Transfers discarded by abort.")
TRANSFERS_EXPIRED = Counter(
    "ftserver_transfers_expired_total",
    "Unfinished transfers deleted by the collector after their segments TTL.",
)
EXPORTS_EXPIRED = Counter(
    "ftserver_exports_expired_total", "Exports deleted by the collector after their expire_at."
)
TRANSFERS_IN_PROGRESS = Gauge(
    "ftserver_transfers_in_progress",
    "Unfinished transfers in staging (open or not).",
    multiprocess_mode="max",
)
RECEIVED_BYTES = Counter(
    "ftserver_received_bytes_total", "Segment bytes stored (acknowledged).", ["worker"]
)
EXPORTED_BYTES = Counter("ftserver_exported_bytes_total", "Bytes of exported files.")
SEGMENTS = Counter(
    "ftserver_segments_total",
    "Segment commands processed, by outcome (the reason description).",
    ["worker", "outcome"],
)
NATIVE_SEGMENTS = Counter(
    "ftserver_native_segments_total",
    "Segments placed by the native path (ftcore), also counted in ftserver_segments_total.",
    ["worker"],
)
COMMANDS = Counter(
    "ftserver_commands_total",
    "File-transfer commands processed, by command and outcome.",
    ["command", "outcome"],
)
INVALID_QOS = Counter(
    "ftserver_invalid_qos_total",
    "File-transfer commands sent at QoS 0 (answered invalid_qos, not processed).",
)
SEGMENT_SECONDS = Histogram(
    "ftserver_segment_seconds",
    f"Time to handle one segment (write, record, journal), sampled 1 in {SEGMENT_SAMPLE}.",
    buckets=_LAT,
)
FIN_SECONDS = Histogram(
    "ftserver_fin_seconds",
    "Time from a fin's arrival to its result (exports included).",
    buckets=_SLOW,
)
EXPORT_SECONDS = Histogram(
    "ftserver_export_seconds", "Time to export a verified file.", buckets=_SLOW
)
RESPONSES = Counter(
    "ftserver_responses_published_total",
    "Response documents delivered to sessions (one per receiving session).",
    ["worker"],
)
STAGING_BYTES = Gauge(
    "ftserver_staging_bytes",
    "Disk space used by unfinished transfers (allocated blocks of their data files).",
    multiprocess_mode="max",
)
STAGING_FREE_BYTES = Gauge(
    "ftserver_staging_free_bytes",
    "Free space on the staging filesystem (for unprivileged users).",
    multiprocess_mode="max",
)
WORKER_RESTARTS = Counter(
    "ftserver_worker_restarts_total", "Worker processes restarted after dying."
)
WORKERS_UP = Gauge(
    "ftserver_workers_up", "Worker processes running and ready.", multiprocess_mode="max"
)
#: the node's name (server.node) as a label of one series, not of every series: Prometheus'
#: ``instance`` already tells the nodes apart; this joins it to the name the checkpoints,
#: logs and HTTP API use (docs/cluster.md)
NODE_INFO = Gauge(
    "ftserver_node_info",
    "Always 1; its label is this node's name in the cluster (server.node).",
    ["node"],
    multiprocess_mode="max",
)

CONNECTIONS_MAX = Gauge(
    "ftserver_connections_max",
    "Connections the worker admits: its share of limits.max_connections, capped by descriptors.",
    ["worker"],
    multiprocess_mode="livesum",
)
# prometheus-client's own process_* series are not part of the multiprocess exposition: each
# worker reports its own (ProcessStats), labelled like everything else it counts
PROCESS_CPU = Counter(
    "ftserver_process_cpu_seconds",
    "CPU time (user and system) used by the worker process; it keeps rising across restarts.",
    ["worker"],
)
PROCESS_RSS = Gauge(
    "ftserver_process_resident_memory_bytes",
    "Resident memory of the worker process.",
    ["worker"],
    multiprocess_mode="livesum",
)
PROCESS_OPEN_FDS = Gauge(
    "ftserver_process_open_fds",
    "Descriptors open in the worker process (connections, open transfers, journals, ...).",
    ["worker"],
    multiprocess_mode="livesum",
)
PROCESS_MAX_FDS = Gauge(
    "ftserver_process_max_fds",
    "Descriptor limit of the worker process (RLIMIT_NOFILE, as raised at start).",
    ["worker"],
    multiprocess_mode="livemax",
)

LIMIT_HITS = Counter(
    "ftserver_limit_hits_total",
    "Commands refused by a limit or quota (file_too_large, too_many_transfers, quota_exceeded, "
    "storage_full, server_busy).",
    ["limit"],
)

RELAY_UPSTREAM_CONNECTIONS = Gauge(
    "ftserver_relay_upstream_connections",
    "Upstream connections to the broker open now (relay mode: one per connected device).",
    ["worker"],
    multiprocess_mode="livesum",
)
RELAY_CONNECT_FAILURES = Counter(
    "ftserver_relay_connect_failures_total",
    "Upstream CONNECTs that failed, by reason: unreachable, tls (the TLS handshake failed), "
    "timeout, refused (the broker's CONNACK said no), closed (the broker closed the "
    "connection before its CONNACK).",
    ["worker", "reason"],
)
RELAY_MESSAGES = Counter(
    "ftserver_relay_messages_total",
    "PUBLISH packets relayed, by direction: up (device to broker) or down (broker to device).",
    ["worker", "direction"],
)
RELAY_BYTES = Counter(
    "ftserver_relay_bytes_total",
    "Payload bytes of the relayed PUBLISH packets, by direction (up or down).",
    ["worker", "direction"],
)
RELAY_SECONDS = Histogram(
    "ftserver_relay_seconds",
    "Time from a device's QoS 1/2 PUBLISH to the broker's acknowledgement, sampled 1 in 8.",
    buckets=_LAT,
)
RELAY_EVENTS_PENDING = Gauge(
    "ftserver_relay_events_pending",
    "Transfer events waiting on disk to be published to the broker (relay.events_topic).",
    ["worker"],
    multiprocess_mode="livesum",
)
WEBHOOK_PENDING = Gauge(
    "ftserver_webhook_pending",
    "Transfer events waiting on disk to be delivered to the webhook (notify.url).",
    ["worker"],
    multiprocess_mode="livesum",
)
NOTIFY_DROPPED = Counter(
    "ftserver_notify_dropped_total",
    "Transfer events dropped undelivered, by sink (mqtt or webhook): the outbox was full "
    "(notify.max_pending), or an event could not be written or read back.",
    ["sink"],
)

ALL = [
    CONNECTIONS,
    CONNECTIONS_TOTAL,
    CONNECTIONS_REFUSED,
    LOGIN_FAILURES,
    PROTOCOL_ERRORS,
    TAKEOVERS,
    PARTIAL_PACKET_BYTES,
    PARTIAL_PACKET_PEAK,
    TRANSFERS_STARTED,
    TRANSFERS_COMPLETED,
    TRANSFERS_FAILED,
    TRANSFERS_ABORTED,
    TRANSFERS_EXPIRED,
    EXPORTS_EXPIRED,
    TRANSFERS_IN_PROGRESS,
    RECEIVED_BYTES,
    EXPORTED_BYTES,
    SEGMENTS,
    NATIVE_SEGMENTS,
    COMMANDS,
    INVALID_QOS,
    LIMIT_HITS,
    OPEN_TRANSFERS_CLOSED,
    SEGMENT_SECONDS,
    FIN_SECONDS,
    EXPORT_SECONDS,
    RESPONSES,
    STAGING_BYTES,
    STAGING_FREE_BYTES,
    WORKER_RESTARTS,
    WORKERS_UP,
    NODE_INFO,
    CONNECTIONS_MAX,
    PROCESS_CPU,
    PROCESS_RSS,
    PROCESS_OPEN_FDS,
    PROCESS_MAX_FDS,
    RELAY_UPSTREAM_CONNECTIONS,
    RELAY_CONNECT_FAILURES,
    RELAY_MESSAGES,
    RELAY_BYTES,
    RELAY_SECONDS,
    RELAY_EVENTS_PENDING,
    WEBHOOK_PENDING,
    NOTIFY_DROPPED,
]

#: outcome descriptions that mean a limit or quota was hit
LIMIT_OUTCOMES = frozenset(
    {"file_too_large", "too_many_transfers", "quota_exceeded", "storage_full", "server_busy"}
)


def prepare_multiprocess(directory: Path) -> None:
    """Empty the multiprocess directory (values of an earlier run would be added in)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)


def mark_dead(pid: int) -> None:
    """A worker died: drop its live gauges (connections) from the sums."""
    if os.environ.get(ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def exposition() -> tuple[bytes, str]:
    """The text exposition of every process's metrics (body, content type)."""
    if os.environ.get(ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class Meter:
    """The counting done on the hot path, in plain Python, flushed every second."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.received_bytes = 0
        #: segments the native path placed since the last flush
        self.native_segments = 0
        self.responses = 0
        self.segments: LocalCounter[str] = LocalCounter()
        self.commands: LocalCounter[tuple[str, str]] = LocalCounter()
        self.segment_count = 0
        self._connections = CONNECTIONS.labels(worker)
        self.process = ProcessStats(worker)
        # series of a fixed label set exist from the start, at 0: a counter that appeared with
        # its first count would have no increase() for Prometheus, and the set of series would
        # change with the traffic
        for counter in (
            CONNECTIONS_REFUSED,
            LOGIN_FAILURES,
            TAKEOVERS,
            PROTOCOL_ERRORS,
            RECEIVED_BYTES,
            NATIVE_SEGMENTS,
            RESPONSES,
        ):
            counter.labels(worker)
        for protocol in ("5", "3.1.1"):
            CONNECTIONS_TOTAL.labels(worker, protocol)
        for limit in LIMIT_OUTCOMES:
            LIMIT_HITS.labels(limit)

    # -- events from the connection layer (rare: counted directly) ---------------------------

    def event(self, name: str) -> None:
        if name == "connection_opened":
            self._connections.inc()
        elif name == "connection_closed":
            self._connections.dec()
        elif name == "connect_v5":
            CONNECTIONS_TOTAL.labels(self.worker, "5").inc()
        elif name == "connect_v311":
            CONNECTIONS_TOTAL.labels(self.worker, "3.1.1").inc()
        elif name == "connection_refused":
            CONNECTIONS_REFUSED.labels(self.worker).inc()
        elif name == "login_failed":
            LOGIN_FAILURES.labels(self.worker).inc()
        elif name == "takeover":
            TAKEOVERS.labels(self.worker).inc()
        elif name == "protocol_error":
            PROTOCOL_ERRORS.labels(self.worker).inc()

    def command(self, kind: str, outcome: Outcome) -> None:
        """Every processed file-transfer command (dispatcher hook)."""
        if outcome.reason_code and outcome.description in LIMIT_OUTCOMES:
            LIMIT_HITS.labels(outcome.description).inc()
        if kind == "segment":
            self.segments[outcome.description] += 1
        elif kind == "invalid_qos":
            INVALID_QOS.inc()
        else:
            self.commands[(kind, outcome.description)] += 1

    def fin(self, seconds: float, outcome: Outcome) -> None:
        FIN_SECONDS.observe(seconds)
        if outcome.reason_code:
            TRANSFERS_FAILED.labels(outcome.description).inc()

    def partial_packets(self, held: int, peak: int) -> None:
        """The receive-buffer memory of packets not yet complete, now and at its highest."""
        PARTIAL_PACKET_BYTES.labels(self.worker).set(held)
        PARTIAL_PACKET_PEAK.labels(self.worker).set(peak)

    def connection_limit(self, n: int) -> None:
        """The connections this worker admits (set once its limits are known)."""
        CONNECTIONS_MAX.labels(self.worker).set(n)

    def delivered(self, n: int) -> None:
        self.responses += n

    def flush(self) -> None:
        if self.received_bytes:
            RECEIVED_BYTES.labels(self.worker).inc(self.received_bytes)
            self.received_bytes = 0
        if self.responses:
            RESPONSES.labels(self.worker).inc(self.responses)
            self.responses = 0
        if self.native_segments:
            NATIVE_SEGMENTS.labels(self.worker).inc(self.native_segments)
            self.segments["success"] += self.native_segments
            self.native_segments = 0
        for outcome, n in self.segments.items():
            SEGMENTS.labels(self.worker, outcome).inc(n)
        self.segments.clear()
        for (command, outcome), n in self.commands.items():
            COMMANDS.labels(command, outcome).inc(n)
        self.commands.clear()
        self.process.sample(time.monotonic())


class ProcessStats:
    """This process's CPU time, resident memory and descriptors, read from the kernel.

    CPU and memory are read at every flush (two cheap calls); the descriptors, a listing of
    ``/proc/self/fd`` that grows with the connections, at most every ``fd_interval`` seconds.
    """

    def __init__(self, worker: str, fd_interval: float = 5.0) -> None:
        self.fd_interval = fd_interval
        self._cpu_seen = 0.0
        self._fds_at = -fd_interval
        self._cpu = PROCESS_CPU.labels(worker)
        self._rss = PROCESS_RSS.labels(worker)
        self._open = PROCESS_OPEN_FDS.labels(worker)
        self._max = PROCESS_MAX_FDS.labels(worker)
        self._page = os.sysconf("SC_PAGE_SIZE")

    def sample(self, now: float) -> None:
        times = os.times()
        cpu = times.user + times.system
        if cpu > self._cpu_seen:
            self._cpu.inc(cpu - self._cpu_seen)
            self._cpu_seen = cpu
        with (
            contextlib.suppress(OSError, ValueError, IndexError),
            open("/proc/self/statm", "rb") as f,
        ):
            self._rss.set(int(f.read().split()[1]) * self._page)
        if now - self._fds_at < self.fd_interval:
            return
        self._fds_at = now
        with contextlib.suppress(OSError):
            self._open.set(len(os.listdir("/proc/self/fd")))
        self._max.set(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


class DiskStats:
    """Staging usage, free space and unfinished transfers, measured at most every few
    seconds (on scrape), from the disk: every worker's transfers count."""

    def __init__(self, data_dir: Path, min_interval: float = 5.0) -> None:
        self.staging = data_dir / "staging"
        self.min_interval = min_interval
        self._last = -min_interval

    def refresh(self, now: float) -> None:
        if now - self._last < self.min_interval:
            return
        self._last = now
        used = 0
        count = 0
        try:
            for data in self.staging.glob("*/*/*/data"):
                count += 1
                try:
                    used += data.stat().st_blocks * 512
                except FileNotFoundError:
                    continue
            st = os.statvfs(self.staging)
        except OSError:
            return
        STAGING_BYTES.set(used)
        STAGING_FREE_BYTES.set(st.f_bavail * st.f_frsize)
        TRANSFERS_IN_PROGRESS.set(count)


def http_handler(disk: DiskStats) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The aiohttp handler of ``/metrics``."""

    async def handle(request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, disk.refresh, time.monotonic())
        body, ctype = await loop.run_in_executor(None, exposition)
        return web.Response(body=body, headers={"Content-Type": ctype})

    return handle

"""The MQTT-serving process: listener, store, sessions, housekeeping, clean shutdown.

With ``--workers 1`` this is the whole server (MQTT and HTTP in one process). With more, the
supervisor (``ftserver.supervisor``) runs N of these as workers: each binds the MQTT port with
SO_REUSEPORT, serves no HTTP, and talks to the supervisor through a bridge
(``ftserver.worker``). Periodic jobs: closing idle transfers (their state stays on disk) and
collecting expired ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from ftserver import logs
from ftserver.acl import Acl, AclError
from ftserver.auth import PasswordFile, PasswordFileError
from ftserver.config import (
    Config,
    ExportConfig,
    HostPort,
    broker_authenticates,
    host_port,
    is_loopback_host,
)
from ftserver.export import make_exporter
from ftserver.export.base import ExportInfo
from ftserver.http.api import ApiContext, build_app
from ftserver.limits import (
    ByteRate,
    ConnectionCounter,
    Descriptors,
    DiskWatch,
    Limits,
    raise_nofile,
    size_descriptors,
    within,
)
from ftserver.mqtt.connection import MqttConnection, ServerContext
from ftserver.mqtt.session import Bridge, SessionRegistry
from ftserver.mqtt.settings import Access, MqttSettings
from ftserver.notify.notifier import Notifier, wanted
from ftserver.transfer.dispatch import Dispatcher
from ftserver.transfer.store import StoreHooks, TransferStore

if TYPE_CHECKING:
    from ftserver.export.s3 import S3Exporter
    from ftserver.relay.leg import RelayClient

log = logging.getLogger("ftserver")

#: how often idle transfers are closed (their fds released; state stays on disk)
HOUSEKEEPING_INTERVAL = 5.0
#: a transfer untouched for this long is closed
IDLE_CLOSE = 60.0
#: how often the hot-path counters are moved into the prometheus metrics
METRICS_INTERVAL = 1.0
#: how long a shutdown waits for running exports (held fins) before closing connections
SHUTDOWN_GRACE = 10.0


class Server:
    def __init__(
        self,
        config: Config,
        *,
        worker_id: int | None = None,
        mqtt_port: int | None = None,
        tls_port: int | None = None,
        bridge: Bridge | None = None,
    ) -> None:
        self.config = config
        self.registry = SessionRegistry()
        #: None for a single-process server; else this worker's number
        self.worker_id = worker_id
        self._mqtt_port = config.mqtt.listen.port if mqtt_port is None else mqtt_port
        self._tls_listen = host_port(config.mqtt.tls_listen) if config.mqtt.tls_listen else None
        if self._tls_listen is not None and tls_port is not None:
            self._tls_listen = HostPort(self._tls_listen.host, tls_port)
        self._mqtts: asyncio.Server | None = None
        self.mqtts_address: tuple[str, int] | None = None
        #: the TLS listener's context, and the one its new handshakes use (a reload swaps it)
        self._tls: ssl.SSLContext | None = None
        self._tls_current: ssl.SSLContext | None = None
        self.registry.bridge = bridge
        self.data_dir = Path(config.server.data_dir)
        self.store: TransferStore | None = None
        self.ctx: ServerContext | None = None
        self.dispatcher: Dispatcher | None = None
        #: relay mode: opens the upstream legs (None: standalone)
        self.relay: RelayClient | None = None
        self.notifier: Notifier | None = None
        self._mqtt: asyncio.Server | None = None
        self._http: web.AppRunner | None = None
        self._jobs: list[asyncio.Task[None]] = []
        self.mqtt_address: tuple[str, int] | None = None
        self.http_address: tuple[str, int] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        return_freed_buffers()
        self.descriptors = self._size_descriptors()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        from ftserver import metrics  # only now: the multiprocess setting is in the env

        self.meter = meter = metrics.Meter(str(self.worker_id or 0))
        metrics.NODE_INFO.labels(node=cfg.server.node_name).set(1)
        self.store = TransferStore(
            self.data_dir,
            durability="sync" if cfg.storage.durability == "sync" else "fast",
            ttl_min=cfg.transfer.segments_ttl_min,
            ttl_max=cfg.transfer.segments_ttl_max,
            idle_close=IDLE_CLOSE,
            hooks=_StoreMetrics(),
            max_transfers_per_client=cfg.limits.max_transfers_per_client,
            max_open=self.descriptors.open_transfers,
            exporter=make_exporter(cfg.export, self.data_dir, cfg.server.node_name),
        )
        dispatcher = Dispatcher(
            self.store,
            self.registry,
            max_file_size=cfg.limits.max_file_size,
            assemble_timeout=cfg.transfer.assemble_timeout,
            observe=meter.command,
        )
        dispatcher.on_fin = meter.fin
        dispatcher.on_segment_time = metrics.SEGMENT_SECONDS.observe
        dispatcher.sample_every = metrics.SEGMENT_SAMPLE
        self.registry.on_delivered = meter.delivered
        if cfg.limits.client_byte_rate:
            dispatcher.byte_rate = ByteRate(cfg.limits.client_byte_rate)
        if cfg.limits.staging_low_water:
            dispatcher.disk = DiskWatch(self.data_dir / "staging", cfg.limits.staging_low_water)
        if wanted(cfg):  # completion events (docs/events.md)
            self.notifier = Notifier(
                cfg, self.data_dir, worker=self.worker_id or 0, workers=self._workers
            )
            dispatcher.on_finished = self.notifier.finished
            self.notifier.start()
        self.dispatcher = dispatcher
        if cfg.relay.enabled:
            # imported here: it imports prometheus-client, which must come after the
            # supervisor set up its multiprocess directory (ftserver.metrics)
            from ftserver.relay.leg import RelayClient

            self.relay = RelayClient(cfg.relay, worker=str(self.worker_id or 0))
            log.info("relay mode: everything but file transfer goes to %s", cfg.relay.upstream)
        self.ctx = ServerContext(
            mqtt_settings(cfg), self.registry, dispatcher, on_event=meter.event, relay=self.relay
        )
        self._secure(self.ctx)
        meter.connection_limit(self.ctx.admission.limits.max_connections)
        loop = asyncio.get_running_loop()
        ctx = self.ctx
        self._mqtt = await loop.create_server(
            lambda: MqttConnection(ctx),
            cfg.mqtt.listen.host,
            self._mqtt_port,
            reuse_address=True,
            reuse_port=self.worker_id is not None,
            backlog=1024,
        )
        sock = self._mqtt.sockets[0].getsockname()
        self.mqtt_address = (sock[0], sock[1])
        if self._tls_listen is not None:
            self._tls = self._tls_current = tls_context(cfg)
            self._tls.sni_callback = self._pick_tls
            self._mqtts = await loop.create_server(
                lambda: MqttConnection(ctx),
                self._tls_listen.host,
                self._tls_listen.port,
                ssl=self._tls,
                reuse_address=True,
                reuse_port=self.worker_id is not None,
                backlog=1024,
            )
            sock = self._mqtts.sockets[0].getsockname()
            self.mqtts_address = (sock[0], sock[1])
        if self.worker_id is None:
            await self._start_http()
        self._jobs = [
            asyncio.create_task(self._every(METRICS_INTERVAL, self._flush_metrics)),
            asyncio.create_task(self._every(HOUSEKEEPING_INTERVAL, self._housekeeping)),
            asyncio.create_task(
                self._every(cfg.transfer.segments_gc_interval, self._collect_garbage)
            ),
        ]
        if self.worker_id is None:  # with workers, the supervisor collects the exports
            interval = cfg.transfer.segments_gc_interval
            self._jobs.append(
                asyncio.create_task(collect_exports_forever(self.data_dir, interval, cfg.export))
            )

    @property
    def _workers(self) -> int:
        return self.config.server.worker_count if self.worker_id is not None else 1

    def _size_descriptors(self) -> Descriptors:
        """Raise the descriptor limit to the hard one and share it out (one log line)."""
        was, nofile = raise_nofile()
        share = self.config.limits.max_connections
        if share and self._workers > 1:
            share = -(-share // self._workers)
        relay = self.config.relay.enabled
        chosen = size_descriptors(nofile, was, share, 2 if relay else 1)
        if relay:
            chosen = replace(chosen, note=" (two descriptors each in relay mode)")
        log.info("%s", chosen.describe(), extra={"event": "descriptors"})
        return chosen

    def _secure(self, ctx: ServerContext) -> None:
        """Limits and authentication of the MQTT listeners (issue 8, SECURITY.md)."""
        cfg = self.config
        lim = cfg.limits
        limits = Limits(
            lim.max_connections,
            lim.max_connections_per_ip,
            lim.max_transfers_per_client,
            lim.client_byte_rate,
            lim.staging_low_water,
        )
        ctx.admission = ConnectionCounter(within(limits.share(self._workers), self.descriptors))
        ctx.budget.limit = -(-lim.partial_packet_budget // self._workers)  # this worker's share
        sec = cfg.security
        listeners = [cfg.mqtt.listen] + ([self._tls_listen] if self._tls_listen else [])
        ctx.access = Access(
            passwords=PasswordFile(Path(sec.password_file)) if sec.password_file else None,
            anonymous_ok=sec.allow_anonymous
            or broker_authenticates(cfg)
            or all(is_loopback_host(lst.host) for lst in listeners),
            tls_identity=cfg.mqtt.tls_identity,
            acl=Acl.load(Path(sec.acl_file)) if sec.acl_file else None,
        )

    def _pick_tls(self, conn: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        """Called by OpenSSL in every TLS handshake of the listener, once the ClientHello is
        in (whether or not it names a server): hands the handshake the context of the last
        reload, so new connections get the new certificate and established ones keep theirs.
        """
        current = self._tls_current
        if current is not None and current is not ctx:
            conn.context = current

    def reload(self) -> list[str]:
        """Re-read the password file, the ACL file and the TLS listener's certificate, key and
        CA (SIGHUP). Each new version that is valid applies from the next CONNECT or TLS
        handshake on; connections stay as they are. One that is not is refused with a log line
        naming the file and the error, and the one before stays in force. Returns the files
        refused."""
        refused: list[str] = []
        access = self.ctx.access if self.ctx is not None else None
        sec = self.config.security
        if access is not None and access.passwords is not None:
            pw = access.passwords
            try:
                pw.load(force=True)
            except (OSError, PasswordFileError) as exc:
                refused.append(_refused("password file", pw.path, exc))
            else:
                _reloaded("password file", pw.path, users=pw.users)
        if access is not None and sec.acl_file:
            path = Path(sec.acl_file)
            try:
                access.acl = Acl.load(path)
            except AclError as exc:
                refused.append(_refused("ACL file", path, exc))
            else:
                _reloaded("ACL file", path, rules=len(access.acl.rules))
        if self._tls is not None:
            mqtt = self.config.mqtt
            try:
                self._tls_current = tls_context(self.config)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                refused.append(_refused("TLS certificate", Path(mqtt.tls_cert), exc))
            else:
                _reloaded("TLS certificate", Path(mqtt.tls_cert), key=mqtt.tls_key)
        return refused

    async def _start_http(self) -> None:
        from ftserver import metrics

        app = build_app(ApiContext(self.config, self.data_dir))
        app.router.add_get("/metrics", metrics.http_handler(metrics.DiskStats(self.data_dir)))
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        listen = self.config.http.listen
        site = web.TCPSite(runner, listen.host, listen.port, reuse_address=True)
        await site.start()
        self._http = runner
        addr = runner.addresses[0]
        self.http_address = (str(addr[0]), int(addr[1]))

    async def _every(self, interval: float, job: object) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                job()  # type: ignore[operator]
            except Exception:
                log.exception("periodic job failed")

    def _flush_metrics(self) -> None:
        assert self.dispatcher is not None
        self.meter.received_bytes += self.dispatcher.received_bytes
        self.dispatcher.received_bytes = 0
        self.meter.native_segments += self.dispatcher.native_segment_count
        self.dispatcher.native_segment_count = 0
        if self.ctx is not None:
            self.meter.partial_packets(self.ctx.budget.total, self.ctx.budget.peak)
        self.meter.flush()
        if self.relay is not None:
            self.relay.flush()

    def _housekeeping(self) -> None:
        assert self.store is not None
        self.store.close_idle()

    def _collect_garbage(self) -> None:
        assert self.store is not None
        removed = self.store.collect_garbage()
        from ftserver import metrics

        if removed:
            metrics.TRANSFERS_EXPIRED.inc(removed)
            log.info("collected %d expired unfinished transfer(s)", removed)

    def request_stop(self) -> None:
        self._stopping.set()

    async def serve_until_stopped(self) -> None:
        await self._stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        """Stop accepting, let running exports finish (bounded), persist, close."""
        log.info("shutting down", extra={"event": "stopping"})
        if self._mqtt is not None:
            self._mqtt.close()
        if self._mqtts is not None:
            self._mqtts.close()
        for job in self._jobs:
            job.cancel()
        ctx = self.ctx
        if ctx is not None:
            waits = [c.wait_idle() for c in list(ctx.connections)]
            if waits:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.gather(*waits), SHUTDOWN_GRACE)
            for conn in list(ctx.connections):
                conn.shutdown()
        if self.relay is not None:
            await self.relay.close()  # legs still connecting
        if self.store is not None:
            await self.store.close()
            await self.store.exporter.close()
        if self.notifier is not None:  # after the exports: their events are in the outbox
            await self.notifier.stop()
        if self.ctx is not None:
            self._flush_metrics()
        if self._mqtt is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._mqtt.wait_closed(), 2.0)
        if self._http is not None:
            await self._http.cleanup()
        log.info("stopped", extra={"event": "stopped"})


async def collect_exports(data_dir: Path, s3: S3Exporter | None = None) -> int:
    """Delete the exports whose ``expire_at`` has passed (docs/protocol.md §7), off the
    loop: the local ones, and with ``s3`` (an ``S3Exporter``) those in its bucket."""
    from ftserver import metrics
    from ftserver.export.collector import collect_expired_exports

    loop = asyncio.get_running_loop()
    removed = await loop.run_in_executor(
        None, collect_expired_exports, data_dir / "exports", time.time()
    )
    if s3 is not None:
        removed += await s3.collect_expired(time.time())
    if removed:
        metrics.EXPORTS_EXPIRED.inc(removed)
        log.info("deleted %d expired export(s)", removed)
    return removed


async def collect_exports_forever(
    data_dir: Path, interval: float, export: ExportConfig | None = None
) -> None:
    s3 = None
    if export is not None and export.kind == "s3":
        from ftserver.export.s3 import S3Exporter, index_root

        s3 = S3Exporter(export, index_root(data_dir))
    try:
        while True:
            await asyncio.sleep(interval)
            try:
                await collect_exports(data_dir, s3)
            except Exception:
                log.exception("collecting expired exports failed")
    finally:
        if s3 is not None:
            await s3.close()


class _StoreMetrics(StoreHooks):
    def started(self) -> None:
        from ftserver import metrics

        metrics.TRANSFERS_STARTED.inc()

    def aborted(self) -> None:
        from ftserver import metrics

        metrics.TRANSFERS_ABORTED.inc()

    def exported(self, info: ExportInfo, seconds: float) -> None:
        from ftserver import metrics

        metrics.TRANSFERS_COMPLETED.inc()
        metrics.EXPORTED_BYTES.inc(info.size)
        metrics.EXPORT_SECONDS.observe(seconds)

    def evicted(self) -> None:
        from ftserver import metrics

        metrics.OPEN_TRANSFERS_CLOSED.labels("cache_full").inc()


def reload_done(refused: list[str], workers: int) -> None:
    """The line that ends a reload of the whole server (SIGHUP)."""
    log.info(
        "reload done: %d process(es), %d file(s) refused",
        workers,
        len(refused),
        extra={"event": "reload_done", "workers": workers, "refused": sorted(set(refused))},
    )


def _reloaded(what: str, path: Path, **fields: object) -> None:
    log.info("%s %s reloaded", what, path, extra={"event": "reloaded", "file": str(path), **fields})


def _refused(what: str, path: Path, exc: BaseException) -> str:
    log.error(
        "%s %s refused (%s): the one read before stays in force",
        what,
        path,
        exc,
        extra={"event": "reload_refused", "file": str(path), "error": str(exc)},
    )
    return str(path)


def return_freed_buffers() -> None:
    """Have glibc map every allocation from 128 KiB on by itself, and unmap it when freed.

    Receive buffers of large packets come and go (they grow as a packet arrives and are
    dropped once it is consumed). By default glibc raises that threshold to the largest block
    freed so far, after which such buffers come from the heap, and a heap fragmented by a
    crowd of them keeps its size after they are freed: the server's memory would not come
    back after a burst of large partial packets. Fixing the threshold keeps it coming back.
    A no-op where there is no glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def mqtt_settings(config: Config) -> MqttSettings:
    """The protocol settings of the MQTT connections, from the configuration."""
    mqtt = config.mqtt
    return MqttSettings(
        max_packet_size=config.limits.max_packet_size,
        connect_timeout=mqtt.connect_timeout,
        keepalive_max=mqtt.keepalive_max,
        session_expiry_max=mqtt.session_expiry_max,
        receive_maximum=mqtt.receive_maximum,
        topic_alias_maximum=mqtt.topic_alias_maximum,
        max_inflight_responses=config.limits.max_inflight_responses,
        relay=config.relay.enabled,
    )


def tls_context(config: Config) -> ssl.SSLContext:
    """The server-side TLS context of the MQTT-over-TLS listener (TLS 1.2 at least)."""
    mqtt = config.mqtt
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(mqtt.tls_cert, mqtt.tls_key)
    if mqtt.tls_ca:
        ctx.load_verify_locations(mqtt.tls_ca)
    ctx.verify_mode = {
        "none": ssl.CERT_NONE,
        "optional": ssl.CERT_OPTIONAL,
        "required": ssl.CERT_REQUIRED,
    }[mqtt.tls_client_cert]
    return ctx


def setup_logging(config: Config, worker: int | str = 0, tag: str = "") -> None:
    """Log at ``server.log_level`` in ``server.log_format`` (:mod:`ftserver.logs`). ``worker``
    is this process: a worker's index, ``"supervisor"``, or 0 for a single-process server;
    ``tag`` names it in text lines (``w3``)."""
    logs.setup(config.server.log_level, config.server.log_format, worker, tag)


def new_runner() -> asyncio.Runner:
    """An event-loop runner on uvloop (``FTSERVER_EVENT_LOOP=asyncio`` selects asyncio's own
    loop: the tests run the server on both)."""
    if os.environ.get("FTSERVER_EVENT_LOOP", "uvloop") == "asyncio":
        return asyncio.Runner()
    import uvloop

    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def announce(
    mqtt: tuple[str, int],
    http: tuple[str, int],
    data_dir: Path,
    mqtts: tuple[str, int] | None = None,
) -> None:
    """One parseable line per listener (tests and scripts read the ports from here); the
    data directory line comes last."""
    print(f"ftserver: mqtt listening on {_fmt(mqtt)}", flush=True)
    if mqtts is not None:
        print(f"ftserver: mqtts listening on {_fmt(mqtts)}", flush=True)
    print(f"ftserver: http listening on {_fmt(http)}", flush=True)
    print(f"ftserver: data directory {data_dir.absolute()}", flush=True)


def _fmt(addr: tuple[str, int]) -> str:
    host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
    return f"{host}:{addr[1]}"

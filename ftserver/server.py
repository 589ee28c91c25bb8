"""The server process: listeners, housekeeping, clean shutdown.

One process today (``--workers`` is accepted; the multi-process supervisor is issue 4). It
owns the MQTT listener, the HTTP listener (``/healthz`` for now), the transfer store and the
session registry, and runs two periodic jobs: closing idle transfers (their state stays on
disk) and collecting expired ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import sys
from pathlib import Path

from aiohttp import web

from ftserver.config import Config
from ftserver.http.api import ApiContext, build_app
from ftserver.mqtt.connection import MqttConnection, ServerContext
from ftserver.mqtt.session import SessionRegistry
from ftserver.transfer.dispatch import Dispatcher
from ftserver.transfer.store import TransferStore

log = logging.getLogger("ftserver")

#: how often idle transfers are closed (their fds released; state stays on disk)
HOUSEKEEPING_INTERVAL = 5.0
#: a transfer untouched for this long is closed
IDLE_CLOSE = 60.0
#: how long a shutdown waits for running exports (held fins) before closing connections
SHUTDOWN_GRACE = 10.0


def raise_fd_limit() -> None:
    """Use the hard limit of open files: every transfer keeps two descriptors open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.data_dir = Path(config.server.data_dir)
        self.store: TransferStore | None = None
        self.registry = SessionRegistry()
        self.ctx: ServerContext | None = None
        self._mqtt: asyncio.Server | None = None
        self._http: web.AppRunner | None = None
        self._jobs: list[asyncio.Task[None]] = []
        self.mqtt_address: tuple[str, int] | None = None
        self.http_address: tuple[str, int] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        raise_fd_limit()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = TransferStore(
            self.data_dir,
            durability="sync" if cfg.storage.durability == "sync" else "fast",
            ttl_min=cfg.transfer.segments_ttl_min,
            ttl_max=cfg.transfer.segments_ttl_max,
            idle_close=IDLE_CLOSE,
        )
        dispatcher = Dispatcher(
            self.store,
            self.registry,
            max_file_size=cfg.limits.max_file_size,
            assemble_timeout=cfg.transfer.assemble_timeout,
        )
        self.ctx = ServerContext(cfg, self.registry, dispatcher)
        loop = asyncio.get_running_loop()
        ctx = self.ctx
        self._mqtt = await loop.create_server(
            lambda: MqttConnection(ctx),
            cfg.mqtt.listen.host,
            cfg.mqtt.listen.port,
            reuse_address=True,
            backlog=1024,
        )
        sock = self._mqtt.sockets[0].getsockname()
        self.mqtt_address = (sock[0], sock[1])
        await self._start_http()
        self._jobs = [
            asyncio.create_task(self._every(HOUSEKEEPING_INTERVAL, self._housekeeping)),
            asyncio.create_task(
                self._every(cfg.transfer.segments_gc_interval, self._collect_garbage)
            ),
        ]

    async def _start_http(self) -> None:
        app = build_app(ApiContext(self.config, self.data_dir))
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

    def _housekeeping(self) -> None:
        assert self.store is not None
        self.store.close_idle()

    def _collect_garbage(self) -> None:
        assert self.store is not None
        removed = self.store.collect_garbage()
        if removed:
            log.info("collected %d expired unfinished transfer(s)", removed)

    def request_stop(self) -> None:
        self._stopping.set()

    async def serve_until_stopped(self) -> None:
        await self._stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        """Stop accepting, let running exports finish (bounded), persist, close."""
        log.info("shutting down")
        if self._mqtt is not None:
            self._mqtt.close()
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
        if self.store is not None:
            await self.store.close()
        if self._mqtt is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._mqtt.wait_closed(), 2.0)
        if self._http is not None:
            await self._http.cleanup()
        log.info("stopped")


def run(config: Config) -> int:
    """Run the server until SIGTERM or SIGINT; returns the exit status."""
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if os.environ.get("FTSERVER_EVENT_LOOP", "uvloop") == "asyncio":
        runner = asyncio.Runner()  # the tests run the server on both loops
    else:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    with runner:
        return runner.run(_main(config))


async def _main(config: Config) -> int:
    server = Server(config)
    try:
        await server.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    assert server.mqtt_address is not None and server.http_address is not None
    if config.server.workers not in (0, 1):
        log.warning(
            "--workers %d: multiple worker processes are not implemented yet; running one",
            config.server.workers,
        )
    # one parseable line per listener (tests and scripts read the ports from here)
    print(f"ftserver: mqtt listening on {_fmt(server.mqtt_address)}", flush=True)
    print(f"ftserver: http listening on {_fmt(server.http_address)}", flush=True)
    print(f"ftserver: data directory {server.data_dir.absolute()}", flush=True)
    await server.serve_until_stopped()
    return 0


def _fmt(addr: tuple[str, int]) -> str:
    host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
    return f"{host}:{addr[1]}"

"""The supervisor: N worker processes, the registry of client identifiers, the HTTP API.

- Reserves the MQTT port (a bound, non-listening SO_REUSEPORT socket, so port 0 resolves
  once) and starts N workers that listen on it with SO_REUSEPORT: the kernel spreads
  connections across them.
- Keeps ``clientId -> worker``: a CONNECT in worker B for a client held by worker A makes A
  close the old connection (0x8E), close the client's transfers (their state is on disk) and
  hand over its session; only then does B send its CONNACK.
- Routes response documents between workers: each worker announces the topic filters its
  sessions subscribe to; a document whose subscribers are elsewhere goes through here.
- Restarts a worker that dies; SIGTERM/SIGINT drain every worker, then exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from ftserver import logs, metrics
from ftserver.config import Config, ConfigSource, HostPort, host_port
from ftserver.control import Channel, ChannelClosed, Msg
from ftserver.http.api import ApiContext, build_app
from ftserver.server import announce, collect_exports_forever, reload_done
from ftserver.topics import topic_matches
from ftserver.worker import ENV

log = logging.getLogger("ftserver.supervisor")

#: how long a worker has to start and report ready
START_TIMEOUT = 30.0
#: how long a takeover may take before the new connection goes ahead anyway
TAKEOVER_TIMEOUT = 10.0
#: how long a worker has to answer a request of the supervisor (reload)
CALL_TIMEOUT = 10.0
#: how long a stopping worker has before it is killed
STOP_TIMEOUT = 30.0
#: how long the lines an exited worker left in its standard error pipe may take to come out
RELAY_DRAIN = 2.0
#: how many departed clients' last workers are remembered
LAST_OWNERS = 100_000
#: restart delay after a worker died, doubled while it keeps dying quickly (capped)
RESTART_DELAY = 0.2
RESTART_DELAY_MAX = 10.0


async def _relay_lines(stream: asyncio.StreamReader, worker: int) -> None:
    """Copy a worker's standard error to ours one whole line at a time (ftserver.logs)."""
    rest = b""
    while chunk := await stream.read(1 << 16):
        *lines, rest = (rest + chunk).split(b"\n")
        if len(rest) > logs.MAX_LINE:
            lines.append(rest)
            rest = b""
        if lines:
            logs.relay(lines, worker)
    if rest:
        logs.relay([rest], worker)


async def _call(w: WorkerHandle, msg: Msg) -> Msg | None:
    """A request to a worker; None if it did not answer in time or went away."""
    assert w.channel is not None
    try:
        async with asyncio.timeout(CALL_TIMEOUT):
            return await w.channel.call(msg)
    except (TimeoutError, ChannelClosed) as exc:
        log.error("worker %d did not answer %r: %r", w.id, msg.get("op"), exc)
        return None


async def _drained(w: WorkerHandle) -> None:
    """Wait (briefly) until what an exited worker wrote to its standard error is out."""
    if w.relay is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(w.relay), RELAY_DRAIN)


def _reserve(listen: HostPort) -> socket.socket:
    """Bind (not listen) an SO_REUSEPORT socket: the port is ours, the workers listen on it."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((listen.host, listen.port))
    return sock


@dataclass
class WorkerHandle:
    id: int
    proc: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    filters: Counter[str] = field(default_factory=Counter)
    restarts: int = 0
    started_at: float = 0.0
    #: copies the worker's standard error to ours, line by line (ftserver.logs)
    relay: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and self.ready.is_set()


class Supervisor:
    def __init__(self, config: Config, source: ConfigSource) -> None:
        self.config = config
        self.source = source
        self.data_dir = Path(config.server.data_dir)
        self.workers = [WorkerHandle(k) for k in range(config.server.worker_count)]
        #: client id -> worker id
        self.registry: dict[str, int] = {}
        #: client id -> the worker it was last in (its transfers may still be open there)
        self.last_owner: OrderedDict[str, int] = OrderedDict()
        #: client id -> (its claim lock, how many claims use it)
        self._claim_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._stopping = asyncio.Event()
        self._reserve: socket.socket | None = None
        self._reserve_tls: socket.socket | None = None
        self.mqtt_port = 0
        self.tls_port: int | None = None
        self._http: web.AppRunner | None = None
        self._monitors: list[asyncio.Task[None]] = []
        self._reloading: asyncio.Task[None] | None = None
        self._reload_again = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_soon)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._reserve_port()
            http = await self._start_http()
        except OSError as exc:
            log.error("cannot start: %s", exc)
            return 1
        for w in self.workers:
            await self._spawn(w)
        self._monitors = [asyncio.create_task(self._monitor(w)) for w in self.workers]
        # expired exports are shared by every worker: the supervisor collects them
        interval = self.config.transfer.segments_gc_interval
        exports = collect_exports_forever(self.data_dir, interval, self.config.export)
        self._monitors.append(asyncio.create_task(exports))
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await asyncio.gather(*(w.ready.wait() for w in self.workers))
        except TimeoutError:
            log.error("workers did not start in %ss", START_TIMEOUT)
            await self._shutdown()
            return 1
        listen = self.config.mqtt.listen
        mqtts = None
        if self.tls_port is not None:
            mqtts = (host_port(self.config.mqtt.tls_listen).host, self.tls_port)
        announce((listen.host, self.mqtt_port), http, self.data_dir, mqtts)
        log.info(
            "%d workers serving MQTT on port %d",
            len(self.workers),
            self.mqtt_port,
            extra={"event": "started", "workers": len(self.workers)},
        )
        await self._stopping.wait()
        await self._shutdown()
        return 0

    def _reserve_port(self) -> None:
        self._reserve = _reserve(self.config.mqtt.listen)
        self.mqtt_port = self._reserve.getsockname()[1]
        if self.config.mqtt.tls_listen:
            self._reserve_tls = _reserve(host_port(self.config.mqtt.tls_listen))
            self.tls_port = self._reserve_tls.getsockname()[1]

    async def _start_http(self) -> tuple[str, int]:
        ctx = ApiContext(self.config, self.data_dir, workers_ready=self.workers_ready)
        app = build_app(ctx)
        app.router.add_get("/metrics", metrics.http_handler(metrics.DiskStats(self.data_dir)))
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        listen = self.config.http.listen
        site = web.TCPSite(runner, listen.host, listen.port, reuse_address=True)
        await site.start()
        self._http = runner
        addr = runner.addresses[0]
        return (str(addr[0]), int(addr[1]))

    def workers_ready(self) -> bool:
        return all(w.alive for w in self.workers)

    async def _spawn(self, w: WorkerHandle) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        spec = {
            "id": w.id,
            "fd": theirs.fileno(),
            "port": self.mqtt_port,
            "tls_port": self.tls_port,
            "parent": os.getpid(),
            "config": self.source.path,
            "overrides": self.source.overrides,
        }
        env = dict(os.environ, **{ENV: json.dumps(spec)})
        w.ready = asyncio.Event()
        w.filters = Counter()
        w.started_at = time.monotonic()
        w.proc = await asyncio.create_subprocess_exec(
            # -P: the supervisor's current directory is not put on the worker's sys.path, so a
            # folder there called ftserver/ or ftcore/ is never imported instead of ours
            sys.executable, "-P", "-m", "ftserver", "_worker",
            pass_fds=[theirs.fileno()], env=env, stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        theirs.close()
        assert w.proc.stderr is not None
        w.relay = asyncio.create_task(_relay_lines(w.proc.stderr, w.id))
        w.channel = await Channel.from_socket(mine, lambda msg: self._handle(w, msg), f"w{w.id}")
        asyncio.create_task(w.channel.run())  # noqa: RUF006 - it ends with the worker

    async def _monitor(self, w: WorkerHandle) -> None:
        delay = RESTART_DELAY
        while True:
            assert w.proc is not None
            code = await w.proc.wait()
            await _drained(w)  # its last words first
            self._forget(w)
            metrics.mark_dead(w.proc.pid)
            metrics.WORKERS_UP.set(sum(1 for x in self.workers if x.alive))
            if self._stopping.is_set():
                return
            log.error(
                "worker %d exited with %s; restarting it",
                w.id,
                code,
                extra={"event": "worker_exited", "code": code, "pid": w.proc.pid},
            )
            if time.monotonic() - w.started_at > 60:
                delay = RESTART_DELAY
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY_MAX)
            if self._stopping.is_set():
                return
            w.restarts += 1
            metrics.WORKER_RESTARTS.inc()
            await self._spawn(w)

    def _forget(self, w: WorkerHandle) -> None:
        """A worker is gone: its clients and subscriptions with it."""
        w.ready.clear()
        for cid in [c for c, owner in self.registry.items() if owner == w.id]:
            del self.registry[cid]
        for f in list(w.filters):
            self._broadcast_filter(w, f, -1)
        w.filters.clear()
        if w.channel is not None:
            w.channel.close()

    async def _shutdown(self) -> None:
        log.info("shutting down", extra={"event": "stopping"})
        self._stopping.set()
        for w in self.workers:
            if w.channel is not None:
                with contextlib.suppress(ConnectionError):
                    w.channel.send({"op": "stop"})
        for w in self.workers:
            if w.proc is None or w.proc.returncode is not None:
                continue
            try:
                await asyncio.wait_for(w.proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                log.error("worker %d did not stop; killing it", w.id)
                w.proc.kill()
                await w.proc.wait()
        for w in self.workers:
            await _drained(w)
        for task in self._monitors:
            task.cancel()
        if self._http is not None:
            await self._http.cleanup()
        for sock in (self._reserve, self._reserve_tls):
            if sock is not None:
                sock.close()
        log.info("stopped", extra={"event": "stopped"})

    def _reload_soon(self) -> None:
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.create_task(self.reload())
        else:  # one is running: run another after it, the files may have changed since
            self._reload_again = True

    async def reload(self) -> None:
        """SIGHUP: every running worker re-reads its password file, ACL file and TLS
        certificate (:meth:`ftserver.server.Server.reload`); one line sums it up. A worker that
        is (re)starting reads them anyway."""
        while True:
            self._reload_again = False
            workers = [w for w in self.workers if w.alive and w.channel is not None]
            log.info(
                "reload: SIGHUP forwarded to %d worker(s)",
                len(workers),
                extra={"event": "reload", "workers": len(workers)},
            )
            replies = await asyncio.gather(*(_call(w, {"op": "reload"}) for w in workers))
            refused = [f for r in replies for f in (r or {}).get("refused", [])]
            reload_done(refused, len(workers))
            if not self._reload_again:
                return

    # -- control messages --------------------------------------------------------------------

    async def _handle(self, w: WorkerHandle, msg: Msg) -> Msg | None:
        op = msg.get("op")
        if op == "claim":
            return await self._claim(w, msg["cid"])
        if op == "release":
            cid = msg["cid"]
            if self.registry.get(cid) == w.id:
                del self.registry[cid]
                self._remember_owner(cid, w.id)
        elif op == "filter+":
            w.filters[msg["f"]] += 1
            if w.filters[msg["f"]] == 1:
                self._broadcast_filter(w, msg["f"], +1)
        elif op == "filter-":
            f = msg["f"]
            if w.filters[f] > 0:
                w.filters[f] -= 1
                if w.filters[f] == 0:
                    del w.filters[f]
                    self._broadcast_filter(w, f, -1)
        elif op == "route":
            self._route(w, msg)
        elif op == "ready":
            self._welcome(w)
            w.ready.set()
            metrics.WORKERS_UP.set(sum(1 for x in self.workers if x.alive))
        return None

    async def _claim(self, w: WorkerHandle, cid: str) -> Msg:
        """Make worker ``w`` the client's home (one claim per client id at a time)."""
        lock, users = self._claim_locks.get(cid, (asyncio.Lock(), 0))
        self._claim_locks[cid] = (lock, users + 1)
        try:
            async with lock:
                owner = self.registry.get(cid)
                if owner is None:
                    # the client left its last worker: its transfers may still be open there
                    owner = self.last_owner.pop(cid, None)
                session: dict[str, Any] | None = None
                if owner is not None and owner != w.id:
                    other = self.workers[owner]
                    if other.channel is not None and other.alive:
                        try:
                            async with asyncio.timeout(TAKEOVER_TIMEOUT):
                                reply = await other.channel.call({"op": "takeover", "cid": cid})
                            session = reply.get("session")
                        except (TimeoutError, ChannelClosed) as exc:
                            log.error("takeover of %r from worker %d failed: %r", cid, owner, exc)
                self.registry[cid] = w.id
                return {"session": session}
        finally:
            lock, users = self._claim_locks[cid]
            if users <= 1:
                del self._claim_locks[cid]
            else:
                self._claim_locks[cid] = (lock, users - 1)

    def _remember_owner(self, cid: str, worker: int) -> None:
        self.last_owner[cid] = worker
        self.last_owner.move_to_end(cid)
        while len(self.last_owner) > LAST_OWNERS:
            self.last_owner.popitem(last=False)

    def _welcome(self, w: WorkerHandle) -> None:
        """A (re)started worker learns the filters every other worker subscribes to."""
        assert w.channel is not None
        for other in self.workers:
            if other is w:
                continue
            for f in other.filters:
                with contextlib.suppress(ConnectionError):
                    w.channel.send({"op": "rfilter", "f": f, "d": 1})

    def _broadcast_filter(self, source: WorkerHandle, topic_filter: str, delta: int) -> None:
        for other in self.workers:
            if other is source or other.channel is None:
                continue
            with contextlib.suppress(ConnectionError):
                other.channel.send({"op": "rfilter", "f": topic_filter, "d": delta})

    def _route(self, source: WorkerHandle, msg: Msg) -> None:
        topic = msg["topic"]
        deliver = {
            "op": "deliver",
            "topic": topic,
            "payload": msg["payload"],
            "props": msg["props"],
        }
        for other in self.workers:
            if other is source or other.channel is None:
                continue
            if any(topic_matches(f, topic) for f in other.filters):
                with contextlib.suppress(ConnectionError):
                    other.channel.send(deliver)

"""One MQTT connection: the asyncio glue around the IO-free decoder and session core.

Bytes arrive in the decoder's own buffer (``asyncio.BufferedProtocol``); the session core
(:class:`ftserver.mqtt.core.SessionCore`) pulls the complete packets of each read from it and
emits actions, which this class performs: writes, the one timer of the connection, pausing
reading (while the write buffer is full, a CONNECT is being authenticated or claimed, a
group commit runs, or the worker's budget for partial packets is spent and this connection
holds more than its share: :mod:`ftserver.mqtt.budget`), and the async work the core asks for
(password check, session claim, deferred commands, group commit), whose results go back to
the core.

A connection over the connection limits is not dropped at once: it stays until its CONNECT
arrives, which the core answers Server busy (3.1.1: Server unavailable), so the client learns
why and backs off. At most :data:`MAX_REFUSING` such connections wait at a time; beyond that
they are closed at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import termios
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ftserver.errors import Outcome, RateLimitedLog
from ftserver.limits import ConnectionCounter, Limits
from ftserver.mqtt.actions import (
    Action,
    AwaitResult,
    CancelTimer,
    ClaimSession,
    Close,
    CloseUpstream,
    Event,
    GroupCommit,
    OpenUpstream,
    PauseReading,
    ResumeReading,
    Send,
    SendUpstream,
    StartTimer,
    VerifyLogin,
)
from ftserver.mqtt.budget import PartialPacketBudget
from ftserver.mqtt.codec import Decoder
from ftserver.mqtt.core import SessionCore
from ftserver.mqtt.handler import CommandHandler
from ftserver.mqtt.packets import Connack, Disconnect, Packet
from ftserver.mqtt.session import SessionRegistry
from ftserver.mqtt.settings import Access, MqttSettings
from ftserver.mqtt.upstream import Relay, Upstream

log = logging.getLogger(__name__)
_refused_log = RateLimitedLog(log, logging.WARNING)

#: connections over the limits waiting for their CONNECT (to answer it Server busy) at once
MAX_REFUSING = 256


class ServerContext:
    """What every connection of a worker shares."""

    def __init__(
        self,
        settings: MqttSettings,
        registry: SessionRegistry,
        handler: CommandHandler,
        *,
        access: Access | None = None,
        on_event: Callable[[str], None] | None = None,
        relay: Relay | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.handler = handler
        #: who may connect and what they may do (shared by reference with every session core)
        self.access = access or Access()
        self.connections: set[MqttConnection] = set()
        self.on_event = on_event or (lambda _name: None)
        #: relay mode: opens each connection's upstream leg (None: standalone)
        self.relay = relay
        #: connection limits (total, per source address) of this process
        self.admission = ConnectionCounter(Limits())
        #: bytes held for packets not yet complete, over every connection of this process
        self.budget = PartialPacketBudget()
        #: connections over the limits waiting for their CONNECT, to be answered busy
        self.refusing = 0

    @property
    def anonymous_ok(self) -> bool:
        """Whether clients without credentials may connect (see :class:`Access`)."""
        return self.access.anonymous_ok

    @anonymous_ok.setter
    def anonymous_ok(self, value: bool) -> None:
        self.access.anonymous_ok = value


class MqttConnection(asyncio.BufferedProtocol):
    __slots__ = (
        "_admitted",
        "_busy",
        "_ip",
        "_leg",
        "_pauses",
        "_tasks",
        "_timer",
        "budget_held",
        "core",
        "ctx",
        "decoder",
        "loop",
        "transport",
    )

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.decoder = Decoder(ctx.settings.max_packet_size)
        self.decoder.keep_raw_publish = ctx.settings.relay
        self.core = SessionCore(
            ctx.settings, ctx.access, ctx.registry, ctx.handler, self.decoder, self._act
        )
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_event_loop()
        self._pauses: set[str] | None = None  # why reading is paused (None: it is not)
        self._timer: asyncio.TimerHandle | None = None
        self._admitted = True
        self._busy = False  # over the limits, waiting for its CONNECT to answer it busy
        self._ip = ""
        self._tasks: set[asyncio.Task[None]] | None = None
        #: what the worker's budget counts for this connection (see ftserver.mqtt.budget)
        self.budget_held = 0
        #: relay mode: the upstream leg, once the broker answered
        self._leg: Upstream | None = None

    # -- asyncio protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr: asyncio.Transport = transport  # type: ignore[assignment]  # uvloop's: no subclass
        self.transport = tr
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peername = transport.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        self._ip = str(peername[0]) if isinstance(peername, tuple) else peer
        ctx = self.ctx
        if not ctx.admission.admit(self._ip):
            self._admitted = False
            ctx.on_event("connection_refused")
            if ctx.refusing >= MAX_REFUSING:
                _refused_log(
                    "%s: connection limit reached, closed at once (too many waiting "
                    "to be answered busy)",
                    peer,
                )
                self.core.closed = True
                tr.abort()
                return
            ctx.refusing += 1
            self._busy = True
            self.core.start(self.loop.time(), peer, admitted=False)
            return
        ctx.connections.add(self)
        self.core.start(self.loop.time(), peer, self._certificate_cn())
        ctx.on_event("connection_opened")

    def _certificate_cn(self) -> str | None:
        """The subject CN of a verified client certificate (TLS listener), if any."""
        assert self.transport is not None
        cert = self.transport.get_extra_info("peercert")
        if not cert:
            return None
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
        return None

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.decoder.get_buffer(sizehint, tight=self.ctx.budget.tight)

    def buffer_updated(self, nbytes: int) -> None:
        self.decoder.buffer_updated(nbytes)
        self.core.receive(self.loop.time())
        self._account()

    def _account(self) -> None:
        """Tell the budget what this connection holds now (after the core took its packets)."""
        decoder = self.decoder
        held = decoder.capacity if decoder.buffered else 0
        if held or self.budget_held:
            self.ctx.budget.update(self, held)

    # -- the budget's view (ftserver.mqtt.budget.Holder) -------------------------------------

    def budget_pause(self) -> None:
        self._pause("budget")

    def budget_resume(self) -> None:
        self._resume("budget")

    def budget_missing(self) -> int:
        return self.decoder.missing

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self._pause("write")
        if self._leg is not None:  # the broker's messages wait in its socket meanwhile
            self._leg.pause_reading()

    def resume_writing(self) -> None:
        self._resume("write")
        if self._leg is not None:
            self._leg.resume_reading()

    # -- relay mode: what the upstream leg reports (ftserver.mqtt.upstream.UpstreamListener) ---

    def upstream_connected(self, leg: Upstream, connack: Connack) -> None:
        self._leg = leg
        self.core.upstream_connected(connack)
        self._account()

    def upstream_failed(self, reason: str) -> None:
        self.core.upstream_failed(reason)

    def upstream_packet(self, packet: Packet) -> None:
        self.core.upstream_packet(packet)

    def upstream_read_done(self) -> None:
        self.core.upstream_read_done()

    def upstream_closed(self, disconnect: Disconnect | None) -> None:
        self._leg = None
        self._resume("upstream")
        self.core.upstream_closed(disconnect)

    def upstream_busy(self, busy: bool) -> None:
        if busy:
            self._pause("upstream")
        else:
            self._resume("upstream")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.ctx.budget.forget(self)
        self.decoder.close()
        self.core.connection_lost()
        if not self._admitted:
            if self._busy:
                self._busy = False
                self.ctx.refusing -= 1
            return
        self.ctx.admission.release(self._ip)
        self.ctx.connections.discard(self)
        self.ctx.on_event("connection_closed")

    # -- actions of the core -----------------------------------------------------------------

    def _act(self, action: Action) -> None:
        match action:
            case Send(data):
                if self.transport is not None:
                    self.transport.write(data)
            case SendUpstream(packet, raw):
                if self._leg is not None:
                    self._leg.send(packet, raw)
            case Close():
                if self.transport is not None:
                    self.transport.close()
            case PauseReading(reason):
                self._pause(reason)
            case ResumeReading(reason):
                self._resume(reason)
            case StartTimer(delay):
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = self.loop.call_later(delay, self._timer_fired)
            case CancelTimer():
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            case Event(name):
                self.ctx.on_event(name)
            case VerifyLogin(username, password):
                self._spawn(self._verify(username, password))
            case ClaimSession(client_id):
                self._spawn(self._claim(client_id))
            case AwaitResult(job, final):
                self._spawn(self._await(job, final))
            case GroupCommit(batch):
                self._spawn(self._commit(batch))
            case OpenUpstream(connect):
                assert self.ctx.relay is not None
                self.ctx.relay.open(connect, self)
            case CloseUpstream(disconnect):
                leg, self._leg = self._leg, None
                if leg is not None:
                    leg.close(disconnect)
                    self._resume("upstream")

    def _timer_fired(self) -> None:
        self._timer = None
        now = self.loop.time()
        if self._pauses is not None and "budget" in self._pauses and self._unread():
            # the server holds reading back, not the client: what waits unread is activity
            self.core.alive(now)
        self.core.timer_fired(now)

    def _unread(self) -> int:
        """Bytes waiting in the socket's receive queue (0 if unknown)."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return 0
        try:
            raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        except OSError:
            return 0
        return int(struct.unpack("i", raw)[0])

    def _pause(self, reason: str) -> None:
        pauses = self._pauses
        if pauses is None:
            pauses = self._pauses = set()
            if self.transport is not None and not self.core.closed:
                self.transport.pause_reading()
        pauses.add(reason)

    def _resume(self, reason: str) -> None:
        pauses = self._pauses
        if pauses is None:
            return
        pauses.discard(reason)
        if not pauses:
            self._pauses = None
            if self.transport is not None and not self.core.closed:
                self.transport.resume_reading()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        tasks = self._tasks
        if tasks is None:
            tasks = self._tasks = set()
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _verify(self, username: str, password: bytes) -> None:
        passwords = self.ctx.access.passwords
        assert passwords is not None
        self.core.login_verified(await passwords.verify(username, password))
        self._account()

    async def _claim(self, client_id: str) -> None:
        bridge = self.ctx.registry.bridge
        assert bridge is not None
        try:
            blob = await bridge.claim(client_id)
        except Exception as exc:
            self.core.claim_failed(exc)
            return
        self.core.session_claimed(blob)
        self._account()

    async def _await(self, job: object, final: Awaitable[Outcome]) -> None:
        try:
            outcome = await final
        except Exception as exc:  # the core maps it (errors.outcome_of)
            self.core.deferred_done(job, exc)
            return
        self.core.deferred_done(job, outcome)

    async def _commit(self, batch: object) -> None:
        try:
            await self.ctx.handler.group_commit()
        except Exception as exc:  # the core maps it (errors.outcome_of)
            self.core.commit_done(batch, exc)
            self._account()
            return
        self.core.commit_done(batch, None)
        self._account()

    # -- the server's view -------------------------------------------------------------------

    def shutdown(self) -> None:
        self.core.shutdown()

    async def wait_idle(self) -> None:
        """Wait for deferred commands (held fins) of this connection."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

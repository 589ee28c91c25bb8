"""The MQTT connection an upload runs over: one it opens itself, or the application's.

:class:`OwnedLink` creates an ``aiomqtt.Client`` from :class:`MqttSettings` and keeps it
connected: when the connection drops it reconnects with exponential backoff (with jitter),
re-entering the same aiomqtt client so that paho resends every unacknowledged QoS 1 command
after the CONNACK. Its session is persistent (MQTT 5: Clean Start off and a Session Expiry
Interval, the session ended by the final DISCONNECT of a successful upload; 3.1.1: Clean
Session off, the server's own session expiry applies), so the server
keeps the subscription to the response topic and queues response documents that were
published while the client was away. A stalled connection (no acknowledgement for the
command timeout) is forced down by shutting its socket, which paho then handles like any
network failure.

:class:`SharedLink` uses an ``aiomqtt.Client`` the application has connected and keeps
owning: the upload never connects or disconnects it. When it drops, the upload waits (up to the
reconnect timeout) for the application to connect it again (the usual aiomqtt pattern is a
retry loop around ``async with client``); paho, on that same client, then resends what was
unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ftserver.client.errors import ConnectionFailed
from ftserver.client.tap import Connack, Document, Tap, properties, reason_value

log = logging.getLogger("ftserver.client")
#: paho's own log (an ERROR for every connection reset, expected when a network is flaky)
paho_log = logging.getLogger("ftserver.client.mqtt")

#: CONNACK reason codes after which trying again cannot help (bad credentials, banned, ...)
_FATAL_CONNACK = frozenset({0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C, 0x90, 0x95, 0x9A, 0x9B, 0x9C})


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """How to open a connection of the uploader's own."""

    host: str = "127.0.0.1"
    port: int = 1883
    #: None: a random ``ftupload-...`` identifier (a resumed upload reuses the recorded one)
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    #: TLS: True for the system's default context, or a context of your own
    tls: bool | ssl.SSLContext = False
    #: 5 (MQTT 5.0) or 4 (MQTT 3.1.1)
    version: int = 5
    #: keep-alive in seconds; a dead connection is noticed within about twice this
    keepalive: int = 15
    #: MQTT 5 Session Expiry Interval: how long the server keeps the session across a drop
    session_expiry: int = 600


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter."""

    initial: float
    maximum: float

    def delay(self, attempt: int) -> float:
        ceiling = min(self.maximum, self.initial * (2 ** min(attempt, 30)))
        return random.uniform(ceiling / 2, ceiling)


def new_client_id() -> str:
    return "ftupload-" + secrets.token_hex(6)


class Link:
    """A connection's state as an upload sees it. Subclasses decide who (re)connects."""

    owned = False

    def __init__(self, client: aiomqtt.Client, *, reconnect_timeout: float) -> None:
        self.client = client
        self.tap = Tap.attach(client)
        self.reconnect_timeout = reconnect_timeout
        self.up = self.tap.connected()
        self.last_connack: Connack | None = None
        #: set when the link gave up (the upload then ends with it)
        self.error: ConnectionFailed | None = None
        #: called on the loop thread after every CONNACK (accepted or not) and every drop
        self.on_change: Callable[[], None] = lambda: None
        self.tap.add_listener(self)

    @property
    def protocol(self) -> int:
        return self.tap.protocol

    @property
    def client_id(self) -> str:
        return self.tap.client_id

    async def open(self) -> None:
        """Return once connected (raise :class:`ConnectionFailed` if that cannot be)."""
        raise NotImplementedError

    def kick(self) -> bool:
        """Force a stalled connection down so that it is reconnected; False if not ours."""
        return False

    async def close(self) -> None:
        self.tap.remove_listener(self)
        self.tap.detach()

    # -- tap listener ------------------------------------------------------------------------

    def on_puback(self, mid: int, reason_code: int, reason_string: str | None) -> None:
        pass

    def on_document(self, doc: Document) -> None:
        pass

    def on_connack(self, connack: Connack) -> None:
        self.last_connack = connack
        self.up = connack.reason_code < 0x80
        self.on_change()

    def on_connection_lost(self) -> None:
        self.up = False
        self.on_change()


class SharedLink(Link):
    """An application's aiomqtt client: never connected or disconnected by the upload."""

    async def open(self) -> None:
        if self.tap.connected():
            self.up = True
            return
        # perhaps the application is connecting it right now
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_timeout
        while not self.tap.connected():
            if loop.time() >= deadline:
                raise ConnectionFailed(
                    "the shared MQTT client is not connected (enter `async with client` first)"
                )
            await asyncio.sleep(0.05)
        self.up = True


class OwnedLink(Link):
    """A connection the upload opens, keeps up and closes."""

    owned = True

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        connect_timeout: float,
        reconnect_timeout: float,
        backoff: Backoff,
        inflight: int,
    ) -> None:
        self.settings = settings
        self.backoff = backoff
        self.connect_timeout = connect_timeout
        v5 = settings.version == 5
        props: Properties | None = None
        if v5:
            props = properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = settings.session_expiry
        tls_context: ssl.SSLContext | None = None
        if isinstance(settings.tls, ssl.SSLContext):
            tls_context = settings.tls
        elif settings.tls:
            tls_context = ssl.create_default_context()
        client = aiomqtt.Client(
            settings.host,
            settings.port,
            username=settings.username,
            password=settings.password,
            identifier=client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else False,
            # never clean: paho's "first connect only" restarts with every connect() (aiomqtt
            # calls it on every re-entry); a new random client id has no session anyway
            clean_start=False if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            keepalive=settings.keepalive,
            timeout=connect_timeout,
            max_inflight_messages=inflight,
            max_queued_outgoing_messages=0,
            properties=props,
            tls_context=tls_context,
            logger=paho_log,
        )
        super().__init__(client, reconnect_timeout=reconnect_timeout)
        self.up = False
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._connack: asyncio.Future[Connack] | None = None
        self._lost = asyncio.Event()
        self._closing = False
        self._entered = False
        self.down_since: float | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._task = asyncio.create_task(self._supervise(), name="ftupload-link")
        await self._ready

    def on_connack(self, connack: Connack) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(connack)
        super().on_connack(connack)

    def on_connection_lost(self) -> None:
        self._lost.set()
        super().on_connection_lost()

    def kick(self) -> bool:
        sock = self.tap.paho.socket()
        if isinstance(sock, socket.socket):
            log.warning("connection stalled: closing it to reconnect")
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            return True
        return False

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        first = True
        self.down_since = loop.time()
        try:
            while not self._closing:
                try:
                    connack = await self._connect()
                except ConnectionFailed as exc:
                    self._fail(exc)
                    return
                except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
                    assert self.down_since is not None
                    if first and _refused(exc):
                        self._fail(
                            ConnectionFailed(
                                f"cannot connect to {self.settings.host}:{self.settings.port}: "
                                f"{exc}"
                            )
                        )
                        return
                    if loop.time() - self.down_since > self.reconnect_timeout:
                        self._fail(
                            ConnectionFailed(
                                f"no connection to {self.settings.host}:{self.settings.port} "
                                f"for {self.reconnect_timeout:.0f}s: {exc}"
                            )
                        )
                        return
                    delay = self.backoff.delay(attempt)
                    attempt += 1
                    log.info("connect failed (%s); retrying in %.1fs", exc or type(exc), delay)
                    await asyncio.sleep(delay)
                    continue
                first = False
                attempt = 0
                self.down_since = None
                log.debug("connected (session present: %s)", connack.session_present)
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)
                await self._until_lost()
                await self._exit()
                if self.closing():
                    return
                self.down_since = loop.time()
                log.info("connection lost; reconnecting")
                await asyncio.sleep(self.backoff.delay(0) / 4)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # pragma: no cover - a bug; do not leave open() hanging
            self._fail(ConnectionFailed(f"connection supervisor failed: {exc!r}"))
            raise

    async def _connect(self) -> Connack:
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._lost.clear()
        try:
            await self.client.__aenter__()
        except MqttConnectError as exc:
            code = reason_value(exc.rc)
            if code in _FATAL_CONNACK or code in (2, 4, 5):
                raise ConnectionFailed(
                    f"the server refused the connection: {exc}", reason_code=code
                ) from None
            raise
        self._entered = True
        # aiomqtt returns from a re-entry before the CONNACK: wait for it here
        try:
            connack = await asyncio.wait_for(asyncio.shield(self._connack), self.connect_timeout)
        except TimeoutError:
            self.kick()
            await self._exit()
            raise
        if connack.reason_code >= 0x80:
            await self._exit()
            if connack.reason_code in _FATAL_CONNACK:
                raise ConnectionFailed(
                    f"the server refused the connection (CONNACK 0x{connack.reason_code:02X})",
                    reason_code=connack.reason_code,
                )
            raise aiomqtt.MqttError(f"CONNACK 0x{connack.reason_code:02X}")
        return connack

    async def _until_lost(self) -> None:
        # Iterating aiomqtt's message queue ends with MqttError when the connection drops,
        # also when paho's reader raised instead of reporting the loss; it also consumes the
        # exception aiomqtt stores for that. Nothing else arrives there: response documents
        # are routed to the tap by topic.
        async def drain() -> None:
            with contextlib.suppress(aiomqtt.MqttError):
                async for _message in self.client.messages:
                    pass

        drainer = asyncio.create_task(drain())
        lost = asyncio.create_task(self._lost.wait())
        try:
            await asyncio.wait({drainer, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (drainer, lost):
                t.cancel()
            await asyncio.gather(drainer, lost, return_exceptions=True)
        if self.up:  # the drain ended first: tell the upload
            self.up = False
            self.on_change()

    async def _exit(self) -> None:
        if not self._entered:
            return
        self._entered = False
        with contextlib.suppress(aiomqtt.MqttError, OSError):
            await self.client.__aexit__(None, None, None)
        # aiomqtt keeps the reason of an unexpected disconnection in a future that only its
        # message iterator reads; consume it, or asyncio logs "exception never retrieved"
        gone = getattr(self.client, "_disconnected", None)
        if isinstance(gone, asyncio.Future) and gone.done() and not gone.cancelled():
            gone.exception()

    def closing(self) -> bool:
        """Whether :meth:`close` has begun."""
        return self._closing

    def _fail(self, exc: ConnectionFailed) -> None:
        self.error = exc
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(exc)
        self.on_change()

    async def close(self, *, end_session: bool = True) -> None:
        """Disconnect cleanly (MQTT 5: ending the session, as nothing is left to resend)."""
        self._closing = True
        if self._entered and self.up and end_session and self.settings.version == 5:
            props = properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = 0
            with contextlib.suppress(Exception):
                self.tap.paho.disconnect(properties=props)
                await asyncio.wait_for(self._lost.wait(), self.connect_timeout)
        self._lost.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._exit()
        await super().close()


def _refused(exc: BaseException) -> bool:
    text = str(exc)
    return "Connection refused" in text or "Errno 111" in text

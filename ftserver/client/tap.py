"""What aiomqtt does not hand over: PUBACK reason codes, CONNACK details, response documents.

aiomqtt (2.x) wraps a paho-mqtt 2.x ``Client``. paho reports every acknowledgement to its
``on_publish(client, userdata, mid, reason_code, properties)`` callback, with the MQTT 5
reason code and properties of the PUBACK; aiomqtt installs its own ``on_publish`` that only
wakes the coroutine waiting in ``aiomqtt.Client.publish()``, which returns ``None``: the reason
code, the Reason String and even the packet identifier are dropped there. A file-transfer
client needs all three (the result of a synchronous command *is* the PUBACK reason code, and
asynchronous results are matched by packet identifier).

:class:`Tap` therefore sits on the paho client *under* an aiomqtt client, without replacing
anything aiomqtt relies on:

- It **chains** paho's ``on_publish``, ``on_connect`` and ``on_disconnect`` callbacks: each
  wrapper first tells the tap's listeners (PUBACK reason code and properties by packet id;
  CONNACK reason code, Session Present and properties; connection lost), then calls the
  callback aiomqtt had installed, so aiomqtt keeps working exactly as before. Detaching the
  last user puts aiomqtt's callbacks back. (``on_socket_close`` is chained too, to repair an
  aiomqtt race that can leave the next connection unread: see :meth:`Tap._on_socket_close`.)
- It **publishes through paho directly** (``paho.Client.publish``, public API), because that
  returns the packet identifier (``MQTTMessageInfo.mid``) the acknowledgement and the response
  document are matched by; ``aiomqtt.Client.publish`` hides it. Publishing while the
  connection is down is allowed: paho keeps QoS 1 messages and sends them after the next
  CONNACK (with DUP set if they had gone out before), which is also how unacknowledged
  commands are resent after a reconnect of the same client.
- It takes **response documents** off the wire with paho's ``message_callback_add`` (public
  API) for the response topic only, so they never enter aiomqtt's message queue: an
  application iterating ``client.messages`` on a shared connection sees none of them, and the
  uploader sees nothing of the application's traffic.

The only non-public name used here is ``aiomqtt.Client._client`` (the paho client), which
aiomqtt 2.x has kept throughout and which the dependency range in pyproject.toml pins (the
link module also reads ``aiomqtt.Client._disconnected`` once, see there). paho invokes
these callbacks on the thread that drives its socket; under aiomqtt that is the event loop's
own thread, and the tap hands anything arriving from another thread over with
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["Connack", "Document", "Listener", "Tap", "paho_client", "properties", "reason_value"]


@dataclass(frozen=True, slots=True)
class Connack:
    """A CONNACK as the tap saw it."""

    reason_code: int
    session_present: bool
    #: MQTT 5 Receive Maximum announced by the server (None: not announced / 3.1.1)
    receive_maximum: int | None
    #: MQTT 5 Assigned Client Identifier (None unless the client sent an empty one)
    assigned_client_id: str | None


@dataclass(frozen=True, slots=True)
class Document:
    """A message received on a response topic."""

    topic: str
    payload: bytes
    #: MQTT 5 Correlation Data of the message, if any
    correlation: bytes | None


class Listener(Protocol):
    """What the tap tells its users. Every method runs on the event loop's thread."""

    def on_puback(self, mid: int, reason_code: int, reason_string: str | None) -> None: ...

    def on_connack(self, connack: Connack) -> None: ...

    def on_connection_lost(self) -> None: ...

    def on_document(self, doc: Document) -> None: ...


def paho_client(client: aiomqtt.Client) -> paho.Client:
    """The paho-mqtt client under an aiomqtt client."""
    inner = getattr(client, "_client", None)
    if not isinstance(inner, paho.Client):  # pragma: no cover - another aiomqtt layout
        raise TypeError(
            "this aiomqtt version does not keep its paho client in ._client; "
            "ftserver.client needs aiomqtt 2.x"
        )
    return inner


def reason_value(rc: object) -> int:
    """The number of a paho ``ReasonCode`` (or of a plain int); 0x80 if it has none."""
    value = getattr(rc, "value", rc)
    return int(value) if isinstance(value, int) else 0x80


def properties(packet_type: int) -> Properties:
    """An empty paho ``Properties`` for ``packet_type`` (paho's constructor is untyped)."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]


class Tap:
    """The listeners of one paho client (one per aiomqtt client, shared by its users).

    Get it with :meth:`attach`; every ``attach`` needs a matching :meth:`detach`.
    """

    _taps: ClassVar[weakref.WeakKeyDictionary[paho.Client, Tap]] = weakref.WeakKeyDictionary()

    def __init__(self, client: aiomqtt.Client, loop: asyncio.AbstractEventLoop) -> None:
        self.aio = client
        self.paho = paho_client(client)
        self.loop = loop
        self._thread = threading.get_ident()
        self._users = 0
        self._listeners: list[Listener] = []
        self._topics: dict[str, int] = {}
        self._saved: tuple[Any, Any, Any, Any] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def attach(cls, client: aiomqtt.Client) -> Tap:
        """The tap of ``client``, installed on first use."""
        inner = paho_client(client)
        tap = cls._taps.get(inner)
        if tap is None:
            tap = cls(client, asyncio.get_running_loop())
            cls._taps[inner] = tap
        if tap._users == 0:
            tap._install()
        tap._users += 1
        return tap

    def detach(self) -> None:
        """Release one use; the last one restores aiomqtt's callbacks."""
        self._users -= 1
        if self._users == 0:
            self._uninstall()
            self._taps.pop(self.paho, None)

    def _install(self) -> None:
        p = self.paho
        self._saved = (p.on_publish, p.on_connect, p.on_disconnect, p.on_socket_close)
        p.on_publish = self._on_publish
        p.on_connect = self._on_connect
        p.on_disconnect = self._on_disconnect
        p.on_socket_close = self._on_socket_close

    def _uninstall(self) -> None:
        if self._saved is not None:
            p = self.paho
            p.on_publish, p.on_connect, p.on_disconnect, p.on_socket_close = self._saved
            self._saved = None
        for topic in list(self._topics):
            self.paho.message_callback_remove(topic)
        self._topics.clear()

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def watch(self, topic: str) -> None:
        """Route messages on ``topic`` (a topic name, no wildcards) to the listeners."""
        n = self._topics.get(topic, 0)
        if n == 0:
            self.paho.message_callback_add(topic, self._on_message)
        self._topics[topic] = n + 1

    def unwatch(self, topic: str) -> None:
        n = self._topics.get(topic, 0) - 1
        if n <= 0:
            self._topics.pop(topic, None)
            self.paho.message_callback_remove(topic)
        else:
            self._topics[topic] = n

    # -- publishing --------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, properties: Properties | None) -> int:
        """Publish at QoS 1 through paho; the packet identifier.

        Raises :class:`ValueError` for a topic or payload paho refuses, and
        :class:`BufferError` when paho's outgoing queue is full (``max_queued_messages``).
        A connection that is down is not an error: the message goes out after the next
        CONNACK.
        """
        info = self.paho.publish(topic, payload, qos=1, properties=properties)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            raise BufferError("paho's outgoing queue is full")
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise OSError(f"paho refused the publish: {paho.error_string(info.rc)}")
        return info.mid

    @property
    def protocol(self) -> int:
        """4 (MQTT 3.1.1) or 5."""
        return 5 if self.paho.protocol == paho.MQTTv5 else 4

    @property
    def client_id(self) -> str:
        return self.aio.identifier

    def connected(self) -> bool:
        """Whether paho has a connection (CONNACK received, not lost since)."""
        return self.paho.is_connected()

    # -- paho callbacks (chained) ------------------------------------------------------------

    def _run(self, fn: Callable[[], None]) -> None:
        if threading.get_ident() == self._thread:
            fn()
        else:  # pragma: no cover - aiomqtt drives paho from the loop's thread
            self.loop.call_soon_threadsafe(fn)

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        code = reason_value(reason_code)
        rs = getattr(properties, "ReasonString", None) if properties is not None else None
        reason_string = rs if isinstance(rs, str) else None

        def tell() -> None:
            for listener in list(self._listeners):
                listener.on_puback(mid, code, reason_string)

        self._run(tell)
        if self._saved is not None and self._saved[0] is not None:
            self._saved[0](client, userdata, mid, reason_code, properties)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        rm = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        assigned = (
            getattr(properties, "AssignedClientIdentifier", None)
            if properties is not None
            else None
        )
        connack = Connack(
            reason_value(reason_code),
            bool(flags.session_present),
            rm if isinstance(rm, int) else None,
            assigned if isinstance(assigned, str) else None,
        )

        def tell() -> None:
            for listener in list(self._listeners):
                listener.on_connack(connack)

        self._run(tell)
        if self._saved is not None and self._saved[1] is not None:
            self._saved[1](client, userdata, flags, reason_code, properties)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        def tell() -> None:
            for listener in list(self._listeners):
                listener.on_connection_lost()

        self._run(tell)
        if self._saved is not None and self._saved[2] is not None:
            self._saved[2](client, userdata, flags, reason_code, properties)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._saved is not None and self._saved[3] is not None:
            self._saved[3](client, userdata, sock)
        fd = sock.fileno()
        if fd < 0:
            return

        # aiomqtt registers the socket's reader and writer with call_soon_threadsafe (the
        # registration runs later) but removes them at once: a registration still queued when
        # the socket closes lands on the dead descriptor, and the event loop keeps a key for a
        # descriptor number the next connection's socket then gets, whose reader can no
        # longer be added (ENOENT): that connection would never read its CONNACK. Queued
        # after any such registration, this drops whatever is left for the dead socket.
        def forget() -> None:
            current = self.paho.socket()
            if current is not None and current.fileno() == fd:
                return  # the number already belongs to the next connection
            for remove in (self.loop.remove_writer, self.loop.remove_reader):
                with contextlib.suppress(OSError, ValueError):
                    remove(fd)

        self.loop.call_soon_threadsafe(forget)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        doc = Document(
            message.topic, bytes(message.payload), bytes(corr) if corr is not None else None
        )

        def tell() -> None:
            for listener in list(self._listeners):
                listener.on_document(doc)

        self._run(tell)

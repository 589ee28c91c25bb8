"""MQTT sessions, the registry of them, and the router of response documents.

A :class:`Session` is the state MQTT keeps for a client identifier across connections:
subscriptions, QoS 1 messages queued or in flight towards the client, and the QoS 2 packet
identifiers received and not yet released. A connection attaches to a session at CONNECT and
detaches when it closes; a session with a non-zero expiry interval outlives it.

ftserver routes nothing but its own response documents (PROTOCOL.md §1), so the router is
small: a document goes to every session with a matching subscription, online or not.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ftserver.mqtt.packets import Properties, SubscriptionOptions
from ftserver.topics import topic_matches

log = logging.getLogger(__name__)

#: response documents kept for an offline session; the oldest are dropped beyond this
MAX_QUEUED = 1000
#: session expiry interval meaning "never expires" (MQTT 5 §3.1.2.11.2)
NEVER_EXPIRES = 0xFFFFFFFF


class Bridge(Protocol):
    """The way out of this worker process: the supervisor's view of every worker.

    A worker with a bridge tells the supervisor which topic filters its sessions subscribe to
    (so documents published elsewhere reach them), forwards documents whose subscribers are
    elsewhere, and gives up a client identifier when its session ends.
    """

    def filter_added(self, topic_filter: str) -> None: ...

    def filter_removed(self, topic_filter: str) -> None: ...

    def matches_remote(self, topic: str) -> bool: ...

    def route_remote(self, topic: str, payload: bytes, properties: Properties) -> None: ...

    def released(self, client_id: str) -> None: ...

    async def claim(self, client_id: str) -> dict[str, Any] | None:
        """Make this worker the client's only home; returns the session another worker
        handed over, if any."""
        ...


class Attached(Protocol):
    """What a session needs of the connection attached to it."""

    def deliver(self, message: Message) -> None: ...

    def close_for_takeover(self) -> None: ...


@dataclass(slots=True)
class Message:
    """A message on its way to one session: a response document, or (relay mode) a message
    from the broker, which carries the packet identifier it has on the upstream leg."""

    topic: str
    payload: bytes
    qos: int
    properties: Properties = field(default_factory=lambda: Properties())
    retain: bool = False
    #: relay mode: the broker's packet identifier (None: one of ftserver's own documents)
    upstream_id: int | None = None
    #: QoS 2: the client sent PUBREC; PUBREL is next (resent instead of the PUBLISH)
    released: bool = False


@dataclass(slots=True)
class Subscription:
    options: SubscriptionOptions
    identifier: int | None = None


class Session:
    __slots__ = (
        "_expiry_handle",
        "client_id",
        "connection",
        "expiry_interval",
        "inflight",
        "next_packet_id",
        "qos2_received",
        "queue",
        "relay_down",
        "relayed_up",
        "subscriptions",
    )

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.subscriptions: dict[str, Subscription] = {}
        #: QoS 1 messages not yet sent (offline, or beyond the client's Receive Maximum)
        self.queue: deque[Message] = deque()
        #: QoS 1 messages sent and not yet acknowledged: packet id -> message
        self.inflight: dict[int, Message] = {}
        self.next_packet_id = 1
        #: QoS 2 packet ids received: id -> reason code of the PUBREC (None while processing)
        self.qos2_received: dict[int, int | None] = {}
        #: relay mode: broker's packet id -> the client's (0 while queued), until complete
        self.relay_down: dict[int, int] = {}
        #: relay mode: QoS 2 packet ids of the client's PUBLISHes passed to the broker, whose
        #: PUBREL and PUBCOMP pass through too
        self.relayed_up: set[int] = set()
        self.connection: Attached | None = None
        self.expiry_interval = 0
        self._expiry_handle: asyncio.TimerHandle | None = None

    def allocate_packet_id(self) -> int:
        """A packet identifier not in use by an unacknowledged outgoing message."""
        pid = self.next_packet_id
        while pid in self.inflight:
            pid = pid % 0xFFFF + 1
        self.next_packet_id = pid % 0xFFFF + 1
        return pid

    def enqueue(self, message: Message) -> None:
        """Queue ``message``. A relayed one is never dropped: the broker bounds how many it
        has unacknowledged on the leg (its Receive Maximum towards ftserver)."""
        if message.upstream_id is not None:
            self.relay_down[message.upstream_id] = 0
            self.queue.append(message)
            return
        if len(self.queue) >= MAX_QUEUED:
            dropped = next((m for m in self.queue if m.upstream_id is None), None)
            if dropped is not None:
                self.queue.remove(dropped)
                log.warning(
                    "session %r: queue full, dropping a response on %r",
                    self.client_id,
                    dropped.topic,
                )
        self.queue.append(message)


class SessionRegistry:
    """Every session of this process, by client identifier, and the routing between them."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        #: exact (wildcard-free) filter -> client ids subscribed to it
        self._exact: dict[str, set[str]] = {}
        #: client ids with at least one wildcard filter
        self._wild: set[str] = set()
        #: how many local sessions subscribe to each filter (what the bridge is told)
        self._filter_count: dict[str, int] = {}
        self.bridge: Bridge | None = None
        #: metrics hook: how many sessions a document was delivered to
        self.on_delivered: Callable[[int], None] | None = None

    # -- sessions ----------------------------------------------------------------------------

    def attach(
        self, client_id: str, connection: Attached, clean_start: bool
    ) -> tuple[Session, bool]:
        """Attach a new connection; returns the session and whether it was present.

        A connection already attached to the session is closed first (takeover).
        """
        session = self.sessions.get(client_id)
        if session is not None:
            old = session.connection
            if old is not None and old is not connection:
                session.connection = None
                old.close_for_takeover()
            if session._expiry_handle is not None:
                session._expiry_handle.cancel()
                session._expiry_handle = None
            if clean_start:
                self.discard(session)
                session = None
        present = session is not None
        if session is None:
            session = Session(client_id)
            self.sessions[client_id] = session
        session.connection = connection
        return session, present

    def detach(self, session: Session, connection: Attached) -> None:
        """The connection closed: keep the session for its expiry interval, or drop it."""
        if session.connection is not connection:
            return  # already taken over
        session.connection = None
        if self.sessions.get(session.client_id) is not session:
            return
        if session.expiry_interval == 0:
            self.discard(session)
        elif session.expiry_interval != NEVER_EXPIRES:
            loop = asyncio.get_running_loop()
            session._expiry_handle = loop.call_later(session.expiry_interval, self._expire, session)

    def _expire(self, session: Session) -> None:
        session._expiry_handle = None
        if session.connection is None and self.sessions.get(session.client_id) is session:
            log.debug("session %r expired", session.client_id)
            self.discard(session)

    def discard(self, session: Session, *, release: bool = True) -> None:
        """Forget a session; ``release`` tells the supervisor the client id is free."""
        for topic_filter in list(session.subscriptions):
            self.unsubscribe(session, topic_filter)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
            if release and self.bridge is not None:
                self.bridge.released(session.client_id)
        if session._expiry_handle is not None:
            session._expiry_handle.cancel()
            session._expiry_handle = None

    def hand_over(self, client_id: str) -> dict[str, Any] | None:
        """Another worker takes this client over: close its connection (0x8E) and give up
        its session, returned in serialised form (None when there is none)."""
        session = self.sessions.get(client_id)
        if session is None:
            return None
        conn = session.connection
        session.connection = None
        if conn is not None:
            conn.close_for_takeover()
        blob = session_to_blob(session)
        self.discard(session, release=False)
        return blob

    def adopt(self, blob: dict[str, Any]) -> Session:
        """Install a session handed over by another worker (before a connection attaches)."""
        session = session_from_blob(blob)
        old = self.sessions.get(session.client_id)
        if old is not None:
            self.discard(old, release=False)
        self.sessions[session.client_id] = session
        subs, session.subscriptions = session.subscriptions, {}
        for topic_filter, sub in subs.items():
            self.subscribe(session, topic_filter, sub)
        return session

    # -- subscriptions -----------------------------------------------------------------------

    def subscribe(self, session: Session, topic_filter: str, sub: Subscription) -> None:
        if topic_filter not in session.subscriptions:
            n = self._filter_count.get(topic_filter, 0)
            self._filter_count[topic_filter] = n + 1
            if n == 0 and self.bridge is not None:
                self.bridge.filter_added(topic_filter)
        session.subscriptions[topic_filter] = sub
        if "+" in topic_filter or "#" in topic_filter:
            self._wild.add(session.client_id)
        else:
            self._exact.setdefault(topic_filter, set()).add(session.client_id)

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        if session.subscriptions.pop(topic_filter, None) is None:
            return False
        n = self._filter_count.pop(topic_filter, 1) - 1
        if n:
            self._filter_count[topic_filter] = n
        elif self.bridge is not None:
            self.bridge.filter_removed(topic_filter)
        ids = self._exact.get(topic_filter)
        if ids is not None:
            ids.discard(session.client_id)
            if not ids:
                del self._exact[topic_filter]
        if not any("+" in f or "#" in f for f in session.subscriptions):
            self._wild.discard(session.client_id)
        return True

    def has_subscribers(self, topic: str) -> bool:
        """Cheap test before building a document nobody would receive."""
        if topic in self._exact:
            return True
        if self.bridge is not None and self.bridge.matches_remote(topic):
            return True
        for cid in self._wild:
            s = self.sessions.get(cid)
            if s is not None and any(topic_matches(f, topic) for f in s.subscriptions):
                return True
        return False

    def route(self, topic: str, payload: bytes, properties: Properties) -> int:
        """Deliver a QoS 1 document to every matching session, here and (through the
        bridge) in other workers; returns how many local sessions got it."""
        if self.bridge is not None and self.bridge.matches_remote(topic):
            self.bridge.route_remote(topic, payload, properties)
        return self.route_local(topic, payload, properties)

    def route_local(self, topic: str, payload: bytes, properties: Properties) -> int:
        """Deliver to the sessions of this process only."""
        targets: dict[str, list[Subscription]] = {}
        for cid in self._exact.get(topic, ()):
            s = self.sessions.get(cid)
            if s is not None:
                targets.setdefault(cid, []).append(s.subscriptions[topic])
        for cid in self._wild:
            s = self.sessions.get(cid)
            if s is None:
                continue
            for f, sub in s.subscriptions.items():
                if f != topic and topic_matches(f, topic):
                    targets.setdefault(cid, []).append(sub)
        for cid, subs in targets.items():
            session = self.sessions[cid]
            qos = min(1, max(sub.options.qos for sub in subs))
            props: Properties = dict(properties)  # type: ignore[assignment]
            ids = [sub.identifier for sub in subs if sub.identifier is not None]
            if ids:
                props["subscription_identifiers"] = ids
            message = Message(topic, payload, qos, props)
            conn = session.connection
            if conn is not None:
                conn.deliver(message)
            elif qos:
                session.enqueue(message)
        if targets and self.on_delivered is not None:
            self.on_delivered(len(targets))
        return len(targets)


# -- hand-over between worker processes --------------------------------------------------------

_BYTES_PROPS = ("correlation_data",)


def props_to_json(props: Properties) -> dict[str, Any]:
    out: dict[str, Any] = dict(props)
    for key in _BYTES_PROPS:
        if key in out:
            out[key] = base64.b64encode(out[key]).decode()
    return out


def props_from_json(obj: dict[str, Any]) -> Properties:
    out = dict(obj)
    for key in _BYTES_PROPS:
        if key in out:
            out[key] = base64.b64decode(out[key])
    if "user_properties" in out:
        out["user_properties"] = [tuple(p) for p in out["user_properties"]]
    return out  # type: ignore[return-value]


def _message_to_json(m: Message) -> dict[str, Any]:
    return {
        "topic": m.topic,
        "payload": base64.b64encode(m.payload).decode(),
        "qos": m.qos,
        "properties": props_to_json(m.properties),
        "retain": m.retain,
        "upstream_id": m.upstream_id,
        "released": m.released,
    }


def _message_from_json(obj: dict[str, Any]) -> Message:
    return Message(
        obj["topic"],
        base64.b64decode(obj["payload"]),
        obj["qos"],
        props_from_json(obj["properties"]),
        obj.get("retain", False),
        obj.get("upstream_id"),
        obj.get("released", False),
    )


def session_to_blob(s: Session) -> dict[str, Any]:
    """A session as JSON-able data, for the supervisor to hand to another worker."""
    return {
        "client_id": s.client_id,
        "expiry_interval": s.expiry_interval,
        "next_packet_id": s.next_packet_id,
        "subscriptions": [
            [
                f,
                sub.options.qos,
                sub.options.no_local,
                sub.options.retain_as_published,
                sub.options.retain_handling,
                sub.identifier,
            ]
            for f, sub in s.subscriptions.items()
        ],
        "queue": [_message_to_json(m) for m in s.queue],
        "inflight": [[pid, _message_to_json(m)] for pid, m in s.inflight.items()],
        "qos2_received": [[pid, rc] for pid, rc in s.qos2_received.items() if rc is not None],
        "relayed_up": sorted(s.relayed_up),
    }


def session_from_blob(blob: dict[str, Any]) -> Session:
    s = Session(blob["client_id"])
    s.expiry_interval = blob["expiry_interval"]
    s.next_packet_id = blob["next_packet_id"]
    for f, qos, nl, rap, rh, ident in blob["subscriptions"]:
        s.subscriptions[f] = Subscription(SubscriptionOptions(qos, nl, rap, rh), ident)
    s.queue.extend(_message_from_json(m) for m in blob["queue"])
    s.inflight = {pid: _message_from_json(m) for pid, m in blob["inflight"]}
    s.qos2_received = {pid: rc for pid, rc in blob["qos2_received"]}
    s.relayed_up = set(blob.get("relayed_up", ()))
    for m in s.queue:
        if m.upstream_id is not None:
            s.relay_down[m.upstream_id] = 0
    for pid, m in s.inflight.items():
        if m.upstream_id is not None:
            s.relay_down[m.upstream_id] = pid
    return s

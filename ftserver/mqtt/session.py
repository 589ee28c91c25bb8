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
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ftserver.mqtt.packets import Properties, SubscriptionOptions

log = logging.getLogger(__name__)

#: response documents kept for an offline session; the oldest are dropped beyond this
MAX_QUEUED = 1000
#: session expiry interval meaning "never expires" (MQTT 5 §3.1.2.11.2)
NEVER_EXPIRES = 0xFFFFFFFF


class Attached(Protocol):
    """What a session needs of the connection attached to it."""

    def deliver(self, message: Message) -> None: ...

    def close_for_takeover(self) -> None: ...


@dataclass(slots=True)
class Message:
    """A response document on its way to one session."""

    topic: str
    payload: bytes
    qos: int
    properties: Properties = field(default_factory=lambda: Properties())


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
        if len(self.queue) >= MAX_QUEUED:
            dropped = self.queue.popleft()
            log.warning(
                "session %r: queue full, dropping a response on %r", self.client_id, dropped.topic
            )
        self.queue.append(message)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (§4.7), with the rule that wildcards at the first level do
    not match topics starting with ``$`` (MQTT-4.7.2-1)."""
    if topic_filter == topic:
        return True
    if "+" not in topic_filter and "#" not in topic_filter:
        return False
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    flevels = topic_filter.split("/")
    tlevels = topic.split("/")
    for i, f in enumerate(flevels):
        if f == "#":
            return True
        if i >= len(tlevels):
            return False
        if f != "+" and f != tlevels[i]:
            return False
    return len(flevels) == len(tlevels)


class SessionRegistry:
    """Every session of this process, by client identifier, and the routing between them."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        #: exact (wildcard-free) filter -> client ids subscribed to it
        self._exact: dict[str, set[str]] = {}
        #: client ids with at least one wildcard filter
        self._wild: set[str] = set()
        self.on_drop: Callable[[Message], None] | None = None

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

    def discard(self, session: Session) -> None:
        for topic_filter in list(session.subscriptions):
            self.unsubscribe(session, topic_filter)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        if session._expiry_handle is not None:
            session._expiry_handle.cancel()
            session._expiry_handle = None

    # -- subscriptions -----------------------------------------------------------------------

    def subscribe(self, session: Session, topic_filter: str, sub: Subscription) -> None:
        session.subscriptions[topic_filter] = sub
        if "+" in topic_filter or "#" in topic_filter:
            self._wild.add(session.client_id)
        else:
            self._exact.setdefault(topic_filter, set()).add(session.client_id)

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        if session.subscriptions.pop(topic_filter, None) is None:
            return False
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
        for cid in self._wild:
            s = self.sessions.get(cid)
            if s is not None and any(topic_matches(f, topic) for f in s.subscriptions):
                return True
        return False

    def route(self, topic: str, payload: bytes, properties: Properties) -> int:
        """Deliver a QoS 1 document to every matching session; returns how many got it."""
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
        return len(targets)

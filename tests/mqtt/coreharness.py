"""Drive one :class:`SessionCore` without sockets or an event loop.

The client's packets are bytes (built by the ``mqtt5`` package for MQTT 5, by hand for 3.1.1)
fed to the connection's real ``Decoder``; what the core sends back is read with ``mqtt5`` (an
implementation that shares no code with ours) or compared byte for byte. The command handler
is a small scripted stand-in for the dispatcher: the file-transfer layer is not under test
here, the session rules are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mqtt5

from ftserver.errors import SUCCESS, Outcome
from ftserver.mqtt.actions import Action, Close, Send
from ftserver.mqtt.codec import Decoder
from ftserver.mqtt.core import SessionCore
from ftserver.mqtt.packets import Payload
from ftserver.mqtt.session import SessionRegistry
from ftserver.mqtt.settings import Access, MqttSettings

SETTINGS = MqttSettings(
    max_packet_size=1024 * 1024,
    connect_timeout=10.0,
    keepalive_max=0,
    session_expiry_max=3600,
    receive_maximum=4,
    topic_alias_maximum=8,
    max_inflight_responses=16,
)


@dataclass
class Pending:
    """A deferred result: ``final`` is never awaited here, the test answers it."""

    ack: Outcome | None
    final: object = field(default_factory=object)


@dataclass
class Commands:
    """The command handler: ``results`` maps a topic to what ``process`` returns (default:
    SUCCESS for ``$file/...``, None otherwise)."""

    results: dict[str, Outcome | Pending | None] = field(default_factory=dict)
    processed: list[tuple[str, str, bytes, int]] = field(default_factory=list)
    responded: list[tuple[str, str, int, Outcome, dict[str, Any]]] = field(default_factory=list)
    commits: int = 0
    group_commit_due: bool = False
    commit_error: Exception | None = None
    #: called by respond (e.g. to route the document to a session)
    on_respond: Callable[[str, str, int, Outcome], None] | None = None

    def process(
        self, client_id: str, topic: str, payload: Payload, qos: int
    ) -> Outcome | Pending | None:
        self.processed.append((client_id, topic, bytes(payload), qos))
        if topic in self.results:
            return self.results[topic]
        return SUCCESS if topic.startswith("$file/") else None

    def respond(
        self,
        client_id: str,
        topic: str,
        packet_id: int,
        outcome: Outcome,
        *,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        extra = {"response_topic": response_topic, "correlation_data": correlation_data}
        self.responded.append((client_id, topic, packet_id, outcome, extra))
        if self.on_respond is not None:
            self.on_respond(client_id, topic, packet_id, outcome)

    def commit(self) -> None:
        self.commits += 1
        if self.commit_error is not None:
            raise self.commit_error

    def fast_path(self, client_id: str, protocol_level: int, max_packet_size: int) -> None:
        return None  # the native segment path is tested with the real dispatcher

    async def group_commit(self) -> None:  # pragma: no cover - run by the glue, not here
        raise AssertionError("the core never awaits")


class Client:
    """One connection's core, the bytes in and the actions out."""

    def __init__(
        self,
        *,
        settings: MqttSettings = SETTINGS,
        access: Access | None = None,
        registry: SessionRegistry | None = None,
        commands: Commands | None = None,
        now: float = 0.0,
        cert_cn: str | None = None,
        admitted: bool = True,
    ) -> None:
        self.decoder = Decoder(settings.max_packet_size)
        self.decoder.keep_raw_publish = settings.relay
        self.registry = registry if registry is not None else SessionRegistry()
        self.commands = commands if commands is not None else Commands()
        self.actions: list[Action] = []
        self.core = SessionCore(
            settings,
            access if access is not None else Access(),
            self.registry,
            self.commands,
            self.decoder,
            self.actions.append,
        )
        self.core.start(now, "peer:1", cert_cn, admitted=admitted)

    def feed(self, *packets: bytes, now: float = 0.0) -> list[Action]:
        """Send the packets in one read; returns the actions this caused."""
        self.actions.clear()
        self.decoder.feed(b"".join(packets))
        self.core.receive(now)
        return self.take()

    def take(self) -> list[Action]:
        out = list(self.actions)
        self.actions.clear()
        return out

    def connect_v5(self, client_id: str = "dev-1", **kw: Any) -> mqtt5.ConnAckPacket:
        kw.setdefault("clean_start", True)
        acts = self.feed(mqtt5.ConnectPacket(client_id, **kw).write())
        (connack,) = read_v5(acts)
        assert isinstance(connack, mqtt5.ConnAckPacket)
        return connack


class NullBridge:
    """A session registry bridge to no other worker: claims are answered by the test
    (``session_claimed``), nothing is routed elsewhere."""

    def filter_added(self, topic_filter: str) -> None: ...

    def filter_removed(self, topic_filter: str) -> None: ...

    def matches_remote(self, topic: str) -> bool:
        return False

    def route_remote(self, topic: str, payload: bytes, properties: object) -> None: ...

    def released(self, client_id: str) -> None: ...

    async def claim(self, client_id: str) -> None:  # pragma: no cover - the glue's
        return None


def claiming_registry() -> SessionRegistry:
    """A registry whose CONNECTs wait for a claim, as with workers."""
    registry = SessionRegistry()
    registry.bridge = NullBridge()  # type: ignore[assignment]
    return registry


def sent(actions: list[Action]) -> bytes:
    """Every byte the actions write, in order."""
    return b"".join(a.data for a in actions if isinstance(a, Send))


def closed(actions: list[Action]) -> bool:
    return any(isinstance(a, Close) for a in actions)


def read_v5(actions: list[Action]) -> list[Any]:
    """The MQTT 5 packets the actions write, read by the ``mqtt5`` package."""
    data = sent(actions)
    packets = []
    while data:
        packet, n = mqtt5.read(data)
        packets.append(packet)
        data = data[n:]
    return packets


def kinds(actions: list[Action]) -> list[str]:
    return [type(a).__name__ for a in actions]

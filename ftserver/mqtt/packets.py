"""MQTT control packets as plain data.

One slotted dataclass per packet type, shared by MQTT 3.1.1 and 5.0: fields that 3.1.1 lacks
(reason codes, properties) keep their defaults there. The codec (:mod:`ftserver.mqtt.codec`)
turns bytes into these and back; nothing here does IO or validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias, TypedDict

from ftserver.mqtt.spec import MQTT_V5, PacketType

#: A payload as the decoder hands it out (a memoryview into its receive buffer) or as a caller
#: builds it.
Payload: TypeAlias = bytes | bytearray | memoryview


class Properties(TypedDict, total=False):
    """An MQTT 5 property set, keyed by property name (spec table in :mod:`.spec`).

    Only the properties present on the wire are keys. The two that may repeat hold lists, in
    wire order: ``user_properties`` (anywhere) and ``subscription_identifiers`` (repeatable in
    PUBLISH; a one-element list in SUBSCRIBE). One-byte flags such as ``retain_available``
    stay integers (0 or 1), as on the wire.
    """

    payload_format_indicator: int
    message_expiry_interval: int
    content_type: str
    response_topic: str
    correlation_data: bytes
    subscription_identifiers: list[int]
    session_expiry_interval: int
    assigned_client_identifier: str
    server_keep_alive: int
    authentication_method: str
    authentication_data: bytes
    request_problem_information: int
    will_delay_interval: int
    request_response_information: int
    response_information: str
    server_reference: str
    reason_string: str
    receive_maximum: int
    topic_alias_maximum: int
    topic_alias: int
    maximum_qos: int
    retain_available: int
    user_properties: list[tuple[str, str]]
    maximum_packet_size: int
    wildcard_subscription_available: int
    subscription_identifier_available: int
    shared_subscription_available: int


def _no_properties() -> Properties:
    return {}


@dataclass(slots=True)
class Will:
    """The Will Message of a CONNECT (present when the Will Flag is 1)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = field(default_factory=_no_properties)


@dataclass(slots=True)
class Connect:
    """CONNECT (§3.1). ``protocol_level`` is 4 (MQTT 3.1.1) or 5 (MQTT 5.0)."""

    client_id: str
    protocol_level: int = MQTT_V5
    clean_start: bool = True
    keep_alive: int = 0
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    properties: Properties = field(default_factory=_no_properties)

    packet_type = PacketType.CONNECT


@dataclass(slots=True)
class Connack:
    """CONNACK (§3.2). For protocol level 4 ``reason_code`` holds the 3.1.1 return code (0-5)."""

    session_present: bool = False
    reason_code: int = 0
    properties: Properties = field(default_factory=_no_properties)

    packet_type = PacketType.CONNACK


@dataclass(slots=True)
class Publish:
    """PUBLISH (§3.3).

    ``packet_id`` is None exactly when ``qos`` is 0. In MQTT 5 the topic may be empty when the
    properties carry a ``topic_alias``; the session resolves aliases, not the codec.

    A decoded ``payload`` is a memoryview into the decoder's receive buffer: see
    :class:`ftserver.mqtt.decoder.Decoder` for how long it stays valid.
    """

    topic: str
    payload: Payload = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: Properties = field(default_factory=_no_properties)

    packet_type = PacketType.PUBLISH


@dataclass(slots=True)
class Puback:
    """PUBACK (§3.4). In 3.1.1 only the packet id exists on the wire."""

    packet_id: int
    reason_code: int = 0
    properties: Properties = field(default_factory=_no_properties)

    packet_type = PacketType.PUBACK


@dataclass(slots=True)
class Pubrec:
    """PUBREC (§3.5)."""

    packet_id: int
    reason_code: int = 0
    properties: Properties = field(default_factory=_no_properties)

    packet_type = PacketType.PUBREC


@dataclass(slots=True)
class Pubrel:
    """PUBREL (§3.6)."""

    packet_id: int
    reason_code: int = 0
    properties: Properties = field(default_factory=_no_properties)

    packet_type = PacketType.PUBREL


@dataclass(slots=True)
class Pubcomp:
    """PUBCOMP (§3.7)."""

    packet_id: int
    reason_code: int = 0
    properties: Properties = field(default_factory=_no_properties)

    packet_type = PacketType.PUBCOMP


@dataclass(frozen=True, slots=True)
class SubscriptionOptions:
    """The options byte that follows each topic filter in SUBSCRIBE (§3.8.3.1).

    3.1.1 has only ``qos``; the other fields keep their defaults there.
    """

    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@dataclass(slots=True)
class Subscribe:
    """SUBSCRIBE (§3.8): at least one (topic filter, options) pair."""

    packet_id: int
    subscriptions: list[tuple[str, SubscriptionOptions]]
    properties: Properties = field(default_factory=_no_properties)

    packet_type = PacketType.SUBSCRIBE


@dataclass(slots=True)
class Suback:
    """SUBACK (§3.9): one reason code (3.1.1: return code) per requested filter."""

    packet_id: int
    reason_codes: list[int]
    properties: Properties = field(default_factory=_no_properties)

    packet_type = PacketType.SUBACK


@dataclass(slots=True)
class Unsubscribe:
    """UNSUBSCRIBE (§3.10): at least one topic filter."""

    packet_id: int
    topic_filters: list[str]
    properties: Properties = field(default_factory=_no_properties)

    packet_type = PacketType.UNSUBSCRIBE


@dataclass(slots=True)
class Unsuback:
    """UNSUBACK (§3.11). 3.1.1 has no reason codes: ``reason_codes`` is then empty."""

    packet_id: int
    reason_codes: list[int] = field(default_factory=list)
    properties: Properties = field(default_factory=_no_properties)

    packet_type = PacketType.UNSUBACK


@dataclass(slots=True)
class Pingreq:
    """PINGREQ (§3.12)."""

    packet_type = PacketType.PINGREQ


@dataclass(slots=True)
class Pingresp:
    """PINGRESP (§3.13)."""

    packet_type = PacketType.PINGRESP


@dataclass(slots=True)
class Disconnect:
    """DISCONNECT (§3.14). In 3.1.1 it has no fields and only the Client sends it."""

    reason_code: int = 0
    properties: Properties = field(default_factory=_no_properties)

    packet_type = PacketType.DISCONNECT


@dataclass(slots=True)
class Auth:
    """AUTH (§3.15), MQTT 5 only."""

    reason_code: int = 0
    properties: Properties = field(default_factory=_no_properties)

    packet_type = PacketType.AUTH


Packet: TypeAlias = (
    Connect
    | Connack
    | Publish
    | Puback
    | Pubrec
    | Pubrel
    | Pubcomp
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
    | Auth
)

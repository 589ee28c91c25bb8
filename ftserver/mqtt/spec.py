"""The MQTT 3.1.1 and 5.0 specification tables, as data.

Packet types, fixed-header flags, reason codes and the MQTT 5 property table live here and
nowhere else; the codec and the session read them instead of repeating literals. References:
OASIS MQTT Version 3.1.1 (2014) and MQTT Version 5.0 (2019).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

#: Protocol level byte of MQTT 3.1.1 (CONNECT variable header).
MQTT_V311: Final = 4
#: Protocol level byte of MQTT 5.0.
MQTT_V5: Final = 5
#: Protocol levels this codec decodes and encodes.
SUPPORTED_PROTOCOL_LEVELS: Final = frozenset({MQTT_V311, MQTT_V5})
#: The protocol name both supported levels carry in CONNECT (MQTT-3.1.2-1).
PROTOCOL_NAME: Final = "MQTT"

#: Largest value of a Variable Byte Integer (four bytes, §1.5.5 / §2.2.3).
MAX_VARINT: Final = 268_435_455
#: Largest packet the wire format can express: 1 type byte + 4 length bytes + MAX_VARINT.
MAX_PACKET_SIZE: Final = 1 + 4 + MAX_VARINT
#: Largest UTF-8 string, binary data or topic (two-byte length prefix, MQTT-4.7.3-3).
MAX_STRING: Final = 65_535
#: Largest packet identifier, topic alias, receive maximum (two-byte integers).
MAX_U16: Final = 0xFFFF
#: Largest four-byte integer property (expiry intervals, maximum packet size).
MAX_U32: Final = 0xFFFF_FFFF


class PacketType(enum.IntEnum):
    """Control packet types: the high nibble of the first byte (§2.1.2)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15  # MQTT 5 only; reserved in 3.1.1


#: Required low nibble of the first byte for every type but PUBLISH (MQTT-2.1.3-1 in 5.0,
#: MQTT-2.2.2-1 in 3.1.1). PUBLISH carries DUP, QoS and RETAIN there instead.
FIXED_HEADER_FLAGS: Final[MappingProxyType[PacketType, int]] = MappingProxyType(
    {
        PacketType.CONNECT: 0b0000,
        PacketType.CONNACK: 0b0000,
        PacketType.PUBACK: 0b0000,
        PacketType.PUBREC: 0b0000,
        PacketType.PUBREL: 0b0010,
        PacketType.PUBCOMP: 0b0000,
        PacketType.SUBSCRIBE: 0b0010,
        PacketType.SUBACK: 0b0000,
        PacketType.UNSUBSCRIBE: 0b0010,
        PacketType.UNSUBACK: 0b0000,
        PacketType.PINGREQ: 0b0000,
        PacketType.PINGRESP: 0b0000,
        PacketType.DISCONNECT: 0b0000,
        PacketType.AUTH: 0b0000,
    }
)

#: Packet types a Client may send (§2.1.2 "Direction of flow").
SENT_BY_CLIENT: Final = frozenset(
    {
        PacketType.CONNECT,
        PacketType.PUBLISH,
        PacketType.PUBACK,
        PacketType.PUBREC,
        PacketType.PUBREL,
        PacketType.PUBCOMP,
        PacketType.SUBSCRIBE,
        PacketType.UNSUBSCRIBE,
        PacketType.PINGREQ,
        PacketType.DISCONNECT,
        PacketType.AUTH,
    }
)
#: Packet types a Server may send. In 3.1.1 DISCONNECT and AUTH are not among them.
SENT_BY_SERVER: Final = frozenset(
    {
        PacketType.CONNACK,
        PacketType.PUBLISH,
        PacketType.PUBACK,
        PacketType.PUBREC,
        PacketType.PUBREL,
        PacketType.PUBCOMP,
        PacketType.SUBACK,
        PacketType.UNSUBACK,
        PacketType.PINGRESP,
        PacketType.DISCONNECT,
        PacketType.AUTH,
    }
)


class ReasonCode(enum.IntEnum):
    """Every MQTT 5 reason code (§2.4). Codes >= 0x80 are failures.

    Several names share a value (0x00 is Success, Normal disconnection and Granted QoS 0);
    the aliases are kept so that each call site reads as the spec does.
    """

    SUCCESS = 0x00
    NORMAL_DISCONNECTION = 0x00
    GRANTED_QOS_0 = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL_MESSAGE = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    RE_AUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USERNAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_ID_IN_USE = 0x91
    PACKET_ID_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2


_R = ReasonCode
_PUBACK_CODES = frozenset(
    {
        _R.SUCCESS,
        _R.NO_MATCHING_SUBSCRIBERS,
        _R.UNSPECIFIED_ERROR,
        _R.IMPLEMENTATION_SPECIFIC_ERROR,
        _R.NOT_AUTHORIZED,
        _R.TOPIC_NAME_INVALID,
        _R.PACKET_ID_IN_USE,
        _R.QUOTA_EXCEEDED,
        _R.PAYLOAD_FORMAT_INVALID,
    }
)
_PUBREL_CODES = frozenset({_R.SUCCESS, _R.PACKET_ID_NOT_FOUND})

#: MQTT 5 reason codes each packet type may carry (§2.4 table 2-6 and the tables of chapter 3).
REASON_CODES: Final[MappingProxyType[PacketType, frozenset[int]]] = MappingProxyType(
    {
        PacketType.CONNACK: frozenset(
            {
                _R.SUCCESS,
                _R.UNSPECIFIED_ERROR,
                _R.MALFORMED_PACKET,
                _R.PROTOCOL_ERROR,
                _R.IMPLEMENTATION_SPECIFIC_ERROR,
                _R.UNSUPPORTED_PROTOCOL_VERSION,
                _R.CLIENT_IDENTIFIER_NOT_VALID,
                _R.BAD_USERNAME_OR_PASSWORD,
                _R.NOT_AUTHORIZED,
                _R.SERVER_UNAVAILABLE,
                _R.SERVER_BUSY,
                _R.BANNED,
                _R.BAD_AUTHENTICATION_METHOD,
                _R.TOPIC_NAME_INVALID,
                _R.PACKET_TOO_LARGE,
                _R.QUOTA_EXCEEDED,
                _R.PAYLOAD_FORMAT_INVALID,
                _R.RETAIN_NOT_SUPPORTED,
                _R.QOS_NOT_SUPPORTED,
                _R.USE_ANOTHER_SERVER,
                _R.SERVER_MOVED,
                _R.CONNECTION_RATE_EXCEEDED,
            }
        ),
        PacketType.PUBACK: _PUBACK_CODES,
        PacketType.PUBREC: _PUBACK_CODES,
        PacketType.PUBREL: _PUBREL_CODES,
        PacketType.PUBCOMP: _PUBREL_CODES,
        PacketType.SUBACK: frozenset(
            {
                _R.GRANTED_QOS_0,
                _R.GRANTED_QOS_1,
                _R.GRANTED_QOS_2,
                _R.UNSPECIFIED_ERROR,
                _R.IMPLEMENTATION_SPECIFIC_ERROR,
                _R.NOT_AUTHORIZED,
                _R.TOPIC_FILTER_INVALID,
                _R.PACKET_ID_IN_USE,
                _R.QUOTA_EXCEEDED,
                _R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                _R.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                _R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
            }
        ),
        PacketType.UNSUBACK: frozenset(
            {
                _R.SUCCESS,
                _R.NO_SUBSCRIPTION_EXISTED,
                _R.UNSPECIFIED_ERROR,
                _R.IMPLEMENTATION_SPECIFIC_ERROR,
                _R.NOT_AUTHORIZED,
                _R.TOPIC_FILTER_INVALID,
                _R.PACKET_ID_IN_USE,
            }
        ),
        # Table 3-10, plus 0x8C: Table 2-6 lists Bad authentication method for DISCONNECT too
        # (the two tables disagree), so a peer may send it after a failed re-authentication.
        PacketType.DISCONNECT: frozenset(
            {
                _R.NORMAL_DISCONNECTION,
                _R.DISCONNECT_WITH_WILL_MESSAGE,
                _R.UNSPECIFIED_ERROR,
                _R.MALFORMED_PACKET,
                _R.PROTOCOL_ERROR,
                _R.IMPLEMENTATION_SPECIFIC_ERROR,
                _R.NOT_AUTHORIZED,
                _R.SERVER_BUSY,
                _R.SERVER_SHUTTING_DOWN,
                _R.BAD_AUTHENTICATION_METHOD,
                _R.KEEP_ALIVE_TIMEOUT,
                _R.SESSION_TAKEN_OVER,
                _R.TOPIC_FILTER_INVALID,
                _R.TOPIC_NAME_INVALID,
                _R.RECEIVE_MAXIMUM_EXCEEDED,
                _R.TOPIC_ALIAS_INVALID,
                _R.PACKET_TOO_LARGE,
                _R.MESSAGE_RATE_TOO_HIGH,
                _R.QUOTA_EXCEEDED,
                _R.ADMINISTRATIVE_ACTION,
                _R.PAYLOAD_FORMAT_INVALID,
                _R.RETAIN_NOT_SUPPORTED,
                _R.QOS_NOT_SUPPORTED,
                _R.USE_ANOTHER_SERVER,
                _R.SERVER_MOVED,
                _R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                _R.CONNECTION_RATE_EXCEEDED,
                _R.MAXIMUM_CONNECT_TIME,
                _R.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                _R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
            }
        ),
        PacketType.AUTH: frozenset({_R.SUCCESS, _R.CONTINUE_AUTHENTICATION, _R.RE_AUTHENTICATE}),
    }
)


class ConnackReturnCode(enum.IntEnum):
    """MQTT 3.1.1 CONNACK return codes (§3.2.2.3, table 3.1)."""

    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USERNAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


#: The MQTT 3.1.1 CONNACK return code for an MQTT 5 CONNACK reason code. A code that is not
#: here (Malformed Packet, Protocol Error) has no 3.1.1 equivalent: 3.1.1 closes the
#: connection without a CONNACK in those cases.
V3_CONNACK_RETURN_CODES: Final[MappingProxyType[int, int]] = MappingProxyType(
    {
        _R.SUCCESS: ConnackReturnCode.ACCEPTED,
        _R.UNSUPPORTED_PROTOCOL_VERSION: ConnackReturnCode.UNACCEPTABLE_PROTOCOL_VERSION,
        _R.CLIENT_IDENTIFIER_NOT_VALID: ConnackReturnCode.IDENTIFIER_REJECTED,
        _R.SERVER_UNAVAILABLE: ConnackReturnCode.SERVER_UNAVAILABLE,
        _R.SERVER_BUSY: ConnackReturnCode.SERVER_UNAVAILABLE,
        _R.USE_ANOTHER_SERVER: ConnackReturnCode.SERVER_UNAVAILABLE,
        _R.SERVER_MOVED: ConnackReturnCode.SERVER_UNAVAILABLE,
        _R.CONNECTION_RATE_EXCEEDED: ConnackReturnCode.SERVER_UNAVAILABLE,
        _R.QUOTA_EXCEEDED: ConnackReturnCode.SERVER_UNAVAILABLE,
        _R.UNSPECIFIED_ERROR: ConnackReturnCode.SERVER_UNAVAILABLE,
        _R.IMPLEMENTATION_SPECIFIC_ERROR: ConnackReturnCode.SERVER_UNAVAILABLE,
        _R.BAD_USERNAME_OR_PASSWORD: ConnackReturnCode.BAD_USERNAME_OR_PASSWORD,
        _R.NOT_AUTHORIZED: ConnackReturnCode.NOT_AUTHORIZED,
        _R.BANNED: ConnackReturnCode.NOT_AUTHORIZED,
        _R.BAD_AUTHENTICATION_METHOD: ConnackReturnCode.NOT_AUTHORIZED,
    }
)

#: MQTT 3.1.1 SUBACK return codes (§3.9.3): granted QoS 0-2 or 0x80 failure.
V3_SUBACK_RETURN_CODES: Final = frozenset({0x00, 0x01, 0x02, 0x80})
#: The single 3.1.1 SUBACK failure code every MQTT 5 failure (>= 0x80) maps to.
V3_SUBACK_FAILURE: Final = 0x80


class PropertyType(enum.Enum):
    """Wire encodings of MQTT 5 property values (§1.5, §2.2.2.2)."""

    BYTE = "byte"
    TWO_BYTE_INT = "two-byte integer"
    FOUR_BYTE_INT = "four-byte integer"
    VARINT = "variable byte integer"
    UTF8 = "UTF-8 encoded string"
    BINARY = "binary data"
    UTF8_PAIR = "UTF-8 string pair"


class PropertyId(enum.IntEnum):
    """MQTT 5 property identifiers (§2.2.2.2, table 2-4)."""

    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


class ValueRule(enum.Enum):
    """Constraints on a property value beyond its wire type; breaking one is a Protocol Error."""

    ANY = "any"
    BOOLEAN = "0 or 1"  # §3.1.2.11.x, §3.2.2.3.x, §3.3.2.3.2 (payload format indicator)
    NONZERO = "not 0"  # receive maximum, maximum packet size, topic alias, subscription id
    TOPIC_NAME = "a topic name without wildcards"  # response topic, MQTT-3.3.2-14


@dataclass(frozen=True, slots=True)
class PropertySpec:
    """One row of the MQTT 5 property table."""

    id: PropertyId
    #: the key in :class:`ftserver.mqtt.packets.Properties`
    key: str
    type: PropertyType
    #: packet types whose property set may hold it
    packets: frozenset[PacketType]
    #: whether the Will Properties in CONNECT may hold it
    will: bool = False
    #: packet types in which it may appear more than once (the value is then a list)
    repeatable_in: frozenset[PacketType] = frozenset()
    rule: ValueRule = ValueRule.ANY

    @property
    def repeatable(self) -> bool:
        """True when the :class:`Properties` value is a list (it may repeat somewhere)."""
        return bool(self.repeatable_in)


_P = PacketType
_T = PropertyType
_ACKS = frozenset({_P.PUBACK, _P.PUBREC, _P.PUBREL, _P.PUBCOMP})
_ALL_V5 = frozenset(set(PacketType) - {_P.PINGREQ, _P.PINGRESP})

#: The property table, in identifier order.
PROPERTIES: Final[tuple[PropertySpec, ...]] = (
    PropertySpec(
        PropertyId.PAYLOAD_FORMAT_INDICATOR,
        "payload_format_indicator",
        _T.BYTE,
        frozenset({_P.PUBLISH}),
        will=True,
        rule=ValueRule.BOOLEAN,
    ),
    PropertySpec(
        PropertyId.MESSAGE_EXPIRY_INTERVAL,
        "message_expiry_interval",
        _T.FOUR_BYTE_INT,
        frozenset({_P.PUBLISH}),
        will=True,
    ),
    PropertySpec(
        PropertyId.CONTENT_TYPE, "content_type", _T.UTF8, frozenset({_P.PUBLISH}), will=True
    ),
    PropertySpec(
        PropertyId.RESPONSE_TOPIC,
        "response_topic",
        _T.UTF8,
        frozenset({_P.PUBLISH}),
        will=True,
        rule=ValueRule.TOPIC_NAME,
    ),
    PropertySpec(
        PropertyId.CORRELATION_DATA,
        "correlation_data",
        _T.BINARY,
        frozenset({_P.PUBLISH}),
        will=True,
    ),
    PropertySpec(
        PropertyId.SUBSCRIPTION_IDENTIFIER,
        "subscription_identifiers",
        _T.VARINT,
        frozenset({_P.PUBLISH, _P.SUBSCRIBE}),
        repeatable_in=frozenset({_P.PUBLISH}),
        rule=ValueRule.NONZERO,
    ),
    PropertySpec(
        PropertyId.SESSION_EXPIRY_INTERVAL,
        "session_expiry_interval",
        _T.FOUR_BYTE_INT,
        frozenset({_P.CONNECT, _P.CONNACK, _P.DISCONNECT}),
    ),
    PropertySpec(
        PropertyId.ASSIGNED_CLIENT_IDENTIFIER,
        "assigned_client_identifier",
        _T.UTF8,
        frozenset({_P.CONNACK}),
    ),
    PropertySpec(
        PropertyId.SERVER_KEEP_ALIVE,
        "server_keep_alive",
        _T.TWO_BYTE_INT,
        frozenset({_P.CONNACK}),
    ),
    PropertySpec(
        PropertyId.AUTHENTICATION_METHOD,
        "authentication_method",
        _T.UTF8,
        frozenset({_P.CONNECT, _P.CONNACK, _P.AUTH}),
    ),
    PropertySpec(
        PropertyId.AUTHENTICATION_DATA,
        "authentication_data",
        _T.BINARY,
        frozenset({_P.CONNECT, _P.CONNACK, _P.AUTH}),
    ),
    PropertySpec(
        PropertyId.REQUEST_PROBLEM_INFORMATION,
        "request_problem_information",
        _T.BYTE,
        frozenset({_P.CONNECT}),
        rule=ValueRule.BOOLEAN,
    ),
    PropertySpec(
        PropertyId.WILL_DELAY_INTERVAL,
        "will_delay_interval",
        _T.FOUR_BYTE_INT,
        frozenset(),
        will=True,
    ),
    PropertySpec(
        PropertyId.REQUEST_RESPONSE_INFORMATION,
        "request_response_information",
        _T.BYTE,
        frozenset({_P.CONNECT}),
        rule=ValueRule.BOOLEAN,
    ),
    PropertySpec(
        PropertyId.RESPONSE_INFORMATION,
        "response_information",
        _T.UTF8,
        frozenset({_P.CONNACK}),
    ),
    PropertySpec(
        PropertyId.SERVER_REFERENCE,
        "server_reference",
        _T.UTF8,
        frozenset({_P.CONNACK, _P.DISCONNECT}),
    ),
    PropertySpec(
        PropertyId.REASON_STRING,
        "reason_string",
        _T.UTF8,
        frozenset({_P.CONNACK, _P.SUBACK, _P.UNSUBACK, _P.DISCONNECT, _P.AUTH}) | _ACKS,
    ),
    PropertySpec(
        PropertyId.RECEIVE_MAXIMUM,
        "receive_maximum",
        _T.TWO_BYTE_INT,
        frozenset({_P.CONNECT, _P.CONNACK}),
        rule=ValueRule.NONZERO,
    ),
    PropertySpec(
        PropertyId.TOPIC_ALIAS_MAXIMUM,
        "topic_alias_maximum",
        _T.TWO_BYTE_INT,
        frozenset({_P.CONNECT, _P.CONNACK}),
    ),
    PropertySpec(
        PropertyId.TOPIC_ALIAS,
        "topic_alias",
        _T.TWO_BYTE_INT,
        frozenset({_P.PUBLISH}),
        rule=ValueRule.NONZERO,
    ),
    PropertySpec(
        PropertyId.MAXIMUM_QOS,
        "maximum_qos",
        _T.BYTE,
        frozenset({_P.CONNACK}),
        rule=ValueRule.BOOLEAN,
    ),
    PropertySpec(
        PropertyId.RETAIN_AVAILABLE,
        "retain_available",
        _T.BYTE,
        frozenset({_P.CONNACK}),
        rule=ValueRule.BOOLEAN,
    ),
    PropertySpec(
        PropertyId.USER_PROPERTY,
        "user_properties",
        _T.UTF8_PAIR,
        _ALL_V5,
        will=True,
        repeatable_in=_ALL_V5,
    ),
    PropertySpec(
        PropertyId.MAXIMUM_PACKET_SIZE,
        "maximum_packet_size",
        _T.FOUR_BYTE_INT,
        frozenset({_P.CONNECT, _P.CONNACK}),
        rule=ValueRule.NONZERO,
    ),
    PropertySpec(
        PropertyId.WILDCARD_SUBSCRIPTION_AVAILABLE,
        "wildcard_subscription_available",
        _T.BYTE,
        frozenset({_P.CONNACK}),
        rule=ValueRule.BOOLEAN,
    ),
    PropertySpec(
        PropertyId.SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        "subscription_identifier_available",
        _T.BYTE,
        frozenset({_P.CONNACK}),
        rule=ValueRule.BOOLEAN,
    ),
    PropertySpec(
        PropertyId.SHARED_SUBSCRIPTION_AVAILABLE,
        "shared_subscription_available",
        _T.BYTE,
        frozenset({_P.CONNACK}),
        rule=ValueRule.BOOLEAN,
    ),
)

#: Property table rows by identifier.
PROPERTY_BY_ID: Final[MappingProxyType[int, PropertySpec]] = MappingProxyType(
    {p.id: p for p in PROPERTIES}
)
#: Property table rows by :class:`Properties` key.
PROPERTY_BY_KEY: Final[MappingProxyType[str, PropertySpec]] = MappingProxyType(
    {p.key: p for p in PROPERTIES}
)
#: Identifiers allowed in each packet type's property set.
PROPERTIES_ALLOWED: Final[MappingProxyType[PacketType, frozenset[int]]] = MappingProxyType(
    {t: frozenset(p.id for p in PROPERTIES if t in p.packets) for t in PacketType}
)
#: Identifiers allowed in the Will Properties of CONNECT.
WILL_PROPERTIES_ALLOWED: Final[frozenset[int]] = frozenset(p.id for p in PROPERTIES if p.will)

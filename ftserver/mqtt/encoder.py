"""The MQTT 3.1.1 / 5.0 encoder: one ``encode_*`` function per packet, and :func:`encode`.

Each function builds the bytes of its packet for either protocol level. They check that a
packet is representable (ranges, lengths, properties allowed in that packet) and raise
``ValueError`` for caller bugs; they do not police semantics, so tests can build packets that
the decoder must refuse. What 3.1.1 cannot express (reason codes, properties) is left out or
mapped to its 3.1.1 equivalent, as each function says.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

from ftserver.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from ftserver.mqtt.spec import (
    MAX_STRING,
    MAX_U16,
    MAX_U32,
    MAX_VARINT,
    MQTT_V5,
    MQTT_V311,
    PROPERTIES_ALLOWED,
    PROPERTY_BY_KEY,
    PROTOCOL_NAME,
    REASON_CODES,
    V3_CONNACK_RETURN_CODES,
    V3_SUBACK_FAILURE,
    V3_SUBACK_RETURN_CODES,
    WILL_PROPERTIES_ALLOWED,
    ConnackReturnCode,
    PacketType,
    PropertySpec,
    PropertyType,
)

__all__ = [
    "PINGREQ_BYTES",
    "PINGRESP_BYTES",
    "encode",
    "encode_auth",
    "encode_connack",
    "encode_connect",
    "encode_disconnect",
    "encode_pingreq",
    "encode_pingresp",
    "encode_puback",
    "encode_pubcomp",
    "encode_publish",
    "encode_publish_header",
    "encode_pubrec",
    "encode_pubrel",
    "encode_suback",
    "encode_subscribe",
    "encode_unsuback",
    "encode_unsubscribe",
]

#: The whole of a PINGREQ and of a PINGRESP (both protocol levels).
PINGREQ_BYTES: Final = b"\xc0\x00"
PINGRESP_BYTES: Final = b"\xd0\x00"

_BYTES: Final = tuple(bytes((i,)) for i in range(256))
_U16: Final = struct.Struct(">H").pack
_U32: Final = struct.Struct(">I").pack
_ACK2: Final = struct.Struct(">BBH").pack  # first byte, Remaining Length 2, packet id
_ACK3: Final = struct.Struct(">BBHB").pack  # ... Remaining Length 3, packet id, reason code


def _check_level(protocol_level: int) -> bool:
    """True for MQTT 5; ValueError for a level this codec does not speak."""
    if protocol_level == MQTT_V5:
        return True
    if protocol_level == MQTT_V311:
        return False
    raise ValueError(f"unsupported protocol level {protocol_level}")


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _BYTES[value]
    if not 0 <= value <= MAX_VARINT:
        raise ValueError(f"{value} does not fit a Variable Byte Integer")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _int(value: object, limit: int, what: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= limit:
        raise ValueError(f"{what} must be an integer in [0, {limit}], not {value!r}")
    return value


def _packet_id(value: int | None, what: str) -> bytes:
    if value is None or not 1 <= value <= MAX_U16:
        raise ValueError(f"{what} needs a packet identifier in [1, 65535], not {value!r}")
    return _U16(value)


def _string(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a str, not {type(text).__name__}")
    data = text.encode()  # UnicodeEncodeError (a ValueError) for lone surrogates
    if len(data) > MAX_STRING:
        raise ValueError(f"{what} is {len(data)} bytes of UTF-8, over {MAX_STRING}")
    return _U16(len(data)) + data


def _binary(data: object, what: str) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"{what} must be bytes, not {type(data).__name__}")
    raw = bytes(data)
    if len(raw) > MAX_STRING:
        raise ValueError(f"{what} is {len(raw)} bytes, over {MAX_STRING}")
    return _U16(len(raw)) + raw


def _property(spec: PropertySpec, value: object) -> bytes:
    ident = _BYTES[spec.id]
    kind = spec.type
    key = spec.key
    if kind is PropertyType.BYTE:
        return ident + _BYTES[_int(value, 0xFF, key)]
    if kind is PropertyType.TWO_BYTE_INT:
        return ident + _U16(_int(value, MAX_U16, key))
    if kind is PropertyType.FOUR_BYTE_INT:
        return ident + _U32(_int(value, MAX_U32, key))
    if kind is PropertyType.VARINT:
        return ident + _varint(_int(value, MAX_VARINT, key))
    if kind is PropertyType.UTF8:
        return ident + _string(value, key)
    if kind is PropertyType.BINARY:
        return ident + _binary(value, key)
    if not isinstance(value, tuple) or len(value) != 2:
        raise ValueError(f"{key} entries must be (name, value) pairs, not {value!r}")
    return ident + _string(value[0], f"{key} name") + _string(value[1], f"{key} value")


def _properties(props: Properties, packet_type: PacketType | None) -> bytes:
    """A property set with its length; ``packet_type`` None means Will Properties."""
    if not props:
        return b"\x00"
    allowed = WILL_PROPERTIES_ALLOWED if packet_type is None else PROPERTIES_ALLOWED[packet_type]
    parts: list[bytes] = []
    for key, value in props.items():
        spec = PROPERTY_BY_KEY.get(key)
        if spec is None:
            raise ValueError(f"unknown MQTT 5 property {key!r}")
        if spec.id not in allowed:
            where = "Will Properties" if packet_type is None else packet_type.name
            raise ValueError(f"property {key} is not allowed in {where}")
        if spec.repeatable_in:
            if not isinstance(value, list):
                raise ValueError(f"property {key} must be a list")
            if len(value) > 1 and packet_type is not None and packet_type not in spec.repeatable_in:
                raise ValueError(f"property {key} may appear once in {packet_type.name}")
            parts.extend(_property(spec, item) for item in value)
        else:
            parts.append(_property(spec, value))
    body = b"".join(parts)
    return _varint(len(body)) + body


def _frame(first: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return _BYTES[first] + _varint(len(body)) + body


def _reason(ptype: PacketType, code: int) -> bytes:
    if code not in REASON_CODES[ptype]:
        raise ValueError(f"0x{code:02X} is not a {ptype.name} reason code")
    return _BYTES[code]


def encode_connect(packet: Connect, protocol_level: int | None = None) -> bytes:
    """CONNECT, at ``packet.protocol_level`` (``protocol_level``, if given, must match)."""
    level = packet.protocol_level
    if protocol_level is not None and protocol_level != level:
        raise ValueError(f"CONNECT of level {level} encoded for level {protocol_level}")
    v5 = _check_level(level)
    flags = 0x02 if packet.clean_start else 0
    will = packet.will
    if will is not None:
        flags |= 0x04 | (_int(will.qos, 2, "will qos") << 3) | (0x20 if will.retain else 0)
    if packet.username is not None:
        flags |= 0x80
    if packet.password is not None:
        if packet.username is None and not v5:
            raise ValueError("MQTT-3.1.2-22: a 3.1.1 password needs a user name")
        flags |= 0x40
    parts = [
        _string(PROTOCOL_NAME, "protocol name"),
        _BYTES[level],
        _BYTES[flags],
        _U16(_int(packet.keep_alive, MAX_U16, "keep alive")),
    ]
    if v5:
        parts.append(_properties(packet.properties, PacketType.CONNECT))
    parts.append(_string(packet.client_id, "client identifier"))
    if will is not None:
        if v5:
            parts.append(_properties(will.properties, None))
        parts.append(_string(will.topic, "will topic"))
        parts.append(_binary(will.payload, "will payload"))
    if packet.username is not None:
        parts.append(_string(packet.username, "user name"))
    if packet.password is not None:
        parts.append(_binary(packet.password, "password"))
    return _frame(0x10, *parts)


def encode_connack(packet: Connack, protocol_level: int) -> bytes:
    """CONNACK. For level 4 a reason code above 5 is mapped to the 3.1.1 return code
    (:data:`~ftserver.mqtt.spec.V3_CONNACK_RETURN_CODES`); one with no 3.1.1 equivalent
    (Malformed Packet, Protocol Error) raises ValueError: close without a CONNACK instead."""
    flags = 1 if packet.session_present else 0
    code = packet.reason_code
    if _check_level(protocol_level):
        return _frame(
            0x20,
            _BYTES[flags],
            _reason(PacketType.CONNACK, code),
            _properties(packet.properties, PacketType.CONNACK),
        )
    if code > ConnackReturnCode.NOT_AUTHORIZED:
        mapped = V3_CONNACK_RETURN_CODES.get(code)
        if mapped is None:
            raise ValueError(f"reason code 0x{code:02X} has no MQTT 3.1.1 CONNACK return code")
        code = mapped
    return bytes((0x20, 2, flags, code))


def encode_publish_header(packet: Publish, protocol_level: int) -> bytes:
    """Fixed and variable header of a PUBLISH: send the payload after it, uncopied."""
    v5 = _check_level(protocol_level)
    qos = packet.qos
    payload = packet.payload
    size = payload.nbytes if isinstance(payload, memoryview) else len(payload)
    first = 0x30 | (qos << 1)
    if packet.retain:
        first |= 0x01
    if qos == 0:
        if packet.packet_id is not None or packet.dup:
            raise ValueError("a QoS 0 PUBLISH has no packet identifier and no DUP flag")
        var = _string(packet.topic, "topic name")
    elif qos in (1, 2):
        if packet.dup:
            first |= 0x08
        var = _string(packet.topic, "topic name") + _packet_id(packet.packet_id, "PUBLISH")
    else:
        raise ValueError(f"PUBLISH QoS must be 0, 1 or 2, not {qos!r}")
    if v5:
        var += _properties(packet.properties, PacketType.PUBLISH)
    return _BYTES[first] + _varint(len(var) + size) + var


def encode_publish(packet: Publish, protocol_level: int) -> bytes:
    """A whole PUBLISH (header plus a copy of the payload)."""
    return encode_publish_header(packet, protocol_level) + packet.payload


def _ack(
    ptype: PacketType, first: int, packet: Puback | Pubrec | Pubrel | Pubcomp, level: int
) -> bytes:
    packet_id = packet.packet_id
    if not 1 <= packet_id <= MAX_U16:
        raise ValueError(f"{ptype.name} needs a packet identifier in [1, 65535]")
    if not _check_level(level):
        return _ACK2(first, 2, packet_id)
    code = packet.reason_code
    if packet.properties:
        return _frame(
            first, _U16(packet_id), _reason(ptype, code), _properties(packet.properties, ptype)
        )
    if code:  # MQTT 5 §3.4.2.1: Reason Code 0 and no properties may be omitted
        _reason(ptype, code)
        return _ACK3(first, 3, packet_id, code)
    return _ACK2(first, 2, packet_id)


def encode_puback(packet: Puback, protocol_level: int) -> bytes:
    """PUBACK; level 4 sends only the packet id (the reason code cannot be expressed)."""
    return _ack(PacketType.PUBACK, 0x40, packet, protocol_level)


def encode_pubrec(packet: Pubrec, protocol_level: int) -> bytes:
    """PUBREC; level 4 sends only the packet id."""
    return _ack(PacketType.PUBREC, 0x50, packet, protocol_level)


def encode_pubrel(packet: Pubrel, protocol_level: int) -> bytes:
    """PUBREL; level 4 sends only the packet id."""
    return _ack(PacketType.PUBREL, 0x62, packet, protocol_level)


def encode_pubcomp(packet: Pubcomp, protocol_level: int) -> bytes:
    """PUBCOMP; level 4 sends only the packet id."""
    return _ack(PacketType.PUBCOMP, 0x70, packet, protocol_level)


def encode_subscribe(packet: Subscribe, protocol_level: int) -> bytes:
    """SUBSCRIBE; level 4 sends only the QoS of each subscription's options."""
    v5 = _check_level(protocol_level)
    parts = [_packet_id(packet.packet_id, "SUBSCRIBE")]
    if v5:
        parts.append(_properties(packet.properties, PacketType.SUBSCRIBE))
    for topic_filter, options in packet.subscriptions:
        parts.append(_string(topic_filter, "topic filter"))
        byte = _int(options.qos, 2, "subscription qos")
        if v5:
            byte |= _int(options.retain_handling, 2, "retain handling") << 4
            if options.no_local:
                byte |= 0x04
            if options.retain_as_published:
                byte |= 0x08
        parts.append(_BYTES[byte])
    return _frame(0x82, *parts)


def encode_suback(packet: Suback, protocol_level: int) -> bytes:
    """SUBACK. For level 4 every failure code (>= 0x80) becomes the 3.1.1 failure 0x80."""
    parts = [_packet_id(packet.packet_id, "SUBACK")]
    if _check_level(protocol_level):
        parts.append(_properties(packet.properties, PacketType.SUBACK))
        parts.extend(_reason(PacketType.SUBACK, code) for code in packet.reason_codes)
    else:
        for code in packet.reason_codes:
            if code >= 0x80:
                code = V3_SUBACK_FAILURE
            elif code not in V3_SUBACK_RETURN_CODES:
                raise ValueError(f"0x{code:02X} is not a SUBACK return code")
            parts.append(_BYTES[code])
    return _frame(0x90, *parts)


def encode_unsubscribe(packet: Unsubscribe, protocol_level: int) -> bytes:
    """UNSUBSCRIBE."""
    parts = [_packet_id(packet.packet_id, "UNSUBSCRIBE")]
    if _check_level(protocol_level):
        parts.append(_properties(packet.properties, PacketType.UNSUBSCRIBE))
    parts.extend(_string(topic_filter, "topic filter") for topic_filter in packet.topic_filters)
    return _frame(0xA2, *parts)


def encode_unsuback(packet: Unsuback, protocol_level: int) -> bytes:
    """UNSUBACK; level 4 sends only the packet id."""
    packet_id = _packet_id(packet.packet_id, "UNSUBACK")
    if not _check_level(protocol_level):
        return b"\xb0\x02" + packet_id
    return _frame(
        0xB0,
        packet_id,
        _properties(packet.properties, PacketType.UNSUBACK),
        *(_reason(PacketType.UNSUBACK, code) for code in packet.reason_codes),
    )


def encode_pingreq(packet: Pingreq | None = None, protocol_level: int = MQTT_V5) -> bytes:
    """PINGREQ (the same two bytes at both levels)."""
    return PINGREQ_BYTES


def encode_pingresp(packet: Pingresp | None = None, protocol_level: int = MQTT_V5) -> bytes:
    """PINGRESP (the same two bytes at both levels)."""
    return PINGRESP_BYTES


def _reason_only(
    ptype: PacketType, first: int, packet: Disconnect | Auth, protocol_level: int
) -> bytes:
    if not _check_level(protocol_level):
        if ptype == PacketType.AUTH:
            raise ValueError("AUTH does not exist in MQTT 3.1.1")
        return _BYTES[first] + b"\x00"
    code = packet.reason_code
    if packet.properties:
        return _frame(first, _reason(ptype, code), _properties(packet.properties, ptype))
    if not code:  # §3.14.2.1, §3.15.2.1: Reason Code 0 without properties may be omitted
        return _BYTES[first] + b"\x00"
    if ptype == PacketType.DISCONNECT:  # §3.14.2.2.1: Property Length may be omitted
        return _BYTES[first] + b"\x01" + _reason(ptype, code)
    return _BYTES[first] + b"\x02" + _reason(ptype, code) + b"\x00"


def encode_disconnect(packet: Disconnect, protocol_level: int) -> bytes:
    """DISCONNECT. In 3.1.1 only a Client sends it, and it carries nothing."""
    return _reason_only(PacketType.DISCONNECT, 0xE0, packet, protocol_level)


def encode_auth(packet: Auth, protocol_level: int) -> bytes:
    """AUTH (MQTT 5 only)."""
    return _reason_only(PacketType.AUTH, 0xF0, packet, protocol_level)


_ENCODERS: Final[dict[type, Callable[[Any, int], bytes]]] = {
    Connect: encode_connect,
    Connack: encode_connack,
    Publish: encode_publish,
    Puback: encode_puback,
    Pubrec: encode_pubrec,
    Pubrel: encode_pubrel,
    Pubcomp: encode_pubcomp,
    Subscribe: encode_subscribe,
    Suback: encode_suback,
    Unsubscribe: encode_unsubscribe,
    Unsuback: encode_unsuback,
    Pingreq: encode_pingreq,
    Pingresp: encode_pingresp,
    Disconnect: encode_disconnect,
    Auth: encode_auth,
}


def encode(packet: Packet, protocol_level: int) -> bytes:
    """The bytes of any packet at ``protocol_level`` (4 or 5)."""
    return _ENCODERS[type(packet)](packet, protocol_level)

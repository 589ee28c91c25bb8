"""Every check the decoder makes, each with input that breaks it.

Each case gives the bytes, the decoder's setup, the MQTT 5 reason code the error must carry and
the spec statement its message must name.
"""

from __future__ import annotations

from typing import Any

import pytest

from ftserver.mqtt.codec import (
    Decoder,
    MalformedPacket,
    PacketTooLarge,
    ProtocolError,
    UnsupportedProtocolVersion,
    encode,
)
from ftserver.mqtt.packets import Connect, Will
from ftserver.mqtt.spec import MQTT_V5, MQTT_V311, PacketType

MAX = 1 << 20
V5 = {"protocol_level": MQTT_V5}
V3 = {"protocol_level": MQTT_V311}
FRESH: dict[str, Any] = {}
CLIENT_V5 = {"protocol_level": MQTT_V5, "server": False}
CLIENT_V3 = {"protocol_level": MQTT_V311, "server": False}

MALFORMED = 0x81
PROTOCOL = 0x82
TOPIC_NAME_INVALID = 0x90


def decode_error(data: bytes, setup: dict[str, Any], max_packet_size: int = MAX) -> ProtocolError:
    decoder = Decoder(max_packet_size, **setup)
    decoder.feed(data)
    with pytest.raises(ProtocolError) as info:
        while decoder.next_packet() is not None:
            pass
    return info.value


def connect_bytes(**kw: Any) -> bytes:
    kw.setdefault("protocol_level", MQTT_V311)
    return encode(Connect("c", **kw), kw["protocol_level"])


def patched(data: bytes, old: str, new: str) -> bytes:
    old_b, new_b = bytes.fromhex(old), bytes.fromhex(new)
    assert data.count(old_b) == 1
    return data.replace(old_b, new_b)


CASES = [
    # -- fixed header and Remaining Length
    ("remaining length of 5 bytes", V5, "30 ff ff ff ff 01", MALFORMED, "MQTT-1.5.5-1"),
    ("remaining length not minimal", V5, "c0 80 00", MALFORMED, "MQTT-1.5.5-1"),
    ("packet type 0", V5, "00 00", MALFORMED, "§2.1.2"),
    ("AUTH in 3.1.1", V3, "f0 00", MALFORMED, "§2.1.2"),
    ("PUBLISH QoS 3", V5, "36 05 0001 61 00 01", MALFORMED, "MQTT-3.3.1-4"),
    ("PUBLISH QoS 0 with DUP", V5, "38 04 0001 61 00", MALFORMED, "MQTT-3.3.1-2"),
    ("PUBREL flags 0000", V5, "60 02 0001", MALFORMED, "MQTT-3.6.1-1"),
    ("SUBSCRIBE flags 0000", V5, "80 07 0001 00 0001 61 00", MALFORMED, "MQTT-3.8.1-1"),
    ("UNSUBSCRIBE flags 0000", V5, "a0 06 0001 00 0001 61", MALFORMED, "MQTT-3.10.1-1"),
    ("PUBACK flags 0001 (5.0)", V5, "41 02 0001", MALFORMED, "MQTT-2.1.3-1"),
    ("PUBACK flags 0001 (3.1.1)", V3, "41 02 0001", MALFORMED, "MQTT-2.2.2-1"),
    ("PINGREQ flags 1000", V3, "c8 00", MALFORMED, "MQTT-2.2.2-1"),
    ("DISCONNECT flags", V5, "e2 00", MALFORMED, "MQTT-3.14.1-1"),
    ("AUTH flags", V5, "f4 00", MALFORMED, "MQTT-3.15.1-1"),
    ("PINGREQ with a body", V5, "c0 01 00", MALFORMED, "PINGREQ with Remaining Length 1"),
    ("3.1.1 PUBACK of 3 bytes", V3, "40 03 0001 00", MALFORMED, "PUBACK with Remaining Length 3"),
    ("3.1.1 DISCONNECT with a body", V3, "e0 01 00", MALFORMED, "DISCONNECT with Remaining"),
    ("trailing bytes after DISCONNECT", V5, "e0 03 00 00 ff", MALFORMED, "follow the last field"),
    # -- connection order and direction
    ("first packet not CONNECT", FRESH, "c0 00", PROTOCOL, "MQTT-3.1.0-1"),
    ("PUBLISH before CONNECT", FRESH, "30 04 0001 61 78", PROTOCOL, "MQTT-3.1.0-1"),
    ("CONNACK from a client", V5, "20 03 00 00 00", PROTOCOL, "CONNACK is sent by a Server"),
    ("SUBACK from a client", V3, "90 03 0001 00", PROTOCOL, "§2.1.2"),
    ("CONNECT to a client", CLIENT_V5, "10 00", PROTOCOL, "not sent by a Server"),
    ("PINGREQ to a client", CLIENT_V3, "c0 00", PROTOCOL, "not sent by a Server"),
    ("3.1.1 server DISCONNECT", CLIENT_V3, "e0 00", PROTOCOL, "not sent by a Server"),
    # -- strings and lengths
    ("topic length past the end", V5, "30 05 0009 616263", MALFORMED, "§2.1.4"),
    ("topic length past the end (3.1.1)", V3, "30 03 0009 61", MALFORMED, "§2.1.4"),
    ("remaining length too short", V5, "30 01 00", MALFORMED, "§2.1.4"),
    ("invalid UTF-8 topic", V5, "30 05 0002 c328 00", MALFORMED, "MQTT-1.5.4-1"),
    ("invalid UTF-8 topic (3.1.1)", V3, "30 04 0002 c328", MALFORMED, "MQTT-1.5.3-1"),
    ("surrogate in topic", V5, "30 06 0003 eda080 00", MALFORMED, "MQTT-1.5.4-1"),
    ("overlong UTF-8 in topic", V5, "30 05 0002 c0af 00", MALFORMED, "MQTT-1.5.4-1"),
    ("truncated UTF-8 in topic", V5, "30 04 0001 e2 00", MALFORMED, "MQTT-1.5.4-1"),
    ("U+0000 in topic", V5, "30 06 0003 610062 00", MALFORMED, "MQTT-1.5.4-2"),
    ("U+0000 in topic (3.1.1)", V3, "30 05 0003 610062", MALFORMED, "MQTT-1.5.3-2"),
    ("invalid UTF-8 reason string", V5, "40 09 0001 80 05 1f 0002 c328", MALFORMED, "MQTT-1.5.4-1"),
    ("invalid UTF-8 user property", V5, "30 0a 0001 61 06 26 0001 ff 0000", MALFORMED, "1.5.4-1"),
    # -- PUBLISH
    ("'+' in topic name", V5, "30 06 0003 612f2b 00", TOPIC_NAME_INVALID, "MQTT-3.3.2-2"),
    ("'#' in topic name", V3, "30 03 0001 23", TOPIC_NAME_INVALID, "MQTT-3.3.2-2"),
    ("QoS 1 packet id 0", V5, "32 06 0001 61 0000 00", MALFORMED, "MQTT-2.2.1-3"),
    ("QoS 2 packet id 0 (3.1.1)", V3, "34 05 0001 61 0000", MALFORMED, "MQTT-2.3.1-1"),
    ("QoS 1 without packet id", V5, "32 04 0001 61 00", MALFORMED, "§2.1.4"),
    ("empty topic without alias", V5, "30 03 0000 00", PROTOCOL, "Topic Alias"),
    ("empty topic, props, no alias", V5, "30 08 0000 05 02 00000001", PROTOCOL, "Topic Alias"),
    ("empty topic (3.1.1)", V3, "30 02 0000", TOPIC_NAME_INVALID, "MQTT-4.7.3-1"),
    ("subscription id from a client", V5, "30 06 0001 61 02 0b 01", PROTOCOL, "MQTT-3.3.4-6"),
    # -- properties
    ("property length past the end", V5, "30 04 0001 61 05", MALFORMED, "§2.1.4"),
    ("property value past its block", V5, "30 07 0001 61 02 02 00 00", MALFORMED, "§2.1.4"),
    ("property length of 5 bytes", V5, "30 08 0001 61 ffffffff01", MALFORMED, "MQTT-1.5.5-1"),
    ("property id not minimal", V5, "30 08 0001 61 04 a300 0001", MALFORMED, "MQTT-1.5.5-1"),
    ("unknown property id", V5, "30 06 0001 61 02 7f 00", MALFORMED, "§2.2.2.2"),
    ("property not allowed", V5, "30 09 0001 61 05 11 00000001", MALFORMED, "not valid in PUBLISH"),
    ("duplicate Topic Alias", V5, "30 0b 0001 61 06 230001 230002 78", PROTOCOL, "appears twice"),
    ("duplicate subscription id", V5, "82 0b 0001 04 0b01 0b02 0001 61 00", PROTOCOL, "twice"),
    ("payload format indicator 2", V5, "30 06 0001 61 02 01 02", PROTOCOL, "not 0 or 1"),
    ("topic alias 0", V5, "30 07 0001 61 03 23 0000", PROTOCOL, "TOPIC_ALIAS in PUBLISH is 0"),
    ("response topic wildcard", V5, "30 0a 0001 61 06 08 0003 612f23", PROTOCOL, "MQTT-3.3.2-14"),
    ("empty response topic", V5, "30 07 0001 61 03 08 0000", PROTOCOL, "MQTT-4.7.3-1"),
    ("reason string in PUBLISH", V5, "30 08 0001 61 04 1f 0001 61", MALFORMED, "§2.2.2.2"),
    # -- acknowledgements
    ("PUBACK packet id 0", V5, "40 02 0000", PROTOCOL, "MQTT-2.2.1-5"),
    ("PUBACK reason 0x05", V5, "40 03 0001 05", PROTOCOL, "MQTT-3.4.2-1"),
    ("PUBREC reason 0x92", V5, "50 03 0001 92", PROTOCOL, "MQTT-3.5.2-1"),
    ("PUBREL reason 0x10", V5, "62 03 0001 10", PROTOCOL, "MQTT-3.6.2-1"),
    ("PUBCOMP reason 0x80", V5, "70 03 0001 80", PROTOCOL, "MQTT-3.7.2-1"),
    ("DISCONNECT reason 0x05", V5, "e0 01 05", PROTOCOL, "MQTT-3.14.2-1"),
    ("AUTH reason 0x01", V5, "f0 01 01", PROTOCOL, "MQTT-3.15.2-1"),
    ("user property in PUBACK cut", V5, "40 07 0001 00 03 26 0001", MALFORMED, "§2.1.4"),
    # -- SUBSCRIBE / UNSUBSCRIBE
    ("SUBSCRIBE without filters", V5, "82 03 0001 00", PROTOCOL, "MQTT-3.8.3-2"),
    ("SUBSCRIBE without filters (3.1.1)", V3, "82 02 0001", PROTOCOL, "MQTT-3.8.3-3"),
    ("SUBSCRIBE packet id 0", V5, "82 07 0000 00 0001 61 00", MALFORMED, "MQTT-2.2.1-3"),
    ("SUBSCRIBE filter without options", V5, "82 06 0001 00 0001 61", MALFORMED, "§2.1.4"),
    ("subscription reserved bits", V5, "82 07 0001 00 0001 61 c0", MALFORMED, "MQTT-3.8.3-5"),
    ("subscription QoS 3", V5, "82 07 0001 00 0001 61 03", MALFORMED, "QoS 3"),
    ("retain handling 3", V5, "82 07 0001 00 0001 61 30", PROTOCOL, "Retain Handling 3"),
    (
        "No Local on a shared subscription",
        V5,
        "82 10 0001 00 000a 2473686172652f672f61 04",
        PROTOCOL,
        "MQTT-3.8.3-4",
    ),
    ("3.1.1 options bits", V3, "82 06 0001 0001 61 04", MALFORMED, "MQTT-3.8.3-4"),
    ("3.1.1 subscription QoS 3", V3, "82 06 0001 0001 61 03", MALFORMED, "MQTT-3.8.3-4"),
    ("invalid UTF-8 filter", V3, "82 06 0001 0001 ff 00", MALFORMED, "MQTT-1.5.3-1"),
    ("UNSUBSCRIBE without filters", V5, "a2 03 0001 00", PROTOCOL, "MQTT-3.10.3-2"),
    ("UNSUBSCRIBE packet id 0", V3, "a2 05 0000 0001 61", MALFORMED, "MQTT-2.3.1-1"),
    # -- packets a client receives
    ("CONNACK reserved flags", CLIENT_V5, "20 03 02 00 00", MALFORMED, "MQTT-3.2.2-1"),
    ("CONNACK reason 0x10", CLIENT_V5, "20 03 00 10 00", PROTOCOL, "MQTT-3.2.2-8"),
    ("CONNACK return code 6", CLIENT_V3, "20 02 00 06", MALFORMED, "§3.2.2.3"),
    (
        "CONNACK of 3 bytes (3.1.1)",
        CLIENT_V3,
        "20 03 00 00 00",
        MALFORMED,
        "CONNACK with Remaining",
    ),
    ("SUBACK return code 3", CLIENT_V3, "90 03 0001 03", MALFORMED, "§3.9.3"),
    ("SUBACK reason 0x05", CLIENT_V5, "90 04 0001 00 05", PROTOCOL, "MQTT-3.9.3-2"),
    ("UNSUBACK reason 0x01", CLIENT_V5, "b0 04 0001 00 01", PROTOCOL, "MQTT-3.11.3-2"),
    ("CONNACK property not allowed", CLIENT_V5, "20 05 00 00 02 23 01", MALFORMED, "CONNACK"),
    ("maximum QoS 2", CLIENT_V5, "20 05 00 00 02 24 02", PROTOCOL, "not 0 or 1"),
]


@pytest.mark.parametrize(
    ("setup", "data", "reason", "rule"),
    [pytest.param(setup, data, reason, rule, id=name) for name, setup, data, reason, rule in CASES],
)
def test_malformed(setup: dict[str, Any], data: str, reason: int, rule: str) -> None:
    error = decode_error(bytes.fromhex(data), setup)
    assert isinstance(error, MalformedPacket)
    assert error.reason_code == reason, error.message
    assert rule in str(error), str(error)
    assert error.v3_return_code is None
    assert error.packet_type in (None, bytes.fromhex(data)[0] >> 4)


@pytest.mark.parametrize(
    ("setup", "data", "rule"),
    [
        (V5, "30 ff ff ff ff", "MQTT-1.5.5-1"),  # the 5th length byte is not needed to know
        (V5, "36", "MQTT-3.3.1-4"),
        (V5, "38", "MQTT-3.3.1-2"),
        (V5, "60", "MQTT-3.6.1-1"),
        (V5, "c0 05", "PINGREQ with Remaining Length 5"),
        (V3, "40 ff 7f", "PUBACK with Remaining Length 16383"),
        (FRESH, "30", "MQTT-3.1.0-1"),
        (V5, "00", "§2.1.2"),
    ],
)
def test_refused_before_the_body_arrives(setup: dict[str, Any], data: str, rule: str) -> None:
    assert rule in str(decode_error(bytes.fromhex(data), setup))


def test_packet_larger_than_max_packet_size() -> None:
    error = decode_error(bytes.fromhex("30 65"), V5, max_packet_size=102)  # 103 bytes in all
    assert isinstance(error, PacketTooLarge)
    assert error.reason_code == 0x95
    assert "MQTT-3.2.2-15" in str(error)
    # a 256 MiB Remaining Length is refused from 5 bytes, with nothing allocated for it
    decoder = Decoder(1 << 20, protocol_level=MQTT_V5, read_size=1024)
    decoder.feed(bytes.fromhex("30 ff ff ff 7f"))
    with pytest.raises(PacketTooLarge):
        decoder.next_packet()
    assert decoder.capacity <= 1024


# -- CONNECT -----------------------------------------------------------------------------------


def _connect_v3(flags: str, payload: str = "0001 63") -> bytes:
    body = bytes.fromhex(f"0004 4d515454 04 {flags} 003c {payload}")
    return bytes((0x10, len(body))) + body


@pytest.mark.parametrize(
    ("data", "level"),
    [
        ("10 0d 0004 4d515454 03 02 003c 0001 63", 3),
        ("10 0d 0004 4d515454 06 02 003c 0001 63", 6),
        ("10 0d 0004 4d515454 00 02 003c 0001 63", 0),
        ("10 0f 0006 4d5149736470 03 02 003c 0001 63", 3),  # MQTT 3.1
        ("10 0d 0004 4d515455 04 02 003c 0001 63", 4),  # protocol name "MQTU"
    ],
)
def test_unsupported_protocol_version(data: str, level: int) -> None:
    error = decode_error(bytes.fromhex(data), FRESH)
    assert isinstance(error, UnsupportedProtocolVersion)
    assert error.reason_code == 0x84
    assert error.v3_return_code == 1
    assert error.received_level == level
    assert error.packet_type == PacketType.CONNECT
    assert "MQTT-3.1.2-2" in str(error)


@pytest.mark.parametrize(
    ("data", "reason", "rule", "level"),
    [
        (_connect_v3("03"), MALFORMED, "MQTT-3.1.2-3", MQTT_V311),
        (_connect_v3("1e"), MALFORMED, "MQTT-3.1.2-14", MQTT_V311),  # will QoS 3
        (_connect_v3("0a"), MALFORMED, "MQTT-3.1.2-13", MQTT_V311),  # will QoS, no will
        (_connect_v3("22"), MALFORMED, "MQTT-3.1.2-15", MQTT_V311),  # will retain, no will
        (_connect_v3("42", "0001 63 0001 70"), MALFORMED, "MQTT-3.1.2-22", MQTT_V311),
        (_connect_v3("02", "0001 ff"), MALFORMED, "MQTT-1.5.3-1", MQTT_V311),
        (_connect_v3("02", "0003 630063"), MALFORMED, "MQTT-1.5.3-2", MQTT_V311),
        (_connect_v3("02", "0005 63"), MALFORMED, "§2.1.4", MQTT_V311),
        (_connect_v3("82", "0001 63"), MALFORMED, "§2.1.4", MQTT_V311),  # user name missing
        (_connect_v3("02", "0001 63 00"), MALFORMED, "follow the last field", MQTT_V311),
        (
            connect_bytes(will=Will("a/#", b"")),
            TOPIC_NAME_INVALID,
            "MQTT-4.7.0-1",
            MQTT_V311,
        ),
        (
            connect_bytes(protocol_level=5, will=Will("", b"")),
            TOPIC_NAME_INVALID,
            "MQTT-4.7.3-1",
            MQTT_V5,
        ),
        (
            connect_bytes(protocol_level=5, properties={"receive_maximum": 0}),
            PROTOCOL,
            "RECEIVE_MAXIMUM in CONNECT is 0",
            MQTT_V5,
        ),
        (
            connect_bytes(protocol_level=5, properties={"maximum_packet_size": 0}),
            PROTOCOL,
            "MAXIMUM_PACKET_SIZE in CONNECT is 0",
            MQTT_V5,
        ),
        (
            connect_bytes(protocol_level=5, properties={"request_problem_information": 2}),
            PROTOCOL,
            "not 0 or 1",
            MQTT_V5,
        ),
        (
            patched(
                connect_bytes(
                    protocol_level=5,
                    will=Will("w", b"", properties={"payload_format_indicator": 1}),
                ),
                "02 01 01",
                "02 17 01",
            ),
            MALFORMED,
            "not valid in Will Properties",
            MQTT_V5,
        ),
        (
            patched(connect_bytes(protocol_level=5), "0001 63", "0001 c3"),
            MALFORMED,
            "MQTT-1.5.4-1",
            MQTT_V5,
        ),
    ],
)
def test_malformed_connect(data: bytes, reason: int, rule: str, level: int) -> None:
    error = decode_error(data, FRESH)
    assert isinstance(error, MalformedPacket)
    assert error.reason_code == reason, error.message
    assert rule in str(error)
    assert error.packet_type == PacketType.CONNECT
    assert error.protocol_level == level  # so the session knows which CONNACK to send


def test_second_connect() -> None:
    decoder = Decoder(MAX)
    decoder.feed(connect_bytes() * 2)
    assert isinstance(decoder.next_packet(), Connect)
    with pytest.raises(MalformedPacket, match=r"MQTT-3\.1\.0-2") as info:
        decoder.next_packet()
    assert info.value.reason_code == PROTOCOL

"""Property tests: round trips of random packets, and garbage that must fail cleanly.

Garbage and mutated streams may decode to packets or raise a :class:`ProtocolError`; nothing
else may escape, the decoder may not wait for more bytes than its limit allows, and its buffer
stays bounded by what it was fed plus the limit.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftserver.mqtt.codec import Decoder, ProtocolError, encode
from ftserver.mqtt.packets import Connect, Packet, Publish
from ftserver.mqtt.spec import MQTT_V5, MQTT_V311

from .strategies import client_packets, connects, server_packets

#: CI runs a short fuzzing pass; `make fuzz` (FTSERVER_FUZZ_EXAMPLES=20000) a long one
EXAMPLES = int(os.environ.get("FTSERVER_FUZZ_EXAMPLES", "250"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
LIMIT = 4096
READ_SIZE = 512

levels = st.sampled_from([MQTT_V311, MQTT_V5])


def _copy(packet: Packet) -> Packet:
    if isinstance(packet, Publish):
        return dataclasses.replace(packet, payload=bytes(packet.payload))
    return packet


def _decode_stream(data: bytes, setup: dict[str, Any], chunk: int) -> list[Packet]:
    decoder = Decoder(LIMIT, read_size=READ_SIZE, **setup)
    out: list[Packet] = []
    for i in range(0, len(data), chunk):
        decoder.feed(data[i : i + chunk])
        out.extend(_copy(p) for p in decoder)
    assert decoder.buffered == 0
    return out


@SETTINGS
@given(levels, st.data())
def test_client_packets_round_trip(level: int, data: st.DataObject) -> None:
    packets = data.draw(st.lists(client_packets(level), min_size=1, max_size=6))
    stream = b"".join(encode(p, level) for p in packets)
    chunk = data.draw(st.integers(1, len(stream)))
    decoded = _decode_stream(stream, {"protocol_level": level}, chunk)
    assert decoded == packets


@SETTINGS
@given(levels, st.data())
def test_server_packets_round_trip(level: int, data: st.DataObject) -> None:
    packets = data.draw(st.lists(server_packets(level), min_size=1, max_size=6))
    stream = b"".join(encode(p, level) for p in packets)
    chunk = data.draw(st.integers(1, len(stream)))
    decoded = _decode_stream(stream, {"protocol_level": level, "server": False}, chunk)
    assert decoded == packets


@SETTINGS
@given(levels.flatmap(connects), st.data())
def test_connect_round_trip(connect: Connect, data: st.DataObject) -> None:
    level = connect.protocol_level
    follow = data.draw(st.lists(client_packets(level), max_size=3))
    stream = encode(connect, level) + b"".join(encode(p, level) for p in follow)
    decoded = _decode_stream(stream, {}, data.draw(st.integers(1, len(stream))))
    assert decoded == [connect, *follow]


def _feed_garbage(data: bytes, setup: dict[str, Any], chunk: int) -> None:
    """Feed ``data``; decoded packets must re-encode; only ProtocolError may escape."""
    decoder = Decoder(LIMIT, read_size=READ_SIZE, **setup)
    try:
        for i in range(0, len(data), chunk):
            decoder.feed(data[i : i + chunk])
            for packet in decoder:
                level = decoder.protocol_level
                assert level is not None
                # whatever the decoder accepts, the encoder can send, and it decodes the same
                again = Decoder(LIMIT, **{**setup, "protocol_level": level})
                if isinstance(packet, Connect):
                    again = Decoder(LIMIT, **{**setup, "protocol_level": None})
                again.feed(encode(packet, level))
                assert _copy(again.next_packet()) == _copy(packet)  # type: ignore[arg-type]
    except ProtocolError as error:
        assert 0x80 <= error.reason_code <= 0xA2
        assert str(error)
    # never more memory than the input plus one packet's limit plus a read
    assert decoder.capacity <= 2 * (len(data) + LIMIT + READ_SIZE)
    # never waiting on a packet longer than the limit
    assert decoder.buffered <= max(len(data), 0)
    assert decoder._need <= LIMIT


setups = st.sampled_from(
    [
        {},
        {"protocol_level": MQTT_V311},
        {"protocol_level": MQTT_V5},
        {"protocol_level": MQTT_V311, "server": False},
        {"protocol_level": MQTT_V5, "server": False},
    ]
)


@SETTINGS
@given(st.binary(max_size=600), setups, st.integers(1, 64))
def test_garbage(data: bytes, setup: dict[str, Any], chunk: int) -> None:
    _feed_garbage(data, setup, chunk)


@st.composite
def mutated_streams(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    level = draw(levels)
    server = draw(st.booleans())
    packets = draw(st.lists(client_packets(level) if server else server_packets(level), max_size=4))
    stream = bytearray(b"".join(encode(p, level) for p in packets))
    if server and draw(st.booleans()):
        stream[:0] = encode(draw(connects(level)), level)
        setup: dict[str, Any] = {}
    else:
        setup = {"protocol_level": level, "server": server}
    for _ in range(draw(st.integers(1, 4))):
        if not stream:
            stream += draw(st.binary(min_size=1, max_size=8))
            continue
        pos = draw(st.integers(0, len(stream) - 1))
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if action == "flip":
            stream[pos] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            stream[pos] = draw(st.integers(0, 255))
        elif action == "insert":
            stream[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif action == "delete":
            del stream[pos]
        else:
            del stream[pos:]
    return bytes(stream), setup


@SETTINGS
@given(mutated_streams(), st.integers(1, 64))
def test_mutated_packets(case: tuple[bytes, dict[str, Any]], chunk: int) -> None:
    data, setup = case
    _feed_garbage(data, setup, chunk)


@settings(max_examples=100, deadline=None)
@given(st.integers(LIMIT + 1, 268_435_455), st.sampled_from([0x30, 0x32, 0x82, 0x62]))
def test_oversized_lengths_fail_from_the_header(remaining: int, first: int) -> None:
    header = bytearray([first])
    value = remaining
    while True:
        byte = value & 0x7F
        value >>= 7
        header.append(byte | (0x80 if value else 0))
        if not value:
            break
    decoder = Decoder(LIMIT, protocol_level=MQTT_V5, read_size=READ_SIZE)
    decoder.feed(bytes(header))
    try:
        decoder.next_packet()
    except ProtocolError as error:
        assert error.reason_code == 0x95
    else:
        raise AssertionError("an oversized Remaining Length was accepted")
    assert decoder.capacity <= READ_SIZE  # nothing was allocated for it

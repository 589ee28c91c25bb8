"""Property tests of the decoder: valid streams, garbage and mutated packets.

For valid streams of random packets, cut at random points and fed either way (``feed`` or the
``BufferedProtocol`` calls): the same packets come out, and each packet consumed exactly the
bytes of its encoding.

For garbage and mutated streams the decoder may accept packets or raise a
:class:`ProtocolError`; nothing else may escape. Where it accepts a packet:

- it consumed exactly that packet's bytes (its fixed header says so, and those bytes alone,
  in a fresh decoder in the same state, decode to the same packet);
- the packet round-trips: re-encoded and decoded again it is equal, and re-encoding that
  gives the same bytes (the encoder's output is a fixed point);
- the outcome (packets, the bytes each came from, the error) does not depend on where the
  input was cut.

Its memory stays bounded by what it was fed plus the limit, and it never waits on a packet
longer than the limit.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from itertools import accumulate, pairwise
from typing import Any

from hypothesis import HealthCheck, event, given, settings
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
    """The packet with its payload copied out of the receive buffer (it is only lent)."""
    if isinstance(packet, Publish):
        return dataclasses.replace(packet, payload=bytes(packet.payload))
    return packet


@dataclasses.dataclass
class Run:
    """What a decoder made of one input."""

    decoder: Decoder
    packets: list[Packet]
    #: for each packet, the [start, end) offsets in the input of the bytes it consumed
    spans: list[tuple[int, int]]
    error: ProtocolError | None


def _reads(decoder: Decoder, chunk: bytes, via_buffer: bool) -> Iterator[int]:
    """Hand ``chunk`` to the decoder, in one ``feed`` or in as many reads as asyncio's
    ``BufferedProtocol`` would make of it; yields the size of each read once it is in."""
    if not via_buffer:
        decoder.feed(chunk)
        yield len(chunk)
        return
    view = memoryview(chunk)
    while view:
        buf = decoder.get_buffer(-1)
        assert len(buf) > 0
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        decoder.buffer_updated(n)
        view = view[n:]
        yield n


def _run(chunks: list[bytes], setup: dict[str, Any], via_buffer: bool = False) -> Run:
    """Feed ``chunks`` one after the other, draining every complete packet after each read."""
    decoder = Decoder(LIMIT, read_size=READ_SIZE, **setup)
    run = Run(decoder, [], [], None)
    fed = 0
    try:
        for chunk in chunks:
            for n in _reads(decoder, chunk, via_buffer):
                fed += n
                while True:
                    start = fed - decoder.buffered
                    packet = decoder.next_packet()
                    if packet is None:
                        break
                    run.packets.append(_copy(packet))
                    run.spans.append((start, fed - decoder.buffered))
    except ProtocolError as error:
        run.error = error
    return run


def _cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` cut at each of ``points`` (any order, duplicates allowed)."""
    bounds = sorted({0, len(data), *points})
    return [data[a:b] for a, b in pairwise(bounds)]


def _cuts(data: st.DataObject, stream: bytes) -> list[bytes]:
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cut at")
    return _cut(stream, points)


def _check_valid(
    encoded: list[bytes], expected: list[Packet], setup: dict[str, Any], data: st.DataObject
) -> None:
    stream = b"".join(encoded)
    run = _run(_cuts(data, stream), setup, data.draw(st.booleans(), label="via get_buffer"))
    assert run.error is None
    assert run.packets == expected
    ends = list(accumulate(map(len, encoded), initial=0))
    assert run.spans == list(pairwise(ends))  # exactly each packet's bytes
    assert run.decoder.buffered == 0


@SETTINGS
@given(levels, st.data())
def test_client_packets_round_trip(level: int, data: st.DataObject) -> None:
    packets = data.draw(st.lists(client_packets(level), min_size=1, max_size=6))
    encoded = [encode(p, level) for p in packets]
    _check_valid(encoded, packets, {"protocol_level": level}, data)


@SETTINGS
@given(levels, st.data())
def test_server_packets_round_trip(level: int, data: st.DataObject) -> None:
    packets = data.draw(st.lists(server_packets(level), min_size=1, max_size=6))
    encoded = [encode(p, level) for p in packets]
    _check_valid(encoded, packets, {"protocol_level": level, "server": False}, data)


@SETTINGS
@given(levels.flatmap(connects), st.data())
def test_connect_round_trip(connect: Connect, data: st.DataObject) -> None:
    level = connect.protocol_level
    follow = data.draw(st.lists(client_packets(level), max_size=3))
    packets: list[Packet] = [connect, *follow]
    _check_valid([encode(p, level) for p in packets], packets, {}, data)


# -- garbage in ----------------------------------------------------------------------------


def _frame_size(raw: bytes) -> int:
    """The size a packet's fixed header announces (read here, independently of the codec)."""
    size = shift = 0
    pos = 1
    while True:
        byte = raw[pos]
        pos += 1
        size |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return pos + size


def _decode_alone(raw: bytes, setup: dict[str, Any]) -> Packet:
    """``raw`` decoded by a fresh decoder: exactly one packet, every byte consumed."""
    decoder = Decoder(LIMIT, **setup)
    decoder.feed(raw)
    packet = decoder.next_packet()
    assert packet is not None
    assert decoder.buffered == 0
    assert decoder.next_packet() is None
    return _copy(packet)


def _same_error(a: ProtocolError | None, b: ProtocolError | None) -> bool:
    if a is None or b is None:
        return a is b
    return (type(a), a.reason_code, str(a), a.packet_type, a.protocol_level) == (
        type(b),
        b.reason_code,
        str(b),
        b.packet_type,
        b.protocol_level,
    )


def _check_garbage(data: bytes, setup: dict[str, Any], draw: st.DataObject) -> None:
    whole = _run([data], setup)
    cut = _run(_cuts(draw, data), setup, draw.draw(st.booleans(), label="via get_buffer"))

    # where the input was cut does not change what comes out
    assert cut.packets == whole.packets
    assert cut.spans == whole.spans
    assert _same_error(cut.error, whole.error), (cut.error, whole.error)

    event(f"packets accepted: {min(len(whole.packets), 3)}")
    event("refused" if whole.error is not None else "no error")
    for packet, (start, end) in zip(whole.packets, whole.spans, strict=True):
        raw = data[start:end]
        # the decoder consumed exactly this packet's bytes
        assert _frame_size(raw) == len(raw)
        if isinstance(packet, Connect):
            level = packet.protocol_level
            state = {**setup, "protocol_level": None}
        else:
            level = whole.decoder.protocol_level  # set from the start, or by the one CONNECT
            assert level is not None
            state = {**setup, "protocol_level": level}
        assert _decode_alone(raw, state) == packet
        # whatever the decoder accepts, the encoder can send, and it decodes the same
        again = encode(packet, level)
        assert _decode_alone(again, state) == packet
        assert encode(_decode_alone(again, state), level) == again

    if whole.error is not None:
        assert 0x80 <= whole.error.reason_code <= 0xA2
        assert str(whole.error)
    for decoder in (whole.decoder, cut.decoder):
        # never more memory than the input plus one packet's limit plus a read
        assert decoder.capacity <= 2 * (len(data) + LIMIT + READ_SIZE)
        # never waiting on a packet longer than the limit
        assert decoder.buffered <= len(data)
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
@given(st.binary(max_size=600), setups, st.data())
def test_garbage(data: bytes, setup: dict[str, Any], draw: st.DataObject) -> None:
    _check_garbage(data, setup, draw)


@st.composite
def mutated_streams(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    level = draw(levels)
    server = draw(st.booleans())
    packets = draw(
        st.lists(client_packets(level) if server else server_packets(level), min_size=1, max_size=4)
    )
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
@given(mutated_streams(), st.data())
def test_mutated_packets(case: tuple[bytes, dict[str, Any]], draw: st.DataObject) -> None:
    data, setup = case
    _check_garbage(data, setup, draw)


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

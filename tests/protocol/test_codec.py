"""The MQTT codec on bytes recorded from a real client, split at every point.

Also: the receive-buffer contract (BufferedProtocol API, payload lifetime, growth bounds) and
encoder output checked byte for byte against the spec's examples.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable

import pytest

from ftserver.mqtt.codec import (
    PINGREQ_BYTES,
    PINGRESP_BYTES,
    Decoder,
    MalformedPacket,
    PacketTooLarge,
    ProtocolError,
    encode,
    encode_connack,
    encode_disconnect,
    encode_puback,
    encode_publish,
    encode_publish_header,
    encode_suback,
    encode_unsuback,
)
from ftserver.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionOptions,
    Unsuback,
    Unsubscribe,
    Will,
)
from ftserver.mqtt.spec import MQTT_V5, MQTT_V311, ReasonCode
from ftserver.topics import is_valid_topic_filter, is_valid_topic_name

from .paho_capture import Recording, record_large_publish, record_session

MAX = 1 << 20


@functools.cache
def recording(level: int) -> Recording:
    return record_session(level)


@functools.cache
def large_recording(level: int) -> bytes:
    return record_large_publish(level, 70_000)


def snapshot(packet: Packet) -> Packet:
    """Copy a decoded PUBLISH payload out of the receive buffer (it is only lent)."""
    if isinstance(packet, Publish):
        return dataclasses.replace(packet, payload=bytes(packet.payload))
    return packet


def decode_chunks(chunks: Iterable[bytes], **kw: object) -> list[Packet]:
    """Feed chunks with feed(), draining after each; the buffer must end empty."""
    decoder = Decoder(MAX, **kw)  # type: ignore[arg-type]
    out: list[Packet] = []
    for chunk in chunks:
        decoder.feed(chunk)
        out.extend(snapshot(p) for p in decoder)
    assert decoder.buffered == 0
    return out


def decode_buffered(chunks: Iterable[bytes], **kw: object) -> list[Packet]:
    """Feed chunks the way asyncio.BufferedProtocol does: get_buffer, copy, buffer_updated."""
    decoder = Decoder(MAX, read_size=64, **kw)  # type: ignore[arg-type]
    out: list[Packet] = []
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            buf = decoder.get_buffer(-1)
            assert len(buf) > 0
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            decoder.buffer_updated(n)
            view = view[n:]
            out.extend(snapshot(p) for p in decoder)
    assert decoder.buffered == 0
    return out


def expected_session(level: int, rec: Recording) -> list[Packet]:
    v5 = level == MQTT_V5
    client_id = f"paho-recorder-{level}"
    return [
        Connect(
            client_id=client_id,
            protocol_level=level,
            clean_start=True,
            keep_alive=45,
            will=Will(
                "devices/gone",
                b"offline",
                qos=1,
                retain=True,
                properties={
                    "will_delay_interval": 10,
                    "content_type": "text/plain",
                    "user_properties": [("w", "1")],
                }
                if v5
                else {},
            ),
            username="device-user",
            password=b"s3cret",
            properties={
                "session_expiry_interval": 3600,
                "receive_maximum": 32,
                "maximum_packet_size": 1 << 20,
                "topic_alias_maximum": 8,
                "request_problem_information": 1,
                "user_properties": [("client", "paho"), ("client", "twice")],
            }
            if v5
            else {},
        ),
        Publish(
            "$file/f1/init",
            b'{"name":"a.txt"}',
            properties={
                "payload_format_indicator": 1,
                "content_type": "application/json",
                "message_expiry_interval": 60,
            }
            if v5
            else {},
        ),
        Publish(
            "$file/f1/0",
            b"segment-bytes" * 3,
            qos=1,
            packet_id=rec.qos1_mid,
            properties={
                "response_topic": "replies/paho",
                "correlation_data": b"\x00\x01corr",
                "topic_alias": 3,
                "user_properties": [("k1", "v1"), ("k2", "v2"), ("k1", "again")],
            }
            if v5
            else {},
        ),
        Publish("$file/f1/39", bytes(range(200))),
        Publish(
            "$file/f1/fin/39",
            b"",
            qos=2,
            packet_id=rec.qos2_mid,
            properties={"topic_alias": 4, "user_properties": [("q", "2")]} if v5 else {},
        ),
        Pubrel(rec.qos2_mid),
        Subscribe(
            rec.subscribe_mid,
            [
                (f"$file-response/{client_id}", SubscriptionOptions(qos=1)),
                (
                    "replies/+",
                    SubscriptionOptions(
                        2, no_local=True, retain_as_published=True, retain_handling=2
                    )
                    if v5
                    else SubscriptionOptions(2),
                ),
                ("all/#", SubscriptionOptions(0, retain_handling=1 if v5 else 0)),
            ],
            {"subscription_identifiers": [42], "user_properties": [("s", "1")]} if v5 else {},
        ),
        Unsubscribe(rec.unsubscribe_mid, ["replies/+", "all/#"]),
        Puback(0x1234),
        Pingreq(),
        Disconnect(0x04, {"session_expiry_interval": 0, "reason_string": "bye"})
        if v5
        else Disconnect(),
    ]


LEVELS = [MQTT_V311, MQTT_V5]


# -- recorded bytes ------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_paho_session_decodes(level: int) -> None:
    rec = recording(level)
    assert decode_chunks([rec.stream]) == expected_session(level, rec)


@pytest.mark.parametrize("level", LEVELS)
def test_decoder_learns_level_from_connect(level: int) -> None:
    decoder = Decoder(MAX)
    assert decoder.protocol_level is None
    decoder.feed(recording(level).stream)
    assert isinstance(decoder.next_packet(), Connect)
    assert decoder.protocol_level == level


@pytest.mark.parametrize("level", LEVELS)
def test_reencoding_paho_packets_gives_paho_bytes(level: int) -> None:
    """Our encoder reproduces each of paho's packets byte for byte."""
    stream = recording(level).stream
    decoder = Decoder(MAX)
    decoder.feed(stream)
    offset = 0
    while True:
        before = decoder.buffered
        packet = decoder.next_packet()
        if packet is None:
            break
        size = before - decoder.buffered
        assert encode(packet, level) == stream[offset : offset + size], packet
        offset += size
    assert offset == len(stream)


@pytest.mark.parametrize("level", LEVELS)
def test_paho_large_publish(level: int) -> None:
    stream = large_recording(level)
    packets = decode_chunks([stream])
    assert [type(p) for p in packets] == [Connect, Publish, Disconnect]
    publish = packets[1]
    assert isinstance(publish, Publish)
    assert publish.topic == "$file/big/0"
    assert publish.payload == bytes(i * 7 % 251 for i in range(70_000))


# -- every split point ---------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("decode", [decode_chunks, decode_buffered])
def test_every_split_point(level: int, decode: object) -> None:
    stream = recording(level).stream
    whole = decode_chunks([stream])
    for i in range(len(stream) + 1):
        assert decode([stream[:i], stream[i:]]) == whole, f"split at {i}"  # type: ignore[operator]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("decode", [decode_chunks, decode_buffered])
def test_byte_by_byte(level: int, decode: object) -> None:
    stream = recording(level).stream
    chunks = [stream[i : i + 1] for i in range(len(stream))]
    assert decode(chunks) == decode_chunks([stream])  # type: ignore[operator]


@pytest.mark.parametrize("level", LEVELS)
def test_large_publish_splits(level: int) -> None:
    stream = large_recording(level)
    whole = decode_chunks([stream])
    points = sorted({*range(0, 40), *range(0, len(stream), 997), len(stream) - 1})
    for i in points:
        assert decode_chunks([stream[:i], stream[i:]]) == whole, f"split at {i}"
    assert decode_buffered([stream[i : i + 1500] for i in range(0, len(stream), 1500)]) == whole
    assert decode_chunks([stream[i : i + 1] for i in range(len(stream))]) == whole


# -- the receive buffer --------------------------------------------------------------------


def _publish(topic: str, payload: bytes, level: int = MQTT_V5) -> bytes:
    return encode(Publish(topic, payload, qos=1, packet_id=1), level)


def test_payload_is_a_view_into_the_receive_buffer() -> None:
    decoder = Decoder(MAX, protocol_level=MQTT_V5)
    decoder.feed(_publish("t", b"abc" * 100) + b"\x32")  # and the first byte of the next
    packet = decoder.next_packet()
    assert isinstance(packet, Publish)
    assert isinstance(packet.payload, memoryview)
    assert packet.payload.obj is decoder._buf
    assert packet.payload == b"abc" * 100


def test_next_packet_keeps_earlier_payloads_valid() -> None:
    decoder = Decoder(MAX, protocol_level=MQTT_V5)
    decoder.feed(b"".join(_publish(f"t/{i}", bytes([i]) * 50) for i in range(10)))
    packets = list(decoder)
    assert [p.payload for p in packets if isinstance(p, Publish)] == [
        bytes([i]) * 50 for i in range(10)
    ]


def test_detach_keeps_payloads_valid_across_reads() -> None:
    decoder = Decoder(MAX, protocol_level=MQTT_V5, read_size=256)
    held = []
    for i in range(50):
        decoder.feed(_publish("t", bytes([i]) * 200))
        packet = decoder.next_packet()
        assert isinstance(packet, Publish)
        held.append(packet.payload)
        decoder.detach()
    assert held == [bytes([i]) * 200 for i in range(50)]


def test_without_detach_the_buffer_is_reused() -> None:
    """While bytes stay buffered, each packet's bytes go where the last one's were."""
    decoder = Decoder(MAX, protocol_level=MQTT_V5, read_size=1024)
    packets = [_publish("t", bytes([i]) * 300) for i in range(101)]
    decoder.feed(packets[0][:1])
    ids = set()
    for i in range(100):
        decoder.feed(packets[i][1:] + packets[i + 1][:1])  # each read ends in the next packet
        packet = decoder.next_packet()
        assert isinstance(packet, Publish)
        assert packet.payload == bytes([i]) * 300
        ids.add(id(packet.payload.obj))  # type: ignore[union-attr]
    assert len(ids) == 1
    assert decoder.capacity <= 1024 + 1


def test_buffer_stays_bounded_with_unaligned_reads() -> None:
    """Compaction keeps the buffer near read_size when packets straddle reads."""
    decoder = Decoder(MAX, protocol_level=MQTT_V5, read_size=4096)
    stream = b"".join(_publish("t", bytes([i % 256]) * 1000) for i in range(300))
    count = 0
    for i in range(0, len(stream), 1500):
        decoder.feed(stream[i : i + 1500])
        count += len(list(decoder))
        assert decoder.capacity <= 2 * 4096
    assert count == 300
    assert decoder.capacity == 0  # all consumed


def test_no_buffer_until_bytes_arrive_and_none_once_consumed() -> None:
    decoder = Decoder(MAX, protocol_level=MQTT_V5, read_size=1024)
    assert decoder.capacity == 0
    view = decoder.get_buffer(-1)  # a read is about to happen: now there is one
    assert len(view) == decoder.capacity == 1024
    data = _publish("t", b"x" * 100) * 3
    view[: len(data)] = data
    decoder.buffer_updated(len(data))
    assert len(list(decoder)) == 3
    assert decoder.capacity == 0  # the last packet consumed: the buffer went with it
    decoder.get_buffer(-1)
    decoder.buffer_updated(0)  # a read that found nothing (EAGAIN)
    assert decoder.capacity == 1024
    decoder.shrink()
    assert decoder.capacity == 0


def _read_all(decoder: Decoder, data: bytes, *, tight: bool = False) -> list[int]:
    """Deliver ``data`` as a socket would, each read filling the view offered; the
    capacity after each read."""
    seen = []
    pos = 0
    while pos < len(data):
        view = decoder.get_buffer(-1, tight=tight)
        n = min(len(view), len(data) - pos)
        view[:n] = data[pos : pos + n]
        decoder.buffer_updated(n)
        pos += n
        if decoder.buffered:
            seen.append(decoder.capacity)
    return seen


def test_a_large_packet_grows_the_buffer_with_what_arrived() -> None:
    decoder = Decoder(1 << 22, protocol_level=MQTT_V5, read_size=1024)
    data = _publish("t", b"x" * 1_000_000)
    decoder.feed(data[:100])
    assert decoder.next_packet() is None
    assert decoder.capacity == 1024  # not the announced million
    capacities = _read_all(decoder, data[100:])
    # never more than half again what had arrived (plus one read) when the buffer grew
    held = 100
    for cap in capacities:
        assert cap <= max(1024, held + held // 2 + 1024)
        held = cap
    assert len(capacities) > 5  # it grew in steps, not at once
    packet = decoder.next_packet()
    assert isinstance(packet, Publish)
    assert packet.payload == b"x" * 1_000_000
    assert decoder.capacity == 0  # shrunk back (to nothing) after the large packet
    assert packet.payload == b"x" * 1_000_000  # the view outlives the buffer's release


def test_a_stream_of_large_packets_reuses_one_buffer() -> None:
    """Once the peer completed a packet that large, the next one gets its room at once,
    and each read may go on into the next packet: the buffer is not regrown per packet."""
    decoder = Decoder(1 << 22, protocol_level=MQTT_V5, read_size=1024)
    packets = [_publish("t", bytes([i]) * 100_000) for i in range(20)]
    _read_all(decoder, packets[0])
    assert isinstance(decoder.next_packet(), Publish)
    assert decoder.capacity == 0  # (the read stopped at its end: nothing more was sent)
    buffers = set()
    stream = b"".join(packets[1:])
    pos = 0
    count = 0
    while pos < len(stream):
        view = decoder.get_buffer(-1)
        buffers.add(id(view.obj))
        n = min(len(view), len(stream) - pos)
        view[:n] = stream[pos : pos + n]
        decoder.buffer_updated(n)
        pos += n
        while (packet := decoder.next_packet()) is not None:
            count += 1
            assert isinstance(packet, Publish) and packet.payload == bytes([count]) * 100_000
    assert count == 19
    assert len(buffers) <= 2  # not one per packet, nor per growth step


def test_tight_growth_is_an_eighth_at_a_time() -> None:
    decoder = Decoder(1 << 22, protocol_level=MQTT_V5, read_size=1024)
    data = _publish("y", b"y" * 100_000)
    _read_all(decoder, data[:50_000])
    held = decoder.buffered
    decoder.get_buffer(-1, tight=True)
    grown = decoder.capacity
    decoder.buffer_updated(0)
    assert grown <= held + max(1024, held // 8) + 1024  # not the half it would be else
    capacities = _read_all(decoder, data[50_000:], tight=True)
    assert len(capacities) > 5
    packet = decoder.next_packet()
    assert isinstance(packet, Publish)
    assert packet.payload == b"y" * 100_000


def test_a_big_buffer_shrinks_when_the_next_packet_is_small() -> None:
    decoder = Decoder(1 << 22, protocol_level=MQTT_V5, read_size=1024)
    big = _publish("t", b"z" * 200_000)
    small = _publish("t", b"s" * 10)
    decoder.feed(big + small[:3])
    assert isinstance(decoder.next_packet(), Publish)
    assert decoder.capacity >= 200_000
    decoder.get_buffer(-1)  # the next read: a small packet pending, the buffer is cut down
    assert decoder.capacity <= 2 * 1024
    decoder.feed(small[3:])
    packet = decoder.next_packet()
    assert isinstance(packet, Publish) and packet.payload == b"s" * 10


def test_pinned_views_stay_valid_across_new_buffers() -> None:
    decoder = Decoder(MAX, protocol_level=MQTT_V5, read_size=64)
    first = _publish("a", b"1" * 300)
    second = _publish("b", b"2" * 300)
    decoder.feed(first + second[:10])
    packet = decoder.next_packet()
    assert isinstance(packet, Publish)
    decoder.detach()
    decoder.feed(second[10:])  # must not move the unconsumed bytes over the pinned payload
    later = decoder.next_packet()
    assert isinstance(later, Publish)
    assert packet.payload == b"1" * 300
    assert later.payload == b"2" * 300


def test_get_buffer_honours_a_larger_sizehint() -> None:
    decoder = Decoder(MAX, read_size=16)
    assert len(decoder.get_buffer(65536)) >= 65536
    assert len(decoder.get_buffer(-1)) >= 16


def test_buffer_updated_rejects_more_than_handed_out() -> None:
    decoder = Decoder(MAX, read_size=16)
    view = decoder.get_buffer(-1)
    with pytest.raises(ValueError):
        decoder.buffer_updated(len(view) + 1)


def test_too_large_is_refused_from_the_header_alone() -> None:
    decoder = Decoder(1000, protocol_level=MQTT_V5)
    decoder.feed(b"\x32\xe6\x07")  # Remaining Length 998 -> 1001 bytes in all
    with pytest.raises(PacketTooLarge) as info:
        decoder.next_packet()
    assert info.value.reason_code == ReasonCode.PACKET_TOO_LARGE == 0x95
    assert (info.value.size, info.value.limit) == (1001, 1000)
    assert decoder.capacity <= 2 * 65536


def test_max_packet_size_is_inclusive() -> None:
    data = _publish("t", b"x" * 100)
    decoder = Decoder(len(data), protocol_level=MQTT_V5)
    decoder.feed(data)
    assert isinstance(decoder.next_packet(), Publish)
    decoder = Decoder(len(data) - 1, protocol_level=MQTT_V5)
    decoder.feed(data)
    with pytest.raises(PacketTooLarge):
        decoder.next_packet()


def test_errors_are_sticky_and_annotated() -> None:
    decoder = Decoder(MAX, protocol_level=MQTT_V5)
    decoder.feed(b"\x30\x05\x00\x03a/+")
    with pytest.raises(MalformedPacket) as first:
        decoder.next_packet()
    decoder.feed(b"\xc0\x00")
    with pytest.raises(MalformedPacket) as again:
        decoder.next_packet()
    assert again.value is first.value
    assert first.value.packet_type == 3
    assert first.value.protocol_level == MQTT_V5


def test_packets_before_an_error_are_delivered() -> None:
    decoder = Decoder(MAX, protocol_level=MQTT_V311)
    decoder.feed(PINGREQ_BYTES + b"\x00\x00")
    assert decoder.next_packet() == Pingreq()
    with pytest.raises(ProtocolError):
        decoder.next_packet()


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        Decoder(1)
    with pytest.raises(ValueError):
        Decoder(MAX, protocol_level=3)
    with pytest.raises(ValueError):
        Decoder(MAX, server=False)


# -- encoders against the spec's layouts -----------------------------------------------------


@pytest.mark.parametrize(
    ("packet", "level", "expected"),
    [
        (Puback(1), MQTT_V5, "40 02 0001"),
        (Puback(1, 0x10), MQTT_V5, "40 03 0001 10"),
        (Puback(1, 0x10), MQTT_V311, "40 02 0001"),
        (Puback(1, 0x80, {"reason_string": "x"}), MQTT_V5, "40 08 0001 80 04 1f 0001 78"),
        (Pubrec(0xABCD, 0x97), MQTT_V5, "50 03 abcd 97"),
        (Pubrel(2), MQTT_V5, "62 02 0002"),
        (Pubrel(2), MQTT_V311, "62 02 0002"),
        (Pubcomp(2, 0x92), MQTT_V5, "70 03 0002 92"),
        (Connack(True, 0), MQTT_V311, "20 02 01 00"),
        (Connack(False, 0x84), MQTT_V311, "20 02 00 01"),
        (Connack(False, 0x85), MQTT_V311, "20 02 00 02"),
        (Connack(False, 0x89), MQTT_V311, "20 02 00 03"),
        (Connack(False, 0x86), MQTT_V311, "20 02 00 04"),
        (Connack(False, 0x87), MQTT_V311, "20 02 00 05"),
        (Connack(False, 0x84), MQTT_V5, "20 03 00 84 00"),
        (Connack(False, 0, {"receive_maximum": 16}), MQTT_V5, "20 06 00 00 03 21 0010"),
        (Suback(1, [1, 0x87, 0x9E, 2]), MQTT_V311, "90 06 0001 01 80 80 02"),
        (Suback(1, [1, 0x87, 0x9E, 2]), MQTT_V5, "90 07 0001 00 01 87 9e 02"),
        (Unsuback(1, [0, 0x11]), MQTT_V311, "b0 02 0001"),
        (Unsuback(1, [0, 0x11]), MQTT_V5, "b0 05 0001 00 00 11"),
        (Pingresp(), MQTT_V311, "d0 00"),
        (Pingreq(), MQTT_V5, "c0 00"),
        (Disconnect(), MQTT_V5, "e0 00"),
        (Disconnect(0x8E), MQTT_V5, "e0 01 8e"),
        (Disconnect(0x8E), MQTT_V311, "e0 00"),
        (Auth(), MQTT_V5, "f0 00"),
        (Auth(0x18, {"authentication_method": "m"}), MQTT_V5, "f0 06 18 04 15 0001 6d"),
        (Publish("a", b"x"), MQTT_V311, "30 04 0001 61 78"),
        (Publish("a", b"x"), MQTT_V5, "30 05 0001 61 00 78"),
        (
            Publish("a", b"", qos=1, packet_id=5, retain=True, dup=True),
            MQTT_V311,
            "3b 05 0001 61 0005",
        ),
    ],
)
def test_encoder_layout(packet: Packet, level: int, expected: str) -> None:
    assert encode(packet, level) == bytes.fromhex(expected)


def test_publish_header_leaves_the_payload_out() -> None:
    payload = memoryview(bytearray(b"p" * 70_000))
    packet = Publish("$file/x/0", payload, qos=1, packet_id=9)
    header = encode_publish_header(packet, MQTT_V5)
    assert len(header) < 32
    assert header + bytes(payload) == encode_publish(packet, MQTT_V5)
    decoder = Decoder(MAX, protocol_level=MQTT_V5)
    decoder.feed(header)
    decoder.feed(payload)
    decoded = decoder.next_packet()
    assert isinstance(decoded, Publish)
    assert decoded.payload == payload


@pytest.mark.parametrize(
    ("remaining", "encoded"),
    [
        (3, "03"),
        (127, "7f"),
        (128, "8001"),
        (16_383, "ff7f"),
        (16_384, "808001"),
        (2_097_151, "ffff7f"),
        (2_097_152, "80808001"),
    ],
)
def test_remaining_length_boundaries(remaining: int, encoded: str) -> None:
    """Table 1-1 (MQTT 5) / 2.4 (3.1.1): the Variable Byte Integer size boundaries."""
    data = encode(Publish("a", b"z" * (remaining - 3)), MQTT_V311)
    assert data[1 : 1 + len(encoded) // 2] == bytes.fromhex(encoded)
    decoder = Decoder(1 << 23, protocol_level=MQTT_V311)
    decoder.feed(data)
    decoded = decoder.next_packet()
    assert isinstance(decoded, Publish)
    assert len(decoded.payload) == remaining - 3


@pytest.mark.parametrize(
    "bad",
    [
        lambda: encode_connack(Connack(False, 0x81), MQTT_V311),  # no 3.1.1 equivalent
        lambda: encode_connack(Connack(False, 0x10), MQTT_V5),  # not a CONNACK code
        lambda: encode_puback(Puback(0), MQTT_V5),
        lambda: encode_puback(Puback(70_000), MQTT_V5),
        lambda: encode_puback(Puback(1, 0x92), MQTT_V5),  # a PUBREL code
        lambda: encode_suback(Suback(1, [3]), MQTT_V311),
        lambda: encode_unsuback(Unsuback(0), MQTT_V5),
        lambda: encode_disconnect(Disconnect(0x01), MQTT_V5),
        lambda: encode(Auth(), MQTT_V311),
        lambda: encode(Publish("t", b"", qos=3, packet_id=1), MQTT_V5),
        lambda: encode(Publish("t", b"", qos=0, packet_id=1), MQTT_V5),
        lambda: encode(Publish("t", b"", qos=0, dup=True), MQTT_V5),
        lambda: encode(Publish("t", b"", qos=1), MQTT_V5),
        lambda: encode(Publish("t" * 65_536, b""), MQTT_V5),
        lambda: encode(Publish("\ud800", b""), MQTT_V5),
        lambda: encode(Publish("t", b"", properties={"session_expiry_interval": 1}), MQTT_V5),
        lambda: encode(Publish("t", b"", properties={"topic_alias": 70_000}), MQTT_V5),
        lambda: encode(Publish("t", b"", properties={"bogus": 1}), MQTT_V5),  # type: ignore[typeddict-unknown-key]
        lambda: encode(
            Subscribe(1, [("a", SubscriptionOptions())], {"subscription_identifiers": [1, 2]}),
            MQTT_V5,
        ),
        lambda: encode(Subscribe(1, [("a", SubscriptionOptions(qos=3))]), MQTT_V5),
        lambda: encode(Connect("c", protocol_level=4, password=b"p"), MQTT_V311),
        lambda: encode(Connect("c", protocol_level=3), 3),
        lambda: encode(Puback(1), 3),
    ],
)
def test_encoders_refuse_what_cannot_be_sent(bad: object) -> None:
    with pytest.raises(ValueError):
        bad()  # type: ignore[operator]


def test_v5_password_without_username_round_trips() -> None:
    data = encode(Connect("c", protocol_level=MQTT_V5, password=b"token"), MQTT_V5)
    decoder = Decoder(MAX)
    decoder.feed(data)
    assert decoder.next_packet() == Connect("c", protocol_level=MQTT_V5, password=b"token")


def test_empty_topic_with_alias_is_reported_for_the_session() -> None:
    data = encode(Publish("", b"x", properties={"topic_alias": 7}), MQTT_V5)
    decoder = Decoder(MAX, protocol_level=MQTT_V5)
    decoder.feed(data)
    packet = decoder.next_packet()
    assert isinstance(packet, Publish)
    assert (packet.topic, packet.properties) == ("", {"topic_alias": 7})


def test_pingresp_and_pingreq_constants() -> None:
    assert encode(Pingreq(), MQTT_V311) == PINGREQ_BYTES
    assert encode(Pingresp(), MQTT_V5) == PINGRESP_BYTES


# -- topic helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "valid"),
    [
        ("a/b", True),
        ("#", True),
        ("a/#", True),
        ("+", True),
        ("+/+/c", True),
        ("/", True),
        ("$share/g/a/+", True),
        ("$share/g/#", True),
        ("", False),
        ("a#", False),
        ("a/#/b", False),
        ("a+/b", False),
        ("a/b+", False),
        ("$share/g", False),
        ("$share//a", False),
        ("$share/g+/a", False),
        ("$share/g/", False),
        ("a\x00b", False),
    ],
)
def test_topic_filter_validity(topic_filter: str, valid: bool) -> None:
    assert is_valid_topic_filter(topic_filter) is valid


def test_topic_name_validity() -> None:
    assert is_valid_topic_name("$file/a/0")
    assert not is_valid_topic_name("")
    assert not is_valid_topic_name("a/+")
    assert not is_valid_topic_name("a/#")
    assert not is_valid_topic_name("a\x00")

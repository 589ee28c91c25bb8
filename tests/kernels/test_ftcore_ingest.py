"""The native segment path (``ftcore._ingest.SegmentPath``) and its pure twin.

The MQTT bytes are built here by hand from the MQTT specification (a few lines, sharing no
code with ftserver's codec), so the tests are an independent check of what the path takes and
where it stops. Every test runs on both flavours, and a property test feeds the same random
streams to both and compares everything they did.
"""

from __future__ import annotations

import hashlib
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ftcore._core
import ftcore._ingest
import ftcore._pure
import ftcore._pure_ingest

FLAVOURS: dict[str, tuple[types.ModuleType, types.ModuleType]] = {
    "cython": (ftcore._core, ftcore._ingest),
    "python": (ftcore._pure, ftcore._pure_ingest),
}
MAX_FILE = 1 << 30
MAX_PACKET = 1 << 20


@pytest.fixture(params=sorted(FLAVOURS))
def kit(request: pytest.FixtureRequest) -> tuple[types.ModuleType, types.ModuleType]:
    return FLAVOURS[request.param]


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(
    topic: str | bytes,
    payload: bytes,
    pid: int,
    *,
    level: int = 5,
    qos: int = 1,
    retain: bool = False,
    dup: bool = False,
    props: bytes = b"",
) -> bytes:
    """A PUBLISH as MQTT 3.1.1 §3.3 / MQTT 5 §3.3 lay it out."""
    t = topic.encode() if isinstance(topic, str) else topic
    body = len(t).to_bytes(2, "big") + t
    if qos:
        body += pid.to_bytes(2, "big")
    if level == 5:
        body += varint(len(props)) + props
    body += payload
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    return bytes([first]) + varint(len(body)) + body


def puback(pid: int) -> bytes:
    return bytes((0x40, 2, pid >> 8, pid & 0xFF))


def make(
    kit: tuple[types.ModuleType, types.ModuleType], tmp: Path, level: int = 5, **kw: int
) -> tuple[object, object]:
    core, ingest = kit
    asm = core.Assembler(tmp / "data")
    path = ingest.SegmentPath(level, kw.get("max_file", MAX_FILE), kw.get("max_packet", MAX_PACKET))
    path.open("f1", asm)
    return path, asm


@pytest.mark.parametrize("level", [4, 5])
def test_in_order_segments_are_taken_placed_hashed_and_acknowledged(
    kit: tuple[types.ModuleType, types.ModuleType], tmp_path: Path, level: int
) -> None:
    path, asm = make(kit, tmp_path, level)
    data = hashlib.sha256(b"x").digest() * 3000  # 96 000 bytes
    seg = 4096
    stream = b"".join(
        publish(f"$file/f1/{o}", data[o : o + seg], 1 + o // seg, level=level, dup=o == seg)
        for o in range(0, len(data), seg)
    )
    assert path.feed(stream, 0, len(stream)) == len(stream)
    n = -(-len(data) // seg)
    assert path.take_acks() == b"".join(puback(1 + k) for k in range(n))
    assert path.take_placed() == [("f1", 0, len(data))]
    assert path.take_placed() == [] and path.take_acks() == b""
    assert (path.segments, path.payload_bytes) == (n, len(data))
    assert asm.prefix == asm.hashed == len(data)
    assert asm.digest(len(data)) == hashlib.sha256(data).digest()
    assert (tmp_path / "data").read_bytes() == data


STOPPERS = {
    "qos0": lambda: publish("$file/f1/10", b"y" * 5, 0, qos=0),
    "qos2": lambda: publish("$file/f1/10", b"y" * 5, 7, qos=2),
    "retain": lambda: publish("$file/f1/10", b"y" * 5, 7, retain=True),
    "properties": lambda: publish("$file/f1/10", b"y" * 5, 7, props=b"\x23\x00\x01"),
    "checksum level": lambda: publish("$file/f1/10/" + "0" * 64, b"y" * 5, 7),
    "gap": lambda: publish("$file/f1/11", b"y" * 5, 7),
    "rewrite": lambda: publish("$file/f1/9", b"y" * 5, 7),
    "unknown transfer": lambda: publish("$file/f2/10", b"y" * 5, 7),
    "async": lambda: publish("$file-async/f1/10", b"y" * 5, 7),
    "init": lambda: publish("$file/f1/init", b"{}", 7),
    "fin": lambda: publish("$file/f1/fin/15", b"", 7),
    "three levels": lambda: publish("$file/f1/x/10", b"y" * 5, 7),
    "sign": lambda: publish("$file/f1/+10", b"y" * 5, 7),
    "21 digits": lambda: publish("$file/f1/" + "0" * 11 + "0000000010", b"y" * 5, 7),
    "beyond max file size": lambda: publish("$file/f1/10", b"y" * 45, 7),
    "empty payload": lambda: publish("$file/f1/10", b"", 7),
    "packet id 0": lambda: publish("$file/f1/10", b"y" * 5, 0),
    "too large packet": lambda: publish("$file/f1/" + "0" * 18 + "10", b"y" * 40, 7),
    "other packet": lambda: b"\xc0\x00",  # PINGREQ
    # Remaining Length 21 written in two bytes: malformed (MQTT-1.5.5-1), the decoder's case
    "long length": lambda: b"\x32\x95\x00" + publish("$file/f1/10", b"y" * 5, 7)[2:],
}


@pytest.mark.parametrize("name", sorted(STOPPERS))
def test_stops_at_the_first_packet_it_does_not_take(
    kit: tuple[types.ModuleType, types.ModuleType], tmp_path: Path, name: str
) -> None:
    path, asm = make(kit, tmp_path, max_file=50, max_packet=70)
    head = publish("$file/f1/0", b"a" * 10, 1)
    good_after = publish("$file/f1/10", b"b" * 5, 2)
    stream = head + STOPPERS[name]() + good_after
    assert path.feed(stream, 0, len(stream)) == len(head)
    assert path.take_acks() == puback(1)
    assert path.take_placed() == [("f1", 0, 10)]
    assert asm.prefix == 10


def test_incomplete_packets_wait_at_every_split_point(
    kit: tuple[types.ModuleType, types.ModuleType], tmp_path: Path
) -> None:
    packets = [publish(f"$file/f1/{k * 300}", bytes([k]) * 300, k + 1) for k in range(4)]
    stream = b"".join(packets)
    bounds = [0]
    for p in packets:
        bounds.append(bounds[-1] + len(p))
    for cut in range(len(stream) + 1):
        (tmp_path / str(cut)).mkdir()
        path, _ = make(kit, tmp_path / str(cut))
        got = path.feed(stream, 0, cut)
        assert got == max(b for b in bounds if b <= cut)
        assert path.feed(stream, got, len(stream)) == len(stream)


def test_budget_limits_the_bytes_taken(
    kit: tuple[types.ModuleType, types.ModuleType], tmp_path: Path
) -> None:
    path, asm = make(kit, tmp_path)
    stream = b"".join(publish(f"$file/f1/{k * 100}", b"z" * 100, k + 1) for k in range(5))
    one = len(stream) // 5
    assert path.feed(stream, 0, len(stream), 250) == 2 * one
    assert path.feed(stream, 2 * one, len(stream), 0) == 2 * one
    assert path.feed(stream, 2 * one, len(stream), None) == len(stream)
    assert asm.prefix == 500


def test_filling_a_gap_absorbs_what_was_placed_beyond_it(
    kit: tuple[types.ModuleType, types.ModuleType], tmp_path: Path
) -> None:
    path, asm = make(kit, tmp_path)
    data = bytes(range(256)) * 40
    asm.place(4000, data[4000:])  # arrived earlier, out of order
    stream = publish("$file/f1/0", data[:4000], 9)
    assert path.feed(stream, 0, len(stream)) == len(stream)
    assert asm.prefix == asm.hashed == len(data)
    assert asm.digest(len(data)) == hashlib.sha256(data).digest()
    assert path.take_placed() == [("f1", 0, len(data))]


def test_closed_and_unregistered_transfers_go_the_slow_way(
    kit: tuple[types.ModuleType, types.ModuleType], tmp_path: Path
) -> None:
    path, asm = make(kit, tmp_path)
    stream = publish("$file/f1/0", b"q" * 10, 1)
    path.close("f1")
    assert "f1" not in path and len(path) == 0
    assert path.feed(stream, 0, len(stream)) == 0
    path.open("f1", asm)
    asm.close()
    assert path.feed(stream, 0, len(stream)) == 0


def test_closing_a_touched_transfer_before_taking_its_ranges_is_refused(
    kit: tuple[types.ModuleType, types.ModuleType], tmp_path: Path
) -> None:
    path, _ = make(kit, tmp_path)
    stream = publish("$file/f1/0", b"q" * 10, 1)
    assert path.feed(stream, 0, len(stream)) == len(stream)
    with pytest.raises(RuntimeError):
        path.close("f1")
    assert path.take_placed() == [("f1", 0, 10)]
    path.close("f1")


def test_non_ascii_file_ids_match_their_utf8_topic_level(
    kit: tuple[types.ModuleType, types.ModuleType], tmp_path: Path
) -> None:
    core, ingest = kit
    path = ingest.SegmentPath(4, MAX_FILE, MAX_PACKET)
    asm = core.Assembler(tmp_path / "d")
    path.open("файл-1", asm)
    stream = publish("$file/файл-1/0", b"r" * 7, 3, level=4)
    assert path.feed(stream, 0, len(stream)) == len(stream)
    assert path.take_placed() == [("файл-1", 0, 7)]


# -- both flavours against each other ----------------------------------------------------------

KINDS = sorted(STOPPERS) + ["good"] * 12


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=12),
    sizes=st.lists(st.integers(1, 40), min_size=12, max_size=12),
    level=st.sampled_from([4, 5]),
    budget=st.one_of(st.none(), st.integers(0, 400)),
)
def test_both_flavours_take_the_same_packets(
    tmp_path_factory: pytest.TempPathFactory,
    kinds: list[str],
    sizes: list[int],
    level: int,
    budget: int | None,
) -> None:
    results = []
    for name in sorted(FLAVOURS):
        tmp = tmp_path_factory.mktemp(name)
        path, asm = make(FLAVOURS[name], tmp, level, max_file=300, max_packet=120)
        offset, parts = 0, []
        for k, kind in enumerate(kinds):
            if kind == "good":
                n = sizes[k]
                parts.append(publish(f"$file/f1/{offset}", bytes([k]) * n, k + 1, level=level))
                offset += n
            else:
                parts.append(STOPPERS[kind]())
        stream = b"".join(parts)
        pos = path.feed(stream, 0, len(stream), budget)
        results.append(
            (pos, path.take_acks(), path.take_placed(), asm.dumps(), (tmp / "data").read_bytes())
        )
    assert results[0] == results[1]

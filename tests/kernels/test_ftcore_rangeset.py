"""RangeSet: unit cases, and hypothesis against a byte-bitmap oracle, on both flavours."""

from __future__ import annotations

import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flavours import KERNELS


def bitmap_gaps(present: bytearray, size: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    start = None
    for pos in range(size):
        have = pos < len(present) and present[pos]
        if not have and start is None:
            start = pos
        elif have and start is not None:
            out.append((start, pos))
            start = None
    if start is not None:
        out.append((start, size))
    return out


def bitmap_intervals(present: bytearray) -> list[tuple[int, int]]:
    return [g for g in bitmap_gaps(bytearray(1 - b for b in present), len(present))]


def test_in_order_appends_merge(impl: types.ModuleType) -> None:
    rs = impl.RangeSet()
    for k in range(1000):
        assert rs.add(k * 10, k * 10 + 10) == 10
    assert list(rs) == [(0, 10000)]
    assert len(rs) == 1
    assert rs.prefix == rs.covered == 10000
    assert rs.complete(10000) and not rs.complete(10001)


def test_overlap_and_neighbours(impl: types.ModuleType) -> None:
    rs = impl.RangeSet()
    assert rs.add(100, 200) == 100
    assert rs.add(300, 400) == 100
    assert rs.prefix == 0
    assert rs.gaps(500) == [(0, 100), (200, 300), (400, 500)]
    assert rs.gaps(500, 2) == [(0, 100), (200, 300)]
    assert rs.gaps(500, 0) == []
    assert rs.gaps(250) == [(0, 100), (200, 250)]
    assert rs.add(150, 350) == 100  # bridges both
    assert list(rs) == [(100, 400)]
    assert rs.add(400, 450) == 50  # adjacent at the end
    assert rs.add(50, 100) == 50  # adjacent at the start
    assert list(rs) == [(50, 450)]
    assert rs.add(0, 500) == 100
    assert list(rs) == [(0, 500)] and rs.covered == 500 and rs.prefix == 500
    assert rs.add(10, 20) == 0
    assert rs.add(7, 7) == 0


def test_contains(impl: types.ModuleType) -> None:
    rs = impl.RangeSet()
    rs.add(10, 20)
    rs.add(30, 40)
    assert rs.contains(10, 20) and rs.contains(12, 13) and rs.contains(35, 40)
    assert not rs.contains(9, 11) and not rs.contains(15, 31) and not rs.contains(19, 21)
    assert not rs.contains(40, 41) and not rs.contains(0, 1)
    assert rs.contains(5, 5)


def test_clip(impl: types.ModuleType) -> None:
    rs = impl.RangeSet()
    for s, e in [(0, 10), (20, 30), (40, 50)]:
        rs.add(s, e)
    rs.clip(25)
    assert list(rs) == [(0, 10), (20, 25)] and rs.covered == 15
    rs.clip(20)
    assert list(rs) == [(0, 10)]
    rs.clip(0)
    assert list(rs) == [] and rs.covered == 0


def test_bad_arguments(impl: types.ModuleType) -> None:
    rs = impl.RangeSet()
    with pytest.raises(ValueError):
        rs.add(-1, 5)
    with pytest.raises(ValueError):
        rs.add(10, 5)
    with pytest.raises(ValueError):
        rs.add(0, 1 << 63)
    with pytest.raises((ValueError, OverflowError)):
        rs.gaps(-1)


def test_loads_rejects_malformed(impl: types.ModuleType) -> None:
    good = impl.RangeSet()
    good.add(0, 5)
    good.add(10, 20)
    data = good.dumps()
    assert impl.RangeSet.loads(data) == good
    for bad in [
        b"",
        b"XXXX" + data[4:],
        data[:-1],
        data + b"\0",
        # overlapping intervals
        data[:12] + (0).to_bytes(8, "little") + (15).to_bytes(8, "little") + data[28:],
        # adjacent intervals (must have been merged)
        data[:12] + (0).to_bytes(8, "little") + (10).to_bytes(8, "little") + data[28:],
        # empty interval
        data[:12] + (5).to_bytes(8, "little") + (5).to_bytes(8, "little") + data[28:],
    ]:
        with pytest.raises(ValueError):
            impl.RangeSet.loads(bad)


ranges = st.lists(
    st.tuples(st.integers(0, 300), st.integers(0, 60)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ranges, st.integers(0, 400), st.integers(0, 400), st.integers(0, 60))
def test_matches_bitmap_oracle(
    spans: list[tuple[int, int]], size: int, probe: int, probe_len: int
) -> None:
    present = bytearray(400)
    sets = {name: mod.RangeSet() for name, mod in KERNELS.items()}
    for start, end in spans:
        expected_new = sum(1 for p in range(start, end) if not present[p])
        for p in range(start, end):
            present[p] = 1
        for rs in sets.values():
            assert rs.add(start, end) == expected_new
    intervals = bitmap_intervals(present)
    prefix = intervals[0][1] if intervals and intervals[0][0] == 0 else 0
    for rs in sets.values():
        assert list(rs) == intervals
        assert rs.covered == sum(present)
        assert rs.prefix == prefix
        assert rs.complete(size) == all(present[:size])
        assert rs.gaps(size) == bitmap_gaps(present, size)
        assert rs.gaps(size, 3) == bitmap_gaps(present, size)[:3]
        want = all(present[probe : probe + probe_len]) if probe + probe_len <= 400 else False
        assert rs.contains(probe, probe + probe_len) == (want or probe_len == 0)
    dumps = {name: rs.dumps() for name, rs in sets.items()}
    assert dumps["cython"] == dumps["python"]
    for mod in KERNELS.values():
        assert list(mod.RangeSet.loads(dumps["cython"])) == intervals


@settings(max_examples=100, deadline=None)
@given(ranges, st.integers(0, 400))
def test_clip_matches_oracle(spans: list[tuple[int, int]], size: int) -> None:
    present = bytearray(400)
    sets = [mod.RangeSet() for mod in KERNELS.values()]
    for start, end in spans:
        present[start:end] = b"\x01" * (end - start)
        for rs in sets:
            rs.add(start, end)
    present[size:] = bytes(len(present) - size)
    for rs in sets:
        rs.clip(size)
        assert list(rs) == bitmap_intervals(present)
        assert rs.covered == sum(present)

"""Pure-Python twin of ``ftcore._ingest.SegmentPath`` (see there): the reference it is tested
against, with the same rules written plainly."""

from __future__ import annotations

from typing import Any

from ftcore._pure import Assembler

_MAX_OFFSET = (1 << 63) - 1
_PREFIX = b"$file/"


class _Slot:
    __slots__ = ("asm", "file_id", "run_start", "touched")

    def __init__(self, file_id: str, asm: Assembler) -> None:
        self.file_id = file_id
        self.asm = asm
        self.run_start = 0
        self.touched = False


class SegmentPath:
    def __init__(self, protocol_level: int, max_file_size: int, max_packet_size: int) -> None:
        if protocol_level not in (4, 5):
            raise ValueError(f"unsupported protocol level {protocol_level}")
        self.protocol_level = protocol_level
        self.max_file_size = max_file_size
        self.max_packet_size = max_packet_size
        self.segments = 0
        self.payload_bytes = 0
        self._slots: dict[bytes, _Slot] = {}
        self._touched: list[_Slot] = []
        self._acks = bytearray()

    def open(self, file_id: str, assembler: Any) -> None:
        key = file_id.encode("utf-8")
        old = self._slots.get(key)
        if old is not None and old.touched:
            raise RuntimeError("take_placed() before replacing a touched transfer")
        self._slots[key] = _Slot(file_id, assembler)

    def close(self, file_id: str) -> None:
        key = file_id.encode("utf-8")
        old = self._slots.get(key)
        if old is not None and old.touched:
            raise RuntimeError("take_placed() before closing a touched transfer")
        self._slots.pop(key, None)

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, file_id: str) -> bool:
        return file_id.encode("utf-8") in self._slots

    def _take(self, b: memoryview, pos: int, end: int, left: int) -> int:
        """The size of the fast-path segment at ``pos``, after placing it; 0 to stop."""
        if b[pos] not in (0x32, 0x3A):
            return 0
        p, rl, shift = pos + 1, 0, 0
        while True:
            if p >= end or p - pos > 4:
                return 0
            rl |= (b[p] & 0x7F) << shift
            shift += 7
            p += 1
            if not b[p - 1] & 0x80:
                break
        if p - pos > 2 and b[p - 1] == 0:
            return 0  # not the shortest encoding (MQTT-1.5.5-1)
        total = p - pos + rl
        if total > end - pos or total > self.max_packet_size or rl < 2:
            return 0
        tlen = int.from_bytes(b[p : p + 2], "big")
        p += 2
        if tlen < 8 or p + tlen + 2 > pos + total:
            return 0
        topic = bytes(b[p : p + tlen])
        if not topic.startswith(_PREFIX):
            return 0
        fid, sep, rest = topic[6:].partition(b"/")
        if not fid or not sep or not 1 <= len(rest) <= 20 or not rest.isdigit():
            return 0
        offset = int(rest)
        if offset > _MAX_OFFSET:
            return 0
        p += tlen
        pid = int.from_bytes(b[p : p + 2], "big")
        p += 2
        if pid == 0:
            return 0
        if self.protocol_level == 5:
            if p >= pos + total or b[p] != 0:
                return 0
            p += 1
        payload = b[p : pos + total]
        n = len(payload)
        if n == 0 or n > left:
            return 0
        slot = self._slots.get(fid)
        if slot is None:
            return 0
        asm = slot.asm
        if asm.file.closed or offset != asm._hashed or offset != asm.ranges.prefix:
            return 0
        if offset + n > self.max_file_size:
            return 0
        try:
            asm.file.write(offset, payload)
        except OSError:
            return 0
        if not slot.touched:
            slot.touched = True
            slot.run_start = offset
            self._touched.append(slot)
        asm.ranges.add(offset, offset + n)
        asm._hash.update(payload)
        asm._hashed = offset + n
        if asm.ranges.prefix > asm._hashed:
            asm._absorb_from_file(asm._hashed, asm.ranges.prefix)
        self._acks += bytes((0x40, 2, pid >> 8, pid & 0xFF))
        self.segments += 1
        self.payload_bytes += n
        return total

    def feed(self, buf: Any, start: int, end: int, budget: int | None = None) -> int:
        b = memoryview(buf).cast("B")
        if start < 0 or end > len(b) or start > end:
            raise ValueError("bad buffer bounds")
        left = _MAX_OFFSET if budget is None else max(budget, 0)
        pos = start
        while pos < end:
            before = self.payload_bytes
            size = self._take(b, pos, end, left)
            if not size:
                break
            left -= self.payload_bytes - before
            pos += size
        return pos

    def take_acks(self) -> bytes:
        out = bytes(self._acks)
        self._acks.clear()
        return out

    def take_placed(self) -> list[tuple[str, int, int]]:
        out = [(s.file_id, s.run_start, s.asm._hashed) for s in self._touched]
        for s in self._touched:
            s.touched = False
        self._touched = []
        return out

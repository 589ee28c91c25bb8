"""One simulated device uploading the same files by HTTP PUT (baseline e), resumable.

A lean HTTP/1.1 client on ``asyncio.Protocol``: one keep-alive connection per device, each
file one ``PUT /upload/{clientId}/{fileId}/{name}`` whose body is written segment by segment
(memoryviews of the content pool, flow control by ``pause_writing``). After a dropped
connection the device asks ``HEAD`` for the ``Upload-Offset`` the server holds and resumes
with ``Content-Range`` (the tus idea), so churn costs it what it costs MQTT: the bytes in
flight, not the file.
"""

from __future__ import annotations

import asyncio
import time

from bench.loadgen.context import Context
from bench.loadgen.device import Device

HIGH_WATER = 1 << 20


class HttpDevice(Device, asyncio.Protocol):
    def __init__(self, ctx: Context, index: int) -> None:
        super().__init__(ctx, index)
        self._paused = False
        self._buf = bytearray()
        self._method = ""
        self._path = ""
        self._size = 0
        self._body_off = 0
        self._body_end = 0
        self._segments_sent = 0
        self._fin_t = 0.0
        self._name = ""
        self._file_id = ""
        self._in_put = False  # a PUT's header went out on this connection: its body may follow

    # -- connection ----------------------------------------------------------------------

    async def connect(self) -> None:
        await self.ctx.loop.create_connection(lambda: self, self.spec.host, self.spec.port)
        assert self.transport is not None
        self.transport.set_write_buffer_limits(high=HIGH_WATER)
        self._paused = False
        self._buf.clear()
        self.up = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._in_put = False
        if self._lost():
            self._reconnect_soon()

    def _resumed(self) -> None:
        if self._size or self._path:
            self._head()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._pump_body()

    async def close(self) -> None:
        self.stopping = True
        if self.transport is not None:
            self.transport.abort()

    # -- uploading -----------------------------------------------------------------------

    def begin(self) -> None:
        self._arm_churn()
        self._start_file()

    def _start_file(self) -> None:
        nxt = self._next_file()
        if nxt is None:
            self._path = ""
            self._size = 0
            return
        self._file_id, self._size = nxt
        self._name = f"{self._file_id}.bin"
        self._path = f"/upload/{self.client_id}/{self._file_id}/{self._name}"
        self._segments_sent = 0
        self._put(0)

    def _put(self, offset: int) -> None:
        assert self.transport is not None
        size = self._size
        lines = [f"PUT {self._path} HTTP/1.1", "Host: bench", f"Content-Length: {size - offset}"]
        if offset:
            lines.append(f"Content-Range: bytes {offset}-{size - 1}/{size}")
        if self.spec.checksum in ("file", "both"):
            lines.append(f"X-Checksum-SHA256: {self.ctx.content.file_sha256(size)}")
        self._method = "PUT"
        self._in_put = True
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.stats.wire_bytes += len(head)
        self.transport.write(head)
        self._body_off = offset
        self._body_end = size
        self._pump_body()

    def _head(self) -> None:
        assert self.transport is not None
        self._method = "HEAD"
        self._in_put = False
        head = f"HEAD {self._path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        self.stats.wire_bytes += len(head)
        self.transport.write(head)

    def _resume(self) -> None:
        self._pump_body()

    def _pump_body(self) -> None:
        tr = self.transport
        content = self.ctx.content
        seg = self.spec.segment
        stop = self.spec.stop_after
        if not self._in_put:
            return  # released while reconnecting: the PUT after the HEAD sends the body
        while not self._paused and tr is not None and self._body_off < self._body_end:
            if stop and self._segments_sent >= stop and not self.ctx.released:
                self._hold(self._resume)
                return
            off = self._body_off
            length = min(seg, self._body_end - off)
            tr.write(content.segment(off, length))
            self.stats.wire_bytes += length
            self._body_off = off + length
            self._segments_sent += 1
            self.stats.sent_bytes += length
            if self._body_off >= self._body_end:
                self._fin_t = time.perf_counter()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while True:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(buf[:head_end]).decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            length = 0 if self._method == "HEAD" else int(headers.get("content-length", "0"))
            if len(buf) < head_end + 4 + length:
                return
            body = bytes(buf[head_end + 4 : head_end + 4 + length])
            del buf[: head_end + 4 + length]
            status = int(head[0].split()[1])
            self._response(status, headers, body)

    def _response(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self._in_put = False
        stats = self.stats
        self._answered()
        if status == 409 and self.transport is not None:
            # answered before its body was read: this connection is out of step; a new one
            # asks HEAD for the offset
            self.transport.abort()
            return
        if self._method == "HEAD":
            offset = int(headers.get("upload-offset", "0"))
            if headers.get("upload-complete") == "1" and offset == self._size:
                self._done(True)
            else:
                stats.resent += max(0, self._body_off - offset) // max(1, self.spec.segment)
                self._put(offset)
            return
        if status in (200, 201):
            stats.segments += self._segments_sent
            self._done(True)
        else:
            stats.error(f"{self.client_id}: PUT {self._path}: HTTP {status} {body[:80]!r}",
                        f"HTTP {status}")  # fmt: skip
            self._done(False)

    def _done(self, ok: bool) -> None:
        if ok:
            self._file_ok(self._file_id, self._name, self._size, self._fin_t)
        self._start_file()

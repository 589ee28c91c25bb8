"""One simulated device writing the same MQTT bytes into a server that discards them.

The transport ceiling: the CONNECT, every init, segment and fin PUBLISH go out as fast as the
socket takes them (flow control by ``pause_writing``), nothing is acknowledged. At the end the
device half-closes; the discard server answers with the number of bytes it received, which
must equal what was sent.
"""

from __future__ import annotations

import asyncio
import json

from bench.loadgen.context import Context
from ftserver.mqtt import codec
from ftserver.mqtt.packets import Connect, Publish

HIGH_WATER = 1 << 20
BATCH = 64


class RawDevice(asyncio.Protocol):
    def __init__(self, ctx: Context, index: int) -> None:
        self.ctx = ctx
        self.spec = ctx.spec
        self.stats = ctx.stats
        self.client_id = f"{self.spec.tag}-{index}"
        self._sizes = ctx.files(index)
        self._file_no = 0
        self.transport: asyncio.Transport | None = None
        self.finished: asyncio.Future[None] = ctx.loop.create_future()
        self._paused = False
        self._sent = 0
        self._reply = bytearray()
        self._size = 0
        self._off = -1  # -1: the file's init is next; size: its fin is next
        self._prefix = ""
        self._done_bytes = 0
        self._done_files = 0
        self._pid = 0
        self._eof = False
        self._eof_sent = False
        self._segments = 0

    async def connect(self) -> None:
        await self.ctx.loop.create_connection(lambda: self, self.spec.host, self.spec.port)
        assert self.transport is not None
        self.transport.set_write_buffer_limits(high=HIGH_WATER)
        self._write([codec.encode_connect(Connect(self.client_id, self.spec.mqtt_version))])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.finished.done():
            self.stats.error(
                f"{self.client_id}: connection lost before the reply ({exc!r})", "lost"
            )
            self.finished.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._pump()

    def begin(self) -> None:
        self._next_file()
        self._pump()

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _next_file(self) -> bool:
        size = next(self._sizes, None)
        if size is None:
            return False
        self._file_no += 1
        self._size = size
        self._off = -1
        self._prefix = f"$file/{self.client_id}.{self._file_no}/"
        return True

    def _publish(
        self, out: list[bytes | memoryview], topic: str, payload: bytes | memoryview
    ) -> None:
        self._pid = self._pid % 65535 + 1
        pub = Publish(topic, payload, 1, False, False, self._pid)
        out.append(codec.encode_publish_header(pub, self.spec.mqtt_version))
        if len(payload):
            out.append(payload)

    def _pump(self) -> None:
        content = self.ctx.content
        seg = self.spec.segment
        while not self._paused and not self._eof and self.transport is not None:
            out: list[bytes | memoryview] = []
            for _ in range(BATCH):
                size, off = self._size, self._off
                if off < 0:
                    meta = json.dumps({"name": "f.bin", "size": size}).encode()
                    self._publish(out, self._prefix + "init", meta)
                    self._off = 0
                elif off < size:
                    length = min(seg, size - off)
                    self._publish(out, self._prefix + str(off), content.segment(off, length))
                    self.stats.sent_bytes += length
                    self._segments += 1
                    self._off = off + length
                else:
                    self._publish(out, f"{self._prefix}fin/{size}", b"")
                    self._done_bytes += size
                    self._done_files += 1
                    if not self._next_file():
                        self._eof = True
                        break
            self._write(out)
        if self._eof and not self._eof_sent and self.transport is not None:
            self._eof_sent = True
            self.transport.write_eof()  # sent once the buffered bytes are out

    def _write(self, out: list[bytes | memoryview]) -> None:
        assert self.transport is not None
        n = sum(map(len, out))
        self._sent += n
        self.stats.wire_bytes += n
        self.transport.writelines(out)

    def data_received(self, data: bytes) -> None:
        self._reply += data

    def eof_received(self) -> bool:
        try:
            got = int(self._reply.decode() or "-1")
        except ValueError:
            got = -1
        if got != self._sent:
            self.stats.error(
                f"{self.client_id}: discard server got {got} bytes, sent {self._sent}", "raw count"
            )
        else:
            self.stats.raw_bytes_confirmed += got
            self.stats.files += self._done_files
            self.stats.bytes += self._done_bytes
            self.stats.segments += self._segments
        if not self.finished.done():
            self.finished.set_result(None)
        return False

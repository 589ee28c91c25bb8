"""One simulated device speaking MQTT: pipelined file-transfer commands, no task per segment.

The device is an ``asyncio.BufferedProtocol`` over ftserver's own IO-free codec: the PUBACKs
of a read are decoded in one pass, each frees a window slot, the slots are refilled at once
and the whole batch goes out in one ``writelines`` (headers built by the codec, payloads as
memoryviews of the content pool, never copied). A dropped connection (churn, or the server
killed) moves every unacknowledged command to a resend list; the device reconnects with the
same client id and resends them: the server keeps the transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from bench.loadgen.context import Context
from bench.loadgen.device import Device, Refused
from ftserver.mqtt import codec
from ftserver.mqtt.codec import Decoder, ProtocolError
from ftserver.mqtt.packets import (
    Connack,
    Connect,
    Disconnect,
    Properties,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionOptions,
)

SEG, INIT, FIN = 0, 1, 2
CONNECT_TIMEOUT = 30.0
MAX_PACKET = 1 << 20  # what the device accepts (response documents are small)


class Job:
    """The file a device is uploading."""

    __slots__ = (
        "acked",
        "file_id",
        "fin_acked",
        "fin_doc",
        "fin_sent",
        "fin_t",
        "init_sent",
        "name",
        "next_off",
        "prefix",
        "resend",
        "sent",
        "size",
    )

    def __init__(self, prefix: str, file_id: str, size: int) -> None:
        self.file_id = file_id
        self.size = size
        self.name = f"{file_id}.bin"
        self.prefix = f"{prefix}/{file_id}/"
        self.next_off = 0
        self.sent = 0  # segments sent once (not counting resends)
        self.acked = 0
        self.init_sent = False
        self.fin_sent = False
        self.fin_acked = False
        self.fin_doc: int | None = None  # reason code of the fin's response document
        self.fin_t = 0.0
        self.resend: list[tuple[int, int, int]] = []


class MqttDevice(Device, asyncio.BufferedProtocol):
    def __init__(self, ctx: Context, index: int) -> None:
        super().__init__(ctx, index)
        spec = self.spec
        self.level = spec.mqtt_version
        self.prefix = "$file-async" if spec.mode == "async" else "$file"
        self.subscribe = spec.fin_by_document
        self.response_topic = f"$file-response/{self.client_id}"
        self.ok = spec.ok_codes
        self.job: Job | None = None
        self.inflight: dict[int, tuple[int, int, int]] = {}
        self.window = spec.window
        self.decoder = Decoder(MAX_PACKET, server=False, protocol_level=self.level)
        self.holding = False  # at stop_after, waiting for the driver
        self._pid = 0
        self._out: list[bytes | memoryview] = []
        self._waiter: asyncio.Future[Any] | None = None
        self._fin_props: Properties = {}
        if spec.target == "naive":
            # the subscriber answers a fin on its MQTT 5 Response Topic (it cannot know the
            # publisher's client id otherwise)
            self._fin_props = {"response_topic": self.response_topic}

    # -- connection ----------------------------------------------------------------------

    async def connect(self) -> None:
        loop = self.ctx.loop
        self.decoder = Decoder(MAX_PACKET, server=False, protocol_level=self.level)
        self._waiter = loop.create_future()
        await loop.create_connection(lambda: self, self.spec.host, self.spec.port)
        props: Properties = {"receive_maximum": 65535} if self.level == 5 else {}
        self._write(codec.encode_connect(Connect(self.client_id, self.level, True, 0, None, None,
                                                 None, props)))  # fmt: skip
        self._flush()
        connack: Connack = await asyncio.wait_for(self._waiter, CONNECT_TIMEOUT)
        if connack.reason_code:
            raise Refused("CONNACK", connack.reason_code, self.client_id)
        self.window = min(self.spec.window, connack.properties.get("receive_maximum", 65535))
        if self.subscribe:
            self._waiter = loop.create_future()
            sub = Subscribe(1, [(self.response_topic, SubscriptionOptions(qos=1))])
            self._write(codec.encode_subscribe(sub, self.level))
            self._flush()
            suback: Suback = await asyncio.wait_for(self._waiter, CONNECT_TIMEOUT)
            if suback.reason_codes[0] >= 0x80:
                raise Refused("SUBACK", suback.reason_codes[0], self.client_id)
        self._waiter = None
        self.up = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"{self.client_id}: connection lost"))
        if not self._lost():
            return
        job = self.job
        if job is not None:
            for kind, off, length in self.inflight.values():
                if kind == SEG:
                    job.resend.append((SEG, off, length))
                elif kind == INIT:
                    job.init_sent = False
                else:
                    job.fin_sent = False
            if job.fin_acked and job.fin_doc is None:
                job.fin_sent = job.fin_acked = False  # its document may be lost: ask again
        self.inflight.clear()
        self._reconnect_soon()

    def _resumed(self) -> None:
        self._pump()
        self._flush()

    async def close(self) -> None:
        """DISCONNECT and wait for the server to close (so TIME_WAIT stays on its side)."""
        self.stopping = True
        if self._churn is not None:
            self._churn.cancel()
        tr = self.transport
        if tr is None:
            return
        self._waiter = self.ctx.loop.create_future()
        self._write(codec.encode_disconnect(Disconnect(0), self.level) if self.level == 5
                    else b"\xe0\x00")  # fmt: skip
        self._flush()
        with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._waiter), 5.0)
        if self.transport is not None:
            self.transport.abort()

    # -- uploading -----------------------------------------------------------------------

    def begin(self) -> None:
        self._arm_churn()
        self._start_file()
        self._pump()
        self._flush()

    def _start_file(self) -> None:
        nxt = self._next_file()
        self.job = None if nxt is None else Job(self.prefix, *nxt)

    def _resume(self) -> None:
        self.holding = False
        self._pump()
        self._flush()

    def _pump(self) -> None:
        """Fill the window: resends first, then init, segments, and fin once all are in."""
        job = self.job
        if job is None or not self.up:
            return
        spec = self.spec
        inflight = self.inflight
        window = self.window
        content = self.ctx.content
        seg = spec.segment
        while len(inflight) < window:
            if job.resend:
                _kind, off, length = job.resend.pop()
                self.stats.resent += 1
                self._segment(job, off, length, True)
                continue
            if not job.init_sent:
                job.init_sent = True
                meta = {"name": job.name, "size": job.size}
                self._publish(INIT, job.prefix + "init", json.dumps(meta).encode(), 0, 0, False)
                continue
            if job.next_off < job.size:
                if spec.stop_after and job.sent >= spec.stop_after and not self.ctx.released:
                    self.holding = True
                    if not inflight:
                        self._hold(self._resume)
                    return
                off = job.next_off
                length = min(seg, job.size - off)
                job.next_off = off + length
                job.sent += 1
                self._segment(job, off, length, False)
                continue
            if not job.fin_sent and not inflight:
                job.fin_sent = True
                size = job.size + spec.fin_size_delta
                topic = f"{job.prefix}fin/{size}"
                if spec.checksum in ("file", "both"):
                    topic += "/" + content.file_sha256(job.size)
                job.fin_t = time.perf_counter()
                self._publish(FIN, topic, b"", 0, 0, False, self._fin_props)
            return

    def _segment(self, job: Job, off: int, length: int, dup: bool) -> None:
        content = self.ctx.content
        topic = job.prefix + str(off)
        if self.spec.checksum in ("segment", "both"):
            topic += "/" + content.segment_sha256(off, length)
        self._publish(SEG, topic, content.segment(off, length), off, length, dup)
        self.stats.sent_bytes += length

    def _publish(
        self,
        kind: int,
        topic: str,
        payload: bytes | memoryview,
        off: int,
        length: int,
        dup: bool,
        props: Properties | None = None,
    ) -> None:
        pid = self._pid
        inflight = self.inflight
        while True:
            pid = pid % 65535 + 1
            if pid not in inflight:
                break
        self._pid = pid
        inflight[pid] = (kind, off, length)
        out = self._out
        out.append(codec.encode_publish_header(
            Publish(topic, payload, 1, False, dup, pid, props or {}), self.level))  # fmt: skip
        if length or payload:
            out.append(payload)

    def _write(self, data: bytes) -> None:
        self._out.append(data)

    def _flush(self) -> None:
        out = self._out
        if out:
            if self.transport is not None:
                self.transport.writelines(out)
                self.stats.wire_bytes += sum(map(len, out))
            self._out = []

    # -- receiving -----------------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        decoder = self.decoder
        decoder.buffer_updated(nbytes)
        try:
            while (p := decoder.next_packet()) is not None:
                if type(p) is Puback:
                    self._on_puback(p.packet_id, p.reason_code)
                elif type(p) is Publish:
                    self._on_document(p)
                elif type(p) in (Connack, Suback):
                    if self._waiter is not None and not self._waiter.done():
                        self._waiter.set_result(p)
                elif type(p) is Disconnect:
                    self.stats.error(f"{self.client_id}: DISCONNECT 0x{p.reason_code:02x}",
                                     f"DISCONNECT 0x{p.reason_code:02x}")  # fmt: skip
        except ProtocolError as exc:
            self.stats.error(f"{self.client_id}: protocol error from the server: {exc}",
                             "protocol error")  # fmt: skip
            if self.transport is not None:
                self.transport.abort()
            return
        self._pump()
        self._flush()

    def eof_received(self) -> bool:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)  # the server closed after our DISCONNECT
        return False

    def _on_puback(self, pid: int, rc: int) -> None:
        entry = self.inflight.pop(pid, None)
        if entry is None:
            return
        job = self.job
        if job is None:
            return
        kind = entry[0]
        stats = self.stats
        self._answered()
        if rc not in self.ok:
            what = ("segment", "init", "fin")[kind]
            stats.error(f"{self.client_id}: {what} of {job.file_id} at {entry[1]}: "
                        f"reason 0x{rc:02x}", f"{what} 0x{rc:02x}")  # fmt: skip
            if kind == FIN:
                self._file_done(ok=False)
            return
        if kind == SEG:
            stats.segments += 1
            job.acked += 1
        elif kind == FIN:
            job.fin_acked = True
            if not self.subscribe or job.fin_doc is not None:
                self._file_done(ok=job.fin_doc in (None, 0))
        if self.holding and not self.inflight:
            self._hold(self._resume)

    def _on_document(self, p: Publish) -> None:
        if p.qos and p.packet_id is not None:
            self._write(codec.encode_puback(Puback(p.packet_id, 0), self.level))
        try:
            doc = json.loads(bytes(p.payload))
            rc = int(doc["reason_code"])
            topic = str(doc["topic"])
        except (ValueError, KeyError, TypeError):
            self.stats.error(f"{self.client_id}: bad response document {bytes(p.payload)[:80]!r}",
                             "bad document")  # fmt: skip
            return
        job = self.job
        if rc:
            self.stats.error(f"{self.client_id}: {topic}: {doc.get('reason_description')}",
                             f"document 0x{rc:02x}")  # fmt: skip
        if job is None or not job.fin_sent or "/fin/" not in topic or job.prefix not in topic:
            return
        job.fin_doc = rc
        if job.fin_acked:
            self._file_done(ok=rc == 0)

    def _file_done(self, *, ok: bool) -> None:
        job = self.job
        assert job is not None
        if ok:
            self._file_ok(job.file_id, job.name, job.size, job.fin_t)
        self._start_file()

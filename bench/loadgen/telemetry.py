"""``python -m bench.loadgen.telemetry``: QoS 1 telemetry from N devices, and a subscriber on the
broker that checks every acknowledged message arrived.

Each device (MQTT 5, one connection) publishes fixed-size messages on its own topic
``{prefix}/d{i}`` at QoS 1 with a window of unacknowledged ones, as fast as the server
acknowledges them, for ``--duration`` seconds. It dials ``--port`` (the broker, or ftserver in
relay mode in front of it); the subscriber dials ``--sub-port`` (always the broker) and holds
``{prefix}/#`` at QoS 0 (MQTT 3.1.1), counting what arrives by bytes: every message it gets has
the same size on the wire, so nothing is decoded on the hot path.

A message counts as delivered-to-the-broker when its PUBACK says 0x00 (the subscriber matched
it); any other reason code (0x10 No matching subscribers: the server acknowledged but nobody
got it; 0x80...: refused) is counted apart. Handshake with the driver
(:class:`bench.macro.runner.Loadgen`): ``READY`` once every connection is up, then ``GO`` on
stdin, then one JSON line with the result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

from ftserver.mqtt import codec
from ftserver.mqtt.codec import Decoder
from ftserver.mqtt.packets import (
    Connack,
    Connect,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionOptions,
)

CONNECT_TIMEOUT = 30.0
#: how long the subscriber may stay silent, after the devices stopped, before what it has not
#: received counts as lost
DRAIN_IDLE = 5.0
#: how long after the end the last acknowledgements may take
ACK_TIMEOUT = 60.0


class _Conn(asyncio.BufferedProtocol):
    """A connection with a codec decoder and one waiter for CONNACK/SUBACK."""

    def __init__(self, level: int) -> None:
        self.level = level
        self.decoder = Decoder(1 << 20, server=False, protocol_level=level)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Any] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.decoder.get_buffer(sizehint)

    async def exchange(self, data: bytes) -> Any:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await asyncio.wait_for(self.waiter, CONNECT_TIMEOUT)

    def answer(self, packet: object) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(packet)


class Publisher(_Conn):
    """One device: keeps ``window`` QoS 1 PUBLISHes in flight until ``stop_at``."""

    def __init__(self, topic: str, size: int, window: int) -> None:
        super().__init__(5)
        self.window = window
        self.payload = bytes(size)
        self.topic = topic
        self.inflight: set[int] = set()
        self.pid = 0
        self.running = False
        self.stop_at = 0.0
        self.codes: Counter[int] = Counter()
        self.last_ack = 0.0
        self.done: asyncio.Future[None] | None = None

    async def connect(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, "127.0.0.1", port)
        connect = Connect(self.topic.replace("/", "-"), 5, True, 0, None, None, None,
                          {"receive_maximum": 65535})  # fmt: skip
        connack: Connack = await self.exchange(codec.encode_connect(connect))
        if connack.reason_code:
            raise ConnectionError(f"CONNACK 0x{connack.reason_code:02x}")
        self.window = min(self.window, connack.properties.get("receive_maximum", 65535))
        self.waiter = None

    def start(self, stop_at: float) -> None:
        self.stop_at = stop_at
        self.running = True
        self.done = asyncio.get_running_loop().create_future()
        self._pump()

    def _pump(self) -> None:
        if self.transport is None:
            return
        out = []
        if time.perf_counter() >= self.stop_at:
            self.running = False
        while self.running and len(self.inflight) < self.window:
            pid = self.pid
            while True:
                pid = pid % 65535 + 1
                if pid not in self.inflight:
                    break
            self.pid = pid
            self.inflight.add(pid)
            out.append(codec.encode_publish(Publish(self.topic, self.payload, 1, False, False,
                                                    pid, {}), 5))  # fmt: skip
        if out:
            self.transport.writelines(out)
        if not self.running and not self.inflight and self.done and not self.done.done():
            self.done.set_result(None)

    def buffer_updated(self, nbytes: int) -> None:
        decoder = self.decoder
        decoder.buffer_updated(nbytes)
        acked = False
        while (p := decoder.next_packet()) is not None:
            if type(p) is Puback:
                if p.packet_id in self.inflight:
                    self.inflight.discard(p.packet_id)
                    self.codes[p.reason_code] += 1
                    acked = True
            else:
                self.answer(p)
        if acked:
            self.last_ack = time.perf_counter()
            self._pump()


class Subscriber(_Conn):
    """Holds ``{prefix}/#`` at QoS 0 and counts the bytes of what arrives."""

    def __init__(self, prefix: str, message_size: int) -> None:
        super().__init__(4)
        self.prefix = prefix
        self.message_size = message_size
        self.counting = False
        self.received_bytes = 0
        #: set whenever bytes arrive
        self.more = asyncio.Event()

    async def connect(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, "127.0.0.1", port)
        connack: Connack = await self.exchange(codec.encode_connect(Connect(
            f"{self.prefix.replace('/', '-')}-sub", 4, True, 0)))  # fmt: skip
        if connack.reason_code:
            raise ConnectionError(f"subscriber CONNACK {connack.reason_code}")
        sub = Subscribe(1, [(f"{self.prefix}/#", SubscriptionOptions(qos=0))])
        suback: Suback = await self.exchange(codec.encode_subscribe(sub, 4))
        if suback.reason_codes[0] >= 0x80:
            raise ConnectionError(f"SUBACK 0x{suback.reason_codes[0]:02x}")
        self.counting = True

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.counting:
            return memoryview(bytearray(1 << 16))
        return super().get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        if self.counting:
            self.received_bytes += nbytes
            self.more.set()
            return
        self.decoder.buffer_updated(nbytes)
        while (p := self.decoder.next_packet()) is not None:
            self.answer(p)

    @property
    def received(self) -> int:
        return self.received_bytes // self.message_size


def wire_size(topic: str, payload: int) -> int:
    """Bytes of a QoS 0 MQTT 3.1.1 PUBLISH on ``topic`` with ``payload`` bytes."""
    return len(codec.encode_publish(Publish(topic, bytes(payload), 0, False, False, None, {}), 4))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    topics = [f"{args.prefix}/d{i:03d}" for i in range(args.devices)]
    sizes = {wire_size(t, args.size) for t in topics}
    assert len(sizes) == 1, "the topics must have one length"
    sub = Subscriber(args.prefix, sizes.pop())
    await sub.connect(args.sub_port)
    pubs = [Publisher(t, args.size, args.window) for t in topics]
    await asyncio.gather(*(p.connect(args.port) for p in pubs))
    print("READY", flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    if line.strip() != "GO":
        raise SystemExit(f"telemetry: expected GO, got {line!r}")
    t0 = time.perf_counter()
    for p in pubs:
        p.start(t0 + args.duration)
    finished = asyncio.gather(*(p.done for p in pubs if p.done is not None))
    unanswered = 0
    try:
        await asyncio.wait_for(finished, args.duration + ACK_TIMEOUT)
    except TimeoutError:
        unanswered = sum(len(p.inflight) for p in pubs)
    elapsed = max(p.last_ack for p in pubs) - t0
    codes: Counter[int] = Counter()
    for p in pubs:
        codes.update(p.codes)
    ok = codes[0]
    # wait for the subscriber to have everything, or to fall silent
    while sub.received < ok:
        sub.more.clear()
        try:
            await asyncio.wait_for(sub.more.wait(), DRAIN_IDLE)
        except TimeoutError:
            break
    for conn in (*pubs, sub):
        if conn.transport is not None:
            conn.transport.abort()
    return {
        "ok": sub.received >= ok > 0 and not unanswered,
        "acked_ok": ok,
        "unanswered": unanswered,
        "other_codes": {f"0x{c:02x}": n for c, n in sorted(codes.items()) if c},
        "delivered": sub.received,
        "elapsed": elapsed,
        "msg_per_s": ok / elapsed if elapsed > 0 else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--port", type=int, required=True, help="where the devices connect")
    p.add_argument("--sub-port", type=int, required=True, help="the broker (the subscriber)")
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--size", type=int, default=100, help="payload bytes per message")
    p.add_argument("--window", type=int, default=64, help="unacknowledged messages per device")
    p.add_argument("--duration", type=float, default=3.0, help="seconds of publishing")
    p.add_argument("--prefix", default="bench/telemetry", help="topic prefix (unique per run)")
    args = p.parse_args(argv)
    print(json.dumps(asyncio.run(run(args))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

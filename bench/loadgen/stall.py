"""Stalled uploads: connections that stop sending half-way through a large segment.

    python -m bench.loadgen.stall --port PORT [--target ftserver] [--connections 200]
        [--segment 15MiB] [--send 8MiB] [--tag st] [--sync-stdin]

Each connection sends CONNECT (MQTT 5), the init of a file one segment long and waits for
its PUBACK; then it sends the PUBLISH header of that segment (QoS 1, ``--segment`` bytes
announced) and only ``--send`` bytes of its payload, and then nothing: the socket stays open,
as a device whose network died in the middle of a packet leaves it (no FIN, no RST). What a
server holds for such connections is what an attacker, or a flaky fleet, makes it hold.

Prints ``STALLED {json}`` once the bytes have left the load generator (or nothing moved for
:data:`SETTLE` seconds: the server stopped reading, and the rest waits in our buffers, which
the JSON says), then, with ``--sync-stdin``, waits for a ``GO`` line; then aborts every
connection and prints the final JSON (how many the server had closed by then).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench.loadgen.content import Content
from bench.loadgen.device import Refused, failure_kind
from bench.loadgen.run import CONNECT_CONCURRENCY, raise_fd_limit
from bench.loadgen.spec import MiB, parse_size
from bench.loadgen.stats import Stats
from ftserver.mqtt import codec
from ftserver.mqtt.codec import Decoder, ProtocolError
from ftserver.mqtt.packets import Connack, Connect, Puback, Publish

#: seconds without progress after which the stall counts as reached with bytes still ours
SETTLE = 3.0
POLL = 0.1
TIMEOUT = 30.0
CHUNK = 256 << 10
HIGH_WATER = 1 << 20


@dataclass(frozen=True)
class StallSpec:
    port: int
    host: str = "127.0.0.1"
    target: str = "ftserver"
    connections: int = 200
    segment: int = 15 * MiB
    send: int = 8 * MiB
    tag: str = "st"

    def to_argv(self) -> list[str]:
        return [
            "--port", str(self.port), "--host", self.host, "--target", self.target,
            "--connections", str(self.connections), "--segment", str(self.segment),
            "--send", str(self.send), "--tag", self.tag,
        ]  # fmt: skip


class StalledConnection(asyncio.Protocol):
    """One connection: a request/answer handshake, then a payload that stops short."""

    def __init__(self, loop: asyncio.AbstractEventLoop, payload: memoryview | bytes) -> None:
        self.loop = loop
        self.decoder = Decoder(1 << 20, server=False, protocol_level=5)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Any] | None = None
        self.payload = payload  # what is sent of the segment: --send bytes
        self.off = 0
        self.paused = False
        self.stopping = False
        self.closed_by_server = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=HIGH_WATER)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.stopping:
            self.closed_by_server = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"closed by the server ({exc!r})"))

    def data_received(self, data: bytes) -> None:
        self.decoder.feed(data)
        try:
            while (p := self.decoder.next_packet()) is not None:
                if self.waiter is not None and not self.waiter.done():
                    self.waiter.set_result(p)
        except ProtocolError as exc:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(ConnectionError(f"protocol error: {exc}"))

    async def ask(self, packet: bytes) -> Any:
        """Send a handshake packet, return the server's next packet."""
        assert self.transport is not None
        self.waiter = self.loop.create_future()
        self.transport.write(packet)
        return await asyncio.wait_for(self.waiter, TIMEOUT)

    def start_payload(self, header: bytes) -> None:
        assert self.transport is not None
        self.transport.write(header)
        self._pump()

    def _pump(self) -> None:
        while not self.paused and self.transport is not None and self.off < len(self.payload):
            end = min(self.off + CHUNK, len(self.payload))
            self.transport.write(self.payload[self.off : end])
            self.off = end

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    @property
    def pending(self) -> int:
        """Bytes of the stalled payload still on our side (not taken by the socket)."""
        if self.transport is None:
            return 0
        return len(self.payload) - self.off + self.transport.get_write_buffer_size()


async def _open(
    spec: StallSpec, index: int, content: Content, stats: Stats
) -> StalledConnection | None:
    loop = asyncio.get_running_loop()
    client_id = f"{spec.tag}-{index}"
    file_id = f"{client_id}.1"
    conn = StalledConnection(loop, content.segment(0, spec.send))
    ok = (0, 0x10) if spec.target == "mosquitto" else (0,)
    try:
        await loop.create_connection(lambda: conn, spec.host, spec.port)
        connect = Connect(client_id, 5, True, 0, None, None, None, {"receive_maximum": 16})
        connack = await conn.ask(codec.encode_connect(connect))
        if not isinstance(connack, Connack) or connack.reason_code:
            raise Refused("CONNACK", getattr(connack, "reason_code", 0xFF), client_id)
        meta = json.dumps({"name": f"{file_id}.bin", "size": spec.segment}).encode()
        init = Publish(f"$file/{file_id}/init", meta, 1, False, False, 1)
        ack = await conn.ask(codec.encode_publish(init, 5))
        if not isinstance(ack, Puback) or ack.reason_code not in ok:
            rc = getattr(ack, "reason_code", 0xFF)
            stats.error(f"{client_id}: init answered 0x{rc:02x}", f"init 0x{rc:02x}")
            conn.stopping = True
            if conn.transport is not None:
                conn.transport.abort()
            return None
    except OSError as exc:  # TimeoutError and ConnectionError included
        stats.error(f"{client_id}: {exc!r}", failure_kind(exc))
        conn.stopping = True
        if conn.transport is not None:
            conn.transport.abort()
        return None
    # the segment's header announces all of it; only the first --send bytes follow
    announced = content.segment(0, spec.segment)
    header = codec.encode_publish_header(
        Publish(f"$file/{file_id}/0", announced, 1, False, False, 2), 5
    )
    conn.start_payload(header)
    return conn


async def stall(spec: StallSpec, barrier: Any) -> dict[str, Any]:
    """Open and stall every connection, report, wait for the driver, close; the final
    figures."""
    stats = Stats(devices=spec.connections)
    content = Content()
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    t0 = time.perf_counter()

    async def one(i: int) -> StalledConnection | None:
        async with limit:
            return await _open(spec, i, content, stats)

    opened = await asyncio.gather(*(one(i) for i in range(spec.connections)))
    conns = [c for c in opened if c is not None]
    last, t_last = -1, time.monotonic()
    while True:  # until every payload left us, or the server stopped taking bytes
        pending = sum(c.pending for c in conns)
        if pending == 0:
            break
        if pending != last:
            last, t_last = pending, time.monotonic()
        elif time.monotonic() - t_last > SETTLE:
            break
        await asyncio.sleep(POLL)
    report: dict[str, Any] = {
        "connections": spec.connections,
        "stalled": sum(1 for c in conns if c.transport is not None),
        "stall_s": time.perf_counter() - t0,
        "pending_bytes": sum(c.pending for c in conns),
        "closed_by_server": sum(1 for c in conns if c.closed_by_server),
        "errors": stats.errors,
        "error_kinds": stats.error_kinds,
        "error_samples": stats.error_samples,
    }
    await barrier("STALLED " + json.dumps(report))
    report["closed_by_server_end"] = sum(1 for c in conns if c.closed_by_server)
    report["open_end"] = sum(1 for c in conns if c.transport is not None)
    for c in conns:
        c.stopping = True
        if c.transport is not None:
            c.transport.abort()
    await asyncio.sleep(0)
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen.stall", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--target", choices=["ftserver", "mosquitto"], default="ftserver")
    p.add_argument("--connections", type=int, default=200)
    p.add_argument("--segment", type=parse_size, default=15 * MiB)
    p.add_argument("--send", type=parse_size, default=8 * MiB)
    p.add_argument("--tag", default="st")
    p.add_argument("--sync-stdin", action="store_true", help="wait for GO after STALLED")
    return p


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    if not 0 < ns.send < ns.segment:
        raise SystemExit("--send must be more than 0 and less than --segment")
    spec = StallSpec(
        port=ns.port, host=ns.host, target=ns.target, connections=ns.connections,
        segment=ns.segment, send=ns.send, tag=ns.tag,
    )  # fmt: skip

    async def barrier(line: str) -> None:
        print(line, flush=True)
        if ns.sync_stdin:
            got = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            if got.strip() != "GO":
                raise SystemExit(f"expected GO, got {got!r}")

    raise_fd_limit()
    import uvloop

    result = uvloop.run(stall(spec, barrier))
    print(json.dumps(result), flush=True)
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

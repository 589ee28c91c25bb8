"""1 000 devices through the relay at once: each has exactly one upstream leg to the broker,
and every leg is gone soon after the devices leave (half with DISCONNECT, half cut), on the
broker's side and in the relay's own count: nothing leaks on either side.

The devices are bare asyncio connections speaking MQTT with ftserver's codec (client side):
a thousand paho clients would be a thousand threads. The legs are counted on the broker's
side of its TCP connections (``/proc/net/tcp``), and in the relay's
``ftserver_relay_upstream_connections``. The 30 s deadlines are liveness bounds, not timings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from relaybroker import Broker
from relaykit import paths, start_relay, stop_server

from ftharness import ServerProcess, metric, scrape
from ftserver.mqtt import codec
from ftserver.mqtt.packets import Connack, Connect, Disconnect

DEVICES = 1000
LIVENESS = 30.0


@pytest.fixture
def fleet_relay(tmp_path: Path, broker: Broker) -> Iterator[ServerProcess]:
    srv = start_relay(tmp_path / "data", broker, "--set", "limits.max_connections=0")
    yield srv
    stop_server(srv)


@pytest.fixture
def fleet_port(request: pytest.FixtureRequest, path: str) -> int:
    """Where the devices connect; the direct run checks the counting against the broker."""
    if path == "direct":
        return int(request.getfixturevalue("broker").port)
    return int(request.getfixturevalue("fleet_relay").mqtt_port)


class Device:
    """One connection: CONNECT, then wait for the CONNACK."""

    def __init__(self, index: int) -> None:
        self.client_id = f"fleet-{index:04d}"
        self.level = 5 if index % 2 else 4
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self, port: int) -> int:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(codec.encode_connect(Connect(self.client_id, self.level, True, 60)))
        decoder = codec.Decoder(1 << 16, server=False, protocol_level=self.level)
        while True:
            packet = decoder.next_packet()
            if packet is not None:
                assert isinstance(packet, Connack), packet
                return packet.reason_code
            data = await self.reader.read(4096)
            if not data:
                raise ConnectionError(f"{self.client_id}: closed before CONNACK")
            decoder.feed(data)

    async def leave(self, cleanly: bool) -> None:
        assert self.writer is not None
        if cleanly:
            self.writer.write(codec.encode_disconnect(Disconnect(), self.level))
            self.writer.close()
        else:
            self.writer.transport.abort()  # no DISCONNECT: the socket is just gone
        await self.writer.wait_closed()


def relay_legs(relay: ServerProcess) -> float:
    return metric(scrape(relay.http_port), "ftserver_relay_upstream_connections")


def wait_metric(relay: ServerProcess, expected: float) -> float:
    deadline = time.monotonic() + LIVENESS
    value = relay_legs(relay)
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        value = relay_legs(relay)
    return value


@paths
def test_1000_devices_one_leg_each_and_none_left_after(
    path: str, broker: Broker, fleet_port: int, request: pytest.FixtureRequest
) -> None:
    relay: ServerProcess | None = (
        request.getfixturevalue("fleet_relay") if path == "relay" else None
    )
    assert broker.wait_legs(0) == 0
    devices = [Device(i) for i in range(DEVICES)]

    async def connect_all() -> list[int]:
        sem = asyncio.Semaphore(100)  # a ramp, not a thundering herd of SYNs

        async def one(d: Device) -> int:
            async with sem:
                return await d.connect(fleet_port)

        return await asyncio.gather(*(one(d) for d in devices))

    async def leave_all() -> None:
        await asyncio.gather(*(d.leave(cleanly=i % 2 == 0) for i, d in enumerate(devices)))

    loop = asyncio.new_event_loop()
    try:
        codes = loop.run_until_complete(connect_all())
        assert codes == [0] * DEVICES
        # exactly one leg per device: the broker holds DEVICES connections and the relay
        # counts as many (a second leg per device, or one missing, shows in both)
        assert broker.wait_legs(DEVICES, LIVENESS) == DEVICES
        if relay is not None:
            assert wait_metric(relay, DEVICES) == DEVICES
            assert broker.legs() == DEVICES
        loop.run_until_complete(leave_all())
    finally:
        for d in devices:
            if d.writer is not None and not d.writer.is_closing():
                d.writer.transport.abort()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
    assert broker.wait_legs(0, LIVENESS) == 0
    if relay is not None:
        assert wait_metric(relay, 0) == 0

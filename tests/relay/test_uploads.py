"""File transfer and telemetry on one device connection through the relay: ftserver handles
``$file/…`` itself while everything else passes through to the broker, both ways.

- one device uploads a 256 MiB file (ftserver's uploader over the device's own aiomqtt
  connection) while it publishes and receives telemetry at 100 messages/s on the same
  connection: both complete, no message lost (QoS 1 may duplicate: unique ones are counted);
- EMQX's reference client (the emqx-ft reproduction of tests/integration, sync and async)
  uploads through the relay unchanged while two other devices exchange telemetry through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import queue
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
from relaybroker import Broker
from relaykit import relay_only
from relaypeers import Peer
from test_emqx_ft_client import test_emqx_ft_reference_client as emqx_ft_upload

from ftharness import ServerProcess, find_export
from ftserver.client import upload

MiB = 1 << 20
RATE = 100.0  # telemetry messages per second, each way
DELIVERY_WAIT = 30.0


def write_random(path: Path, size: int) -> str:
    """``size`` pseudo-random bytes into ``path``; their hex SHA-256."""
    rng = random.Random(14)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            block = rng.randbytes(MiB)
            f.write(block)
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


class Ticker:
    """A thread publishing ``0, 1, 2…`` at ``RATE`` per second with a paho peer until stopped."""

    def __init__(self, peer: Peer, topic: str) -> None:
        self.peer = peer
        self.topic = topic
        self.sent = 0
        self.mids: list[int] = []
        self._stop = threading.Event()
        self._acked = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            self.mids.append(self.peer.publish(self.topic, str(self.sent).encode(), 1))
            self.sent += 1
            self._stop.wait(max(0.0, t0 + self.sent / RATE - time.monotonic()))

    def stop(self) -> int:
        """Stop; the number of messages sent (each acknowledged with a success code)."""
        self._stop.set()
        self._thread.join(10)
        if not self._acked:
            for mid in self.mids:
                assert self.peer.wait_ack(mid) < 0x80
            self._acked = True
        return self.sent


def unique_numbers(peer: Peer, topic: str, expected: int) -> set[int]:
    """The distinct numbers received on ``topic`` until all of ``range(expected)`` came (or
    the deadline passed)."""
    seen: set[int] = set()
    deadline = time.monotonic() + DELIVERY_WAIT
    while len(seen) < expected and time.monotonic() < deadline:
        try:
            msg = peer.messages.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if msg.topic == topic:
            seen.add(int(msg.payload))
    return seen


@relay_only
def test_256_mib_upload_with_telemetry_both_ways_on_one_connection(
    relay: ServerProcess,
    broker: Broker,
    peers: Callable[..., Peer],
    uid: str,
    tmp_path: Path,
) -> None:
    path = tmp_path / "big.bin"
    digest = write_random(path, 256 * MiB)
    cid, up, down = f"{uid}-dev", f"tele/{uid}/up", f"cmd/{uid}/down"
    app = peers(broker.port, f"{uid}-app")
    assert app.subscribe([(up, 1)]) == [1]

    async def device() -> tuple[str, int, set[int], int]:
        loop = asyncio.get_running_loop()
        async with aiomqtt.Client(
            "127.0.0.1",
            relay.mqtt_port,
            identifier=cid,
            protocol=aiomqtt.ProtocolVersion.V5,
            max_inflight_messages=64,
        ) as client:
            await client.subscribe(down, qos=1)
            got: set[int] = set()
            arrived = asyncio.Condition()
            stop = asyncio.Event()

            async def listen() -> None:
                async for msg in client.messages:
                    if msg.topic.matches(down):
                        async with arrived:
                            got.add(int(bytes(msg.payload)))  # type: ignore[arg-type]
                            arrived.notify_all()

            async def telemetry() -> int:
                sent, t0 = 0, loop.time()
                pending: list[asyncio.Task[None]] = []
                while not stop.is_set():
                    pending.append(
                        asyncio.create_task(client.publish(up, str(sent).encode(), qos=1))
                    )
                    sent += 1
                    await asyncio.sleep(max(0.0, t0 + sent / RATE - loop.time()))
                await asyncio.gather(*pending)  # every one acknowledged
                return sent

            listener = asyncio.create_task(listen())
            sender = asyncio.create_task(telemetry())
            with Ticker(app, down) as ticker:
                result = await upload(path, client=client, segment_size=64 * 1024, window=16)
                stop.set()
                sent_up = await sender
                sent_down = ticker.stop()
            with contextlib.suppress(TimeoutError):
                async with arrived:
                    await asyncio.wait_for(
                        arrived.wait_for(lambda: len(got) >= sent_down), DELIVERY_WAIT
                    )
            listener.cancel()
            return result.file_id, sent_up, got, sent_down

    file_id, sent_up, got_down, sent_down = asyncio.run(device())
    assert sent_up > 0 and sent_down > 0
    assert got_down == set(range(sent_down))
    assert unique_numbers(app, up, sent_up) == set(range(sent_up))
    assert sha256_of(find_export(relay.exports, cid, file_id, "big.bin")) == digest


@relay_only
def test_emqx_reference_client_uploads_while_others_exchange_telemetry(
    relay: ServerProcess, peers: Callable[..., Peer], uid: str
) -> None:
    a = peers(relay.mqtt_port, f"{uid}-a")
    b = peers(relay.mqtt_port, f"{uid}-b", version=4)
    a_to_b, b_to_a = f"tele/{uid}/ab", f"tele/{uid}/ba"
    assert a.subscribe([(b_to_a, 1)]) == [1]
    assert b.subscribe([(a_to_b, 1)]) == [1]
    with Ticker(a, a_to_b) as ab, Ticker(b, b_to_a) as ba:
        for is_async in (False, True):
            # the test function of tests/integration, run against the relay as its server
            emqx_ft_upload(relay, is_async)
        sent_ab, sent_ba = ab.stop(), ba.stop()
    assert sent_ab > 0 and sent_ba > 0
    assert unique_numbers(b, a_to_b, sent_ab) == set(range(sent_ab))
    assert unique_numbers(a, b_to_a, sent_ba) == set(range(sent_ba))

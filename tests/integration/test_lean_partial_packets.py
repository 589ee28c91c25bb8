"""The budget for packets not yet complete, over real sockets (issue 13): clients that send
part of a large segment and stall cannot make a server hold more than its
``limits.partial_packet_budget`` (give or take a read per connection), and an honest upload
meanwhile completes, byte for byte. The server's own accounting is read from its metrics.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable

from ftharness import FtClient, ServerProcess, find_export, metric, read_manifest, scrape
from ftserver.mqtt import codec
from ftserver.mqtt.packets import Publish
from rawclient import RawClient

KiB = 1024
MiB = 1024 * KiB
BUDGET = 4 * MiB
STALLED = 20
SEGMENT = 2 * MiB  # announced by each stalled client
SENT = 1 * MiB  # of which it sends this much, then nothing
#: a read of 64 KiB (or an eighth of what a connection holds) per connection beyond the
#: budget's hard limit (an eighth over it)
SLACK = (STALLED + 1) * 256 * KiB


def stall(port: int, i: int) -> RawClient:
    """A client that starts a one-segment transfer and stops half-way through its PUBLISH."""
    c = RawClient(port)
    assert c.connect(f"stall-{i}").reason_code == 0  # type: ignore[union-attr]
    pid = c.publish("$file/f/init", json.dumps({"name": "f.bin", "size": SEGMENT}).encode())
    ack = c.recv()
    assert ack is not None and ack.packet_id == pid and ack.reason_code == 0  # type: ignore[attr-defined]
    packet = codec.encode_publish(Publish("$file/f/0", b"\0" * SEGMENT, 1, False, False, 99), 5)
    c.sock.setblocking(False)
    sent = 0
    with contextlib.suppress(BlockingIOError):
        while sent < len(packet) - SEGMENT + SENT:
            sent += c.sock.send(packet[sent : len(packet) - SEGMENT + SENT])
    return c


def held(srv: ServerProcess) -> tuple[float, float]:
    samples = scrape(srv.http_port)
    return (
        metric(samples, "ftserver_partial_packet_bytes"),
        metric(samples, "ftserver_partial_packet_bytes_peak"),
    )


def test_stalled_partial_packets_stay_within_the_budget(
    make_server: Callable[..., ServerProcess],
) -> None:
    srv = make_server(
        "--workers", "1", "--set", f"limits.partial_packet_budget={BUDGET}B",
        "--set", "limits.max_connections_per_ip=0",
    )  # fmt: skip
    stalled = [stall(srv.mqtt_port, i) for i in range(STALLED)]
    try:
        # the server reads until the budget is spent (the metrics are flushed every second)
        deadline = time.monotonic() + 30
        while held(srv)[0] < BUDGET and time.monotonic() < deadline:
            time.sleep(0.2)
        now, peak = held(srv)
        assert now >= BUDGET  # the stalled clients sent more than the budget: it is spent
        assert peak <= BUDGET + BUDGET // 8 + SLACK  # without it: STALLED * SENT = 20 MiB

        # an honest device uploads meanwhile, in segments smaller than the stalled ones
        honest = FtClient(srv.mqtt_port, "honest")
        data = os.urandom(3 * MiB + 12345)
        try:
            assert honest.upload("h1", data, name="h.bin", segment=256 * KiB) == 0
        finally:
            honest.close()
        path = find_export(srv.exports, "honest", "h1", "h.bin")
        assert path.read_bytes() == data
        assert read_manifest(path)["checksum"] == hashlib.sha256(data).hexdigest().upper()

        time.sleep(1.2)  # one more flush of the metrics
        now, peak = held(srv)
        assert now >= BUDGET // 2  # the stalled ones still hold what they sent
        assert peak <= BUDGET + BUDGET // 8 + SLACK
        # and the stalled connections are still open, only no longer read
        for c in stalled:
            with contextlib.suppress(BlockingIOError):
                assert c.sock.recv(1, socket.MSG_PEEK) != b""
    finally:
        for c in stalled:
            c.close()

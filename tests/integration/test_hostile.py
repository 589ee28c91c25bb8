"""Hostile input at a running server: malformed packets, oversized lengths, invalid UTF-8,
topic-alias abuse, protocol violations, random garbage and 1000 half-open connections. Each
offender is disconnected; a concurrent honest upload completes byte-identical; no file
descriptors leak and memory stays bounded."""

from __future__ import annotations

import os
import random
import resource
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ftharness import FtClient, ServerProcess, find_export
from ftserver.mqtt import codec
from ftserver.mqtt.packets import Connect, Publish, Subscribe, SubscriptionOptions

CONNECT = codec.encode_connect(Connect("hostile", 5, True, 30))

ATTACKS: dict[str, bytes] = {
    "garbage first byte": b"\x00\x01\x02\x03",
    "remaining length of 5 bytes": b"\x10\xff\xff\xff\xff\x7f",
    "packet above the maximum size": b"\x10\xff\xff\xff\x7f" + b"\x00" * 64,
    "publish before connect": codec.encode_publish(Publish("a/b", b"x", 0), 5),
    "invalid utf-8 client id": b"\x10\x0f\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x02\xff\xfe",
    "second connect": CONNECT + CONNECT,
    "invalid utf-8 topic": CONNECT + b"\x30\x05\x00\x02\xc3\x28x",
    "wildcard in topic": CONNECT
    + codec.encode_publish(Publish("a/+", b"x", 0), 5)[:1]
    + b"\x06\x00\x03a/+\x00",
    "undefined topic alias": CONNECT
    + codec.encode_publish(Publish("", b"x", 0, properties={"topic_alias": 3}), 5),
    "topic alias above maximum": CONNECT
    + codec.encode_publish(Publish("t", b"x", 0, properties={"topic_alias": 60000}), 5),
    "qos 3": CONNECT + b"\x36\x04\x00\x01t\x00",
    "subscribe without filters": CONNECT + b"\x82\x03\x00\x01\x00",
    "string longer than packet": CONNECT + b"\x30\x04\x00\x20ab",
}


def expect_closed(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return
            if not chunk:
                return
        raise AssertionError("the server kept the connection open")


def fd_count(pid: int) -> int:
    """Open descriptors, not counting open transfers' staging files (they are state, closed
    when the transfer is idle, and the mutated streams below may well start transfers)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "/staging/" not in target:
            n += 1
    return n


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def honest_upload(port: int, data: bytes, result: dict[str, int]) -> None:
    c = FtClient(port, "honest")
    try:
        result["rc"] = c.upload("h", data, name="h.bin", segment=32 * 1024)
    finally:
        c.close()


def test_hostile_clients_do_not_hurt_an_honest_one(
    make_server: Callable[..., ServerProcess],
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    srv = make_server("--workers", "1", "--set", "mqtt.connect_timeout=3s",
                      "--set", "limits.max_packet_size=1MiB")  # fmt: skip
    assert srv.proc is not None
    pid = srv.proc.pid
    # warm up (first connections allocate the event loop's lazy resources)
    warm = FtClient(srv.mqtt_port, "warm")
    warm.close()
    time.sleep(0.5)
    fds_before, rss_before = fd_count(pid), rss(pid)

    data = os.urandom(8 * 1024 * 1024)
    result: dict[str, int] = {}
    honest = threading.Thread(target=honest_upload, args=(srv.mqtt_port, data, result))
    honest.start()

    half_open = [socket.create_connection(("127.0.0.1", srv.mqtt_port)) for _ in range(1000)]
    for name, attack in ATTACKS.items():
        try:
            expect_closed(srv.mqtt_port, attack)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None
    rng = random.Random(7)
    valid = (
        CONNECT
        + codec.encode_subscribe(
            Subscribe(1, [("$file-response/hostile", SubscriptionOptions(1))]), 5
        )
        + codec.encode_publish(Publish("$file/f/0", b"abc", 1, packet_id=2), 5)
    )
    for _ in range(200):  # mutated streams: whatever happens, the server must survive
        mutated = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        with socket.create_connection(("127.0.0.1", srv.mqtt_port), timeout=10) as s:
            s.sendall(bytes(mutated))
            s.shutdown(socket.SHUT_WR)
            try:
                while s.recv(65536):
                    pass
            except ConnectionResetError:
                pass
    honest.join(120)
    assert result.get("rc") == 0
    assert find_export(srv.exports, "honest", "h", "h.bin").read_bytes() == data
    # the half-open connections are closed by the server after the CONNECT timeout
    for s in half_open:
        s.settimeout(10)
        assert s.recv(1) == b""
        s.close()
    time.sleep(0.5)
    assert srv.proc.poll() is None
    assert fd_count(pid) <= fds_before + 4, (fds_before, fd_count(pid))
    assert rss(pid) < rss_before + 200 * 1024 * 1024
    assert srv.stop() == 0

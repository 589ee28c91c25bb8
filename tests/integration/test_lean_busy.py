"""A server at its connection limit answers the CONNECT of one more connection Server busy
(MQTT 5 0x89; MQTT 3.1.1 return code 3, Server unavailable) and closes it, over real sockets;
the refusals are counted and logged (rate-limited), and the admitted clients keep working."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from ftharness import ServerProcess, metric, scrape
from ftserver.mqtt.packets import Connack
from rawclient import RawClient


def test_connect_over_the_limit_is_answered_busy(
    make_server: Callable[..., ServerProcess],
) -> None:
    srv = make_server("--workers", "1", "--set", "limits.max_connections=2")
    admitted = [RawClient(srv.mqtt_port) for _ in range(2)]
    for k, c in enumerate(admitted):
        ack = c.connect(f"in-{k}")
        assert isinstance(ack, Connack) and ack.reason_code == 0
    # MQTT 5: CONNACK Server busy, then the server closes
    with RawClient(srv.mqtt_port) as v5:
        ack = v5.connect("over-5")
        assert isinstance(ack, Connack) and ack.reason_code == 0x89
        assert v5.recv() is None
    # MQTT 3.1.1: return code 3 (Server unavailable), then the server closes
    with RawClient(srv.mqtt_port) as v3:
        body = b"\x00\x04MQTT\x04\x02\x00\x00" + struct.pack("!H", 6) + b"over-3"
        v3.send(bytes((0x10, len(body))) + body)
        v3.sock.settimeout(10)
        assert v3.sock.recv(16) == bytes.fromhex("20020003")
        assert v3.sock.recv(16) == b""
    # the admitted clients were not disturbed
    for c in admitted:
        c.send(b"\xc0\x00")  # PINGREQ
        assert c.recv() is not None
    for c in admitted:
        c.close()
    time.sleep(1.2)  # the metrics are flushed every second
    assert metric(scrape(srv.http_port), "ftserver_connections_refused_total") == 2
    assert "connection limit reached, answered busy" in srv.stderr()
    # room again: a new connection is admitted
    time.sleep(0.2)
    with RawClient(srv.mqtt_port) as again:
        ack = again.connect("again")
        assert isinstance(ack, Connack) and ack.reason_code == 0

"""When the broker is away: a device connecting through the relay is refused with Server
unavailable (MQTT 5 0x88, MQTT 3.1.1 return code 3); a device connected when the broker dies
is disconnected; once the broker is back the device reconnects, and a file transfer it had
started finishes byte-identical (the relay keeps file transfer staged locally).

Each test has a broker (and a relay) of its own: it stops or kills it."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable

from relaybroker import Broker
from relaykit import paths, relay_only, versions
from relaypeers import Peer

from ftharness import FtClient, ServerProcess, find_export
from ftserver.mqtt.packets import Connack
from rawclient import RawClient

UNAVAILABLE = {5: 0x88, 4: 3}
KiB = 1024


def connack_code(port: int, version: int, client_id: str) -> int:
    with RawClient(port, level=version) as c:
        packet = c.connect(client_id)
        assert isinstance(packet, Connack), packet
        return packet.reason_code


@relay_only
@versions
def test_broker_down_gives_server_unavailable(
    version: int,
    own_broker: Callable[..., Broker],
    make_relay: Callable[..., ServerProcess],
    uid: str,
) -> None:
    broker = own_broker()
    relay = make_relay(broker)
    assert connack_code(relay.mqtt_port, version, f"{uid}-a") == 0
    broker.stop()
    assert connack_code(relay.mqtt_port, version, f"{uid}-b") == UNAVAILABLE[version]
    broker.start()  # same port: the next device gets in
    assert connack_code(relay.mqtt_port, version, f"{uid}-c") == 0


@paths
@versions
def test_broker_killed_mid_session_disconnects_the_device(
    path: str,
    version: int,
    own_broker: Callable[..., Broker],
    make_relay: Callable[..., ServerProcess],
    peers: Callable[..., Peer],
    uid: str,
) -> None:
    broker = own_broker()
    port = broker.port if path == "direct" else make_relay(broker).mqtt_port
    device = peers(port, f"{uid}-dev", version=version)
    device.subscribe([(f"cmd/{uid}", 1)])
    broker.kill()
    device.wait_disconnected()
    broker.start()
    # back: the device reconnects (a new session: the broker kept nothing) and works again
    device = peers(port, f"{uid}-dev", version=version)
    assert device.connack is not None and device.connack[:2] == (False, 0)
    device.subscribe([(f"cmd/{uid}", 1)])
    app = peers(broker.port, f"{uid}-app")
    app.wait_ack(app.publish(f"cmd/{uid}", b"after restart", 1))
    assert device.receive().payload == b"after restart"


@relay_only
@versions
def test_upload_finishes_after_the_broker_is_back(
    version: int,
    own_broker: Callable[..., Broker],
    make_relay: Callable[..., ServerProcess],
    uid: str,
) -> None:
    broker = own_broker()
    relay = make_relay(broker)
    v5 = version == 5
    cid, fid = f"{uid}-dev", "fid-restart"
    data = os.urandom(3 * 1024 * KiB + 123)
    seg = 64 * KiB
    offsets = list(range(0, len(data), seg))
    half = len(offsets) // 2
    first = FtClient(relay.mqtt_port, cid, v5=v5, clean=False, session_expiry=300)
    meta = json.dumps({"name": "restart.bin", "size": len(data)})
    assert first.command(f"$file/{fid}/init", meta) == 0
    for off in offsets[:half]:
        assert first.command(f"$file/{fid}/{off}", data[off : off + seg]) == 0
    broker.kill()
    # the broker's death reaches the device: the relay closes its connection
    first._wait(lambda: first.disconnect_reason is not None, "disconnection")
    first.client.loop_stop()
    assert connack_code(relay.mqtt_port, version, f"{uid}-probe") == UNAVAILABLE[version]
    broker.start()
    second = FtClient(relay.mqtt_port, cid, v5=v5, clean=False, session_expiry=300)
    try:
        for off in offsets[half:]:
            assert second.command(f"$file/{fid}/{off}", data[off : off + seg]) == 0
        assert second.command(f"$file/{fid}/fin/{len(data)}") == 0
        if not v5:  # MQTT 3.1.1: the fin's result comes in the response document
            doc = second.doc_for(f"$file/{fid}/fin/{len(data)}")
            assert doc["reason_code"] == 0, doc
    finally:
        second.close()
    assert find_export(relay.exports, cid, fid, "restart.bin").read_bytes() == data


@relay_only
def test_hung_broker_is_noticed_by_the_upstream_keep_alive(
    own_broker: Callable[..., Broker],
    make_relay: Callable[..., ServerProcess],
    peers: Callable[..., Peer],
    uid: str,
) -> None:
    """A broker that stops answering without closing anything (frozen with SIGSTOP): the
    upstream leg's own PINGREQ goes unanswered, the leg is closed, and the device learns it
    (the device's keep-alive towards ftserver alone would never tell)."""
    broker = own_broker()
    relay = make_relay(broker, "--set", "relay.keepalive=5s")
    device = peers(relay.mqtt_port, f"{uid}-dev", version=5)
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        # at most two keep-alive periods (one PINGREQ sent, none answered), with room to spare
        assert device.wait_disconnected(timeout=30) == 0x80
    finally:
        broker.proc.send_signal(signal.SIGCONT)
    assert "stopped answering PINGREQ" in relay.stderr()

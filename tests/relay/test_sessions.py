"""A persistent session (MQTT 5 session expiry, MQTT 3.1.1 clean session false) through the
relay: the broker keeps it, says so in Session Present, and delivers the QoS 1 messages queued
while the device was away."""

from __future__ import annotations

from collections.abc import Callable

from relaybroker import Broker
from relaykit import paths, versions
from relaypeers import Peer


@paths
@versions
def test_persistent_session_gets_the_messages_queued_while_away(
    path: str,
    version: int,
    broker: Broker,
    port_of: Callable[[str], int],
    peers: Callable[..., Peer],
    uid: str,
) -> None:
    port = port_of(path)
    cid, topic = f"{uid}-dev", f"cmd/{uid}"
    session = {"version": version, "clean": False, "session_expiry": 300}
    app = peers(broker.port, f"{uid}-app")
    legs = broker.wait_legs(1)
    device = peers(port, cid, **session)
    assert device.connack is not None
    assert device.connack[:2] == (False, 0)  # a new session
    assert device.subscribe([(topic, 1)]) == [1]
    device.close()
    # away: its connection (the relay's leg) is gone from the broker
    assert broker.wait_legs(legs) == legs
    for i in range(3):
        # 0x00: the offline session is a subscriber
        assert app.wait_ack(app.publish(topic, f"queued {i}".encode(), 1)) == 0
    back = peers(port, cid, **session)
    assert back.connack is not None
    assert back.connack[:2] == (True, 0)  # Session Present, from the broker
    got = back.receive_n(3)
    assert [(m.payload, m.qos) for m in got] == [(f"queued {i}".encode(), 1) for i in range(3)]
    # the subscription lives on in the session: live messages arrive too
    app.wait_ack(app.publish(topic, b"live", 1))
    assert back.receive().payload == b"live"

"""Telemetry through the relay behaves as on the broker itself: round trips at QoS 0, 1 and 2
between two devices and between a device and a client of the broker, retained messages, MQTT 5
properties intact, and a SUBSCRIBE that mixes the device's own ``$file-response/{clientId}``
with ordinary filters answered by one SUBACK in order."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from relaybroker import Broker
from relaykit import paths, versions
from relaypeers import Peer, props

N = 5


@paths
@versions
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_round_trip_between_devices(
    path: str,
    version: int,
    qos: int,
    port_of: Callable[[str], int],
    peers: Callable[..., Peer],
    uid: str,
) -> None:
    port = port_of(path)
    sender = peers(port, f"{uid}-a", version=version)
    receiver = peers(port, f"{uid}-b", version=version)
    topic = f"tele/{uid}/temp"
    assert receiver.subscribe([(topic, qos)]) == [qos]
    mids = [sender.publish(topic, f"m{i}".encode(), qos) for i in range(N)]
    if qos:
        # end to end: acknowledged once the broker has it (0x00: it had a subscriber)
        assert [sender.wait_ack(mid) for mid in mids] == [0] * N
    got = receiver.receive_n(N)
    assert [m.payload for m in got] == [f"m{i}".encode() for i in range(N)]
    assert {(m.topic, m.qos, m.retain) for m in got} == {(topic, qos, False)}


@paths
@versions
def test_device_and_broker_client_both_ways(
    path: str,
    version: int,
    broker: Broker,
    port_of: Callable[[str], int],
    peers: Callable[..., Peer],
    uid: str,
) -> None:
    device = peers(port_of(path), f"{uid}-dev", version=version)
    app = peers(broker.port, f"{uid}-app", version=version)
    up, down = f"tele/{uid}/up", f"cmd/{uid}/down"
    assert app.subscribe([(up, 1)]) == [1]
    assert device.subscribe([(down, 2)]) == [2]
    assert device.wait_ack(device.publish(up, b"reading 21.5", 1)) == 0
    msg = app.receive()
    assert (msg.topic, msg.payload, msg.qos) == (up, b"reading 21.5", 1)
    assert app.wait_ack(app.publish(down, b"reboot", 2)) == 0
    msg = device.receive()
    assert (msg.topic, msg.payload, msg.qos) == (down, b"reboot", 2)


@paths
@versions
def test_retained_message(
    path: str,
    version: int,
    broker: Broker,
    port_of: Callable[[str], int],
    peers: Callable[..., Peer],
    uid: str,
) -> None:
    port = port_of(path)
    topic = f"state/{uid}"
    device = peers(port, f"{uid}-dev", version=version)
    assert device.wait_ack(device.publish(topic, b"online", 1, retain=True)) in (0, 0x10)
    # a later subscriber, on the same path and on the broker, gets it with the retain flag
    for later in (peers(port, f"{uid}-late", version=version), peers(broker.port, f"{uid}-app")):
        later.subscribe([(topic, 1)])
        msg = later.receive()
        assert (msg.topic, msg.payload, msg.retain) == (topic, b"online", True)
    # an empty retained message clears it: a new subscriber gets nothing, then a live message
    assert device.wait_ack(device.publish(topic, b"", 1, retain=True)) in (0, 0x10)
    fresh = peers(port, f"{uid}-fresh", version=version)
    fresh.subscribe([(topic, 1)])
    device.wait_ack(device.publish(topic, b"live", 1))
    msg = fresh.receive()
    assert (msg.payload, msg.retain) == (b"live", False)


@paths
def test_v5_properties_intact(
    path: str,
    broker: Broker,
    port_of: Callable[[str], int],
    peers: Callable[..., Peer],
    uid: str,
) -> None:
    port = port_of(path)
    sender = peers(port, f"{uid}-a")
    receiver = peers(port, f"{uid}-b")
    app = peers(broker.port, f"{uid}-app")
    topic = f"req/{uid}"
    receiver.subscribe([(topic, 1)])
    app.subscribe([(topic, 1)])
    sent = props(
        UserProperty=[("unit", "celsius"), ("unit", "kelvin"), ("trace", "é-01")],
        ResponseTopic=f"resp/{uid}",
        CorrelationData=b"\x00\x01corr\xff",
        MessageExpiryInterval=3600,
        ContentType="application/json",
        PayloadFormatIndicator=1,
    )
    assert sender.wait_ack(sender.publish(topic, b'{"t": 21.5}', 1, properties=sent)) == 0
    for peer in (receiver, app):
        msg = peer.receive()
        got = msg.properties
        assert msg.payload == b'{"t": 21.5}'
        assert got.UserProperty == [("unit", "celsius"), ("unit", "kelvin"), ("trace", "é-01")]
        assert got.ResponseTopic == f"resp/{uid}"
        assert got.CorrelationData == b"\x00\x01corr\xff"
        # the broker forwards the time left: at most what was sent, never dropped
        assert 0 < got.MessageExpiryInterval <= 3600
        assert got.ContentType == "application/json"
        assert got.PayloadFormatIndicator == 1
    # and the other way: from a client of the broker to the device
    back = props(UserProperty=[("k", "v")], CorrelationData=b"c2", ResponseTopic=topic)
    receiver.subscribe([(f"resp/{uid}", 1)])
    app.wait_ack(app.publish(f"resp/{uid}", b"answer", 1, properties=back))
    msg = receiver.receive_on(f"resp/{uid}")
    assert msg.properties.UserProperty == [("k", "v")]
    assert msg.properties.CorrelationData == b"c2"
    assert msg.properties.ResponseTopic == topic


@paths
@versions
def test_subscribe_mixing_file_response_and_ordinary_filters(
    path: str,
    version: int,
    broker: Broker,
    port_of: Callable[[str], int],
    peers: Callable[..., Peer],
    uid: str,
) -> None:
    """One SUBSCRIBE, split by the relay (``$file-response/{id}`` served locally, the rest
    upstream), answered by one SUBACK with every code in the device's order."""
    cid = f"{uid}-dev"
    device = peers(port_of(path), cid, version=version)
    filters = [
        (f"a/{uid}/+", 0),
        (f"$file-response/{cid}", 1),
        (f"b/{uid}/#", 2),
        (f"c/{uid}", 1),
    ]
    assert device.subscribe(filters) == [0, 1, 2, 1]
    app = peers(broker.port, f"{uid}-app", version=version)
    for topic in (f"a/{uid}/x", f"b/{uid}/y/z", f"c/{uid}"):
        app.wait_ack(app.publish(topic, topic.encode(), 1))
        assert device.receive().payload == topic.encode()
    unsub = device.unsubscribe([f"a/{uid}/+", f"$file-response/{cid}", f"c/{uid}"])
    if version == 5:
        assert unsub == [0, 0, 0]
    app.wait_ack(app.publish(f"a/{uid}/x", b"after", 1))
    app.wait_ack(app.publish(f"b/{uid}/w", b"still", 1))
    # the filter left is still served, the removed one is not: "still" is the next message
    assert device.receive().payload == b"still"


@paths
def test_v5_acknowledgement_carries_the_brokers_reason_code(
    path: str,
    broker: Broker,
    port_of: Callable[[str], int],
    peers: Callable[..., Peer],
    uid: str,
) -> None:
    """PUBACK: with a subscriber Mosquitto answers 0x00, without one 0x10 (No matching
    subscribers; paho shows a QoS 2 flow's PUBCOMP code, not the PUBREC's, so QoS 1 here):
    through the relay the device gets the broker's code, so the acknowledgement is the
    broker's, not one made up by the relay."""
    device = peers(port_of(path), f"{uid}-dev")
    app = peers(broker.port, f"{uid}-app")
    app.subscribe([(f"some/{uid}", 1)])
    assert device.wait_ack(device.publish(f"some/{uid}", b"x", 1)) == 0
    assert app.receive().payload == b"x"
    assert device.wait_ack(device.publish(f"nobody/{uid}", b"y", 1)) == 0x10

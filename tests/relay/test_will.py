"""The Will goes through the relay as on the broker: published when the device's socket is
cut (no DISCONNECT), and after an MQTT 5 DISCONNECT with reason 0x04; not after a normal
DISCONNECT.

Each test starts with the broker holding no connection, so that "the device's connection is
gone from the broker" is a count of its connections (:meth:`Broker.legs`): once it is, the
broker has processed the device's (or the relay's) DISCONNECT or end of file, and a Will it
did not publish by then it will not publish.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from paho.mqtt.packettypes import PacketTypes
from relaybroker import Broker
from relaykit import paths, versions
from relaypeers import Peer, props


@pytest.fixture
def idle_broker(broker: Broker) -> Broker:
    """The module's broker once the connections of earlier tests are gone."""
    assert broker.wait_legs(0) == 0, "connections of an earlier test still open"
    return broker


def _watch(peers: Callable[..., Peer], broker: Broker, uid: str) -> Peer:
    watcher = peers(broker.port, f"{uid}-watch")
    assert watcher.subscribe([(f"will/{uid}", 1)]) == [1]
    return watcher


def _will(uid: str, version: int) -> dict[str, object]:
    will_props = None
    if version == 5:
        will_props = props(
            PacketTypes.WILLMESSAGE,
            UserProperty=[("reason", "power")],
            ContentType="text/plain",
        )
    return {"will": (f"will/{uid}", b"device lost", 1), "will_props": will_props}


def _alive(watcher: Peer, uid: str) -> None:
    """Nothing came on the Will's topic so far: the watcher's own message is the first."""
    watcher.wait_ack(watcher.publish(f"will/{uid}", b"alive", 1))
    assert watcher.receive().payload == b"alive"


def _expect_will(watcher: Peer, uid: str, version: int) -> None:
    msg = watcher.receive()
    assert (msg.topic, msg.payload, msg.qos) == (f"will/{uid}", b"device lost", 1)
    if version == 5:
        assert msg.properties.UserProperty == [("reason", "power")]
        assert msg.properties.ContentType == "text/plain"


@paths
@versions
def test_will_published_when_the_socket_is_cut(
    path: str,
    version: int,
    idle_broker: Broker,
    port_of: Callable[[str], int],
    peers: Callable[..., Peer],
    uid: str,
) -> None:
    watcher = _watch(peers, idle_broker, uid)
    device = peers(port_of(path), f"{uid}-dev", version=version, **_will(uid, version))
    _alive(watcher, uid)
    device.cut()
    _expect_will(watcher, uid, version)
    assert idle_broker.wait_legs(1) == 1  # the device's leg is gone, the watcher's is left


@paths
@versions
def test_no_will_after_a_normal_disconnect(
    path: str,
    version: int,
    idle_broker: Broker,
    port_of: Callable[[str], int],
    peers: Callable[..., Peer],
    uid: str,
) -> None:
    watcher = _watch(peers, idle_broker, uid)
    device = peers(port_of(path), f"{uid}-dev", version=version, **_will(uid, version))
    assert idle_broker.wait_legs(2) == 2
    device.close()
    # the broker has handled the device's end once its connection is gone
    assert idle_broker.wait_legs(1) == 1
    watcher.wait_ack(watcher.publish(f"will/{uid}", b"sentinel", 1))
    assert watcher.receive().payload == b"sentinel"


@paths
def test_will_published_after_disconnect_with_reason_0x04(
    path: str,
    idle_broker: Broker,
    port_of: Callable[[str], int],
    peers: Callable[..., Peer],
    uid: str,
) -> None:
    watcher = _watch(peers, idle_broker, uid)
    device = peers(port_of(path), f"{uid}-dev", version=5, **_will(uid, 5))
    _alive(watcher, uid)
    device.disconnect_with_will()
    _expect_will(watcher, uid, 5)

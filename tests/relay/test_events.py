"""Transfer events (``relay.events_topic``): every export produces one JSON document at QoS 1 on
``{events_topic}/{clientId}/{fileId}``, published by the relay to the broker; exactly one when
nothing goes wrong, at least one (none lost) across a restart of the broker.

Once every expected event came, "all published" is the relay's
``ftserver_relay_events_pending`` back at 0: every event then has the broker's PUBACK, so the
broker routed it to the watcher before it handles the watcher's own sentinel message,
published after. Whatever the watcher has before the sentinel is all the relay sent.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from relaybroker import Broker
from relaykit import relay_only
from relaypeers import Peer

from ftharness import FtClient, ServerProcess, metric, scrape

EVENTS = "ft/events"
LIVENESS = 30.0


def relay_with_events(make_relay: Callable[..., ServerProcess], broker: Broker) -> ServerProcess:
    return make_relay(broker, "--set", f"relay.events_topic={EVENTS}")


def upload(port: int, client_id: str, file_id: str, data: bytes, mode: str = "$file") -> None:
    c = FtClient(port, client_id)
    try:
        assert c.upload(file_id, data, name=f"{file_id}.bin", segment=16 * 1024, mode=mode) == 0
    finally:
        c.close()


def drained(
    relay: ServerProcess, watcher: Peer, expected: set[str]
) -> list[tuple[str, dict[str, Any]]]:
    """Every event the watcher receives (topic, document): until each ``expected`` topic came,
    then, once no event is pending in the relay, up to the watcher's own sentinel (so that a
    duplicate sent late is counted too)."""
    got: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + LIVENESS
    while not expected <= {topic for topic, _doc in got}:
        msg = watcher.receive(max(0.01, deadline - time.monotonic()))
        got.append((msg.topic, json.loads(msg.payload)))
    while metric(scrape(relay.http_port), "ftserver_relay_events_pending") != 0:
        assert time.monotonic() < deadline, "events still pending"
        time.sleep(0.1)
    sentinel = f"{EVENTS}/sentinel/{time.monotonic_ns()}"
    watcher.wait_ack(watcher.publish(sentinel, b"{}", 1))
    while True:
        msg = watcher.receive(LIVENESS)
        if msg.topic == sentinel:
            return got
        got.append((msg.topic, json.loads(msg.payload)))


def mentions(doc: Any, value: object) -> bool:
    """``value`` appears somewhere in the JSON document (as a value)."""
    if doc == value or str(doc) == str(value):
        return True
    if isinstance(doc, dict):
        return any(mentions(v, value) for v in doc.values())
    if isinstance(doc, list):
        return any(mentions(v, value) for v in doc)
    return False


@relay_only
def test_one_event_per_export(
    own_broker: Callable[..., Broker],
    make_relay: Callable[..., ServerProcess],
    peers: Callable[..., Peer],
    uid: str,
) -> None:
    broker = own_broker()
    relay = relay_with_events(make_relay, broker)
    watcher = peers(broker.port, f"{uid}-watch")
    assert watcher.subscribe([(f"{EVENTS}/#", 1)]) == [1]
    files = {f"f{i}": os.urandom(40_000 + i) for i in range(3)}
    cid = f"{uid}-dev"
    for file_id, data in files.items():
        upload(
            relay.mqtt_port, cid, file_id, data, mode="$file-async" if file_id == "f2" else "$file"
        )
    expected = {f"{EVENTS}/{cid}/{f}" for f in files}
    events = drained(relay, watcher, expected)
    topics = Counter(topic for topic, _doc in events)
    assert topics == Counter(dict.fromkeys(expected, 1))
    for topic, doc in events:
        file_id = topic.rsplit("/", 1)[1]
        assert isinstance(doc, dict)
        for value in (cid, file_id, f"{file_id}.bin", len(files[file_id])):
            assert mentions(doc, value), (value, doc)


@relay_only
def test_no_event_lost_across_a_broker_restart(
    own_broker: Callable[..., Broker],
    make_relay: Callable[..., ServerProcess],
    peers: Callable[..., Peer],
    uid: str,
) -> None:
    """The broker is stopped right after the last fin (some events sent, some pending), then
    started again: every export has its event, at least once. The broker persists its
    sessions, so the watcher's queue survives the restart."""
    broker = own_broker(persistent=True)
    relay = relay_with_events(make_relay, broker)
    session: dict[str, Any] = {"clean": False, "session_expiry": 3600}
    watcher = peers(broker.port, f"{uid}-watch", **session)
    assert watcher.subscribe([(f"{EVENTS}/#", 1)]) == [1]
    expected = set()
    for d in range(3):
        cid = f"{uid}-dev{d}"
        for i in range(3):
            file_id = f"f{i}"
            upload(relay.mqtt_port, cid, file_id, os.urandom(20_000), mode="$file-async")
            expected.add(f"{EVENTS}/{cid}/{file_id}")
    broker.stop()  # SIGTERM: Mosquitto saves the watcher's session and its queue
    watcher.wait_disconnected()
    watcher.close()
    seen = set()
    while not watcher.messages.empty():  # what came before the stop
        seen.add(watcher.messages.get().topic)
    broker.start()
    watcher = peers(broker.port, f"{uid}-watch", **session)
    assert watcher.connack is not None and watcher.connack[:2] == (True, 0)
    seen |= {topic for topic, _doc in drained(relay, watcher, expected - seen)}
    assert seen == expected

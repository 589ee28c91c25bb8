"""Transfer events on the user's broker: a real Mosquitto, a real ftserver with
``relay.upstream`` and ``relay.events_topic``, a paho subscriber on ``ft/events/#``.

Every export gives exactly one event with the right fields, a failed fin a failed one; events
of fins answered while Mosquitto hangs (SIGSTOP) wait on disk and arrive once it answers again,
also when ftserver was stopped (SIGTERM) or killed (SIGKILL right after the fin was answered)
meanwhile, and across a real restart of the broker: at least once, none lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import trustme
from notifyhelpers import Broker
from paho.mqtt.enums import CallbackAPIVersion

from ftharness import FtClient, ServerProcess, find_export, metric, scrape

WAIT = 30.0


class Subscriber:
    """A persistent-session paho subscriber of ``ft/events/#`` at QoS 1 that reconnects by
    itself when the broker comes back."""

    def __init__(self, port: int) -> None:
        self.messages: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._subscribed = threading.Event()
        self.connects = 0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"events-sub-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, json.loads(m.payload)))
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.loop_start()
        assert self._subscribed.wait(WAIT)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connects += 1
        if not flags.session_present:
            client.subscribe("ft/events/#", qos=1)

    def take(self, n: int) -> list[tuple[str, dict[str, Any]]]:
        return [self.messages.get(timeout=WAIT) for _ in range(n)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(broker: Broker) -> Iterator[Subscriber]:
    sub = Subscriber(broker.port)
    yield sub
    sub.close()


def server_args(broker: Broker) -> tuple[str, ...]:
    return (
        "--workers", "2",
        "--set", f"relay.upstream=mqtt://127.0.0.1:{broker.port}",
        "--set", "relay.events_topic=ft/events",
        "--set", "notify.retry_max=500ms",
    )  # fmt: skip


def upload(client: FtClient, file_id: str, data: bytes, checksum: str, mode: str = "$file") -> int:
    init = json.dumps({"name": f"{file_id}.bin", "size": len(data)})
    assert client.command(f"{mode}/{file_id}/init", init) == 0
    for off in range(0, len(data), 4096):
        assert client.command(f"{mode}/{file_id}/{off}", data[off : off + 4096]) == 0
    return client.command(f"{mode}/{file_id}/fin/{len(data)}/{checksum}")


def pending(srv: ServerProcess) -> float:
    return metric(scrape(srv.http_port), "ftserver_relay_events_pending")


def wait_for(pred: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {WAIT}s")
        time.sleep(0.05)


def test_one_event_per_finished_transfer(
    make_server: Callable[..., ServerProcess], broker: Broker, subscriber: Subscriber, cid: str
) -> None:
    srv = make_server(*server_args(broker))
    started = time.time()
    files = {f"f{i}": os.urandom(6000 + i) for i in range(3)}
    sha = {fid: hashlib.sha256(data).hexdigest() for fid, data in files.items()}
    client = FtClient(srv.mqtt_port, cid)
    assert upload(client, "f0", files["f0"], sha["f0"]) == 0
    assert upload(client, "f1", files["f1"], sha["f1"], mode="$file-async") == 0  # accepted
    assert client.doc_for(f"$file-async/f1/fin/{len(files['f1'])}/{sha['f1']}")["reason_code"] == 0
    assert upload(client, "bad", files["f2"], "ab" * 32) == 0x80  # checksum_mismatch
    assert client.command(f"$file/f0/fin/{len(files['f0'])}/{sha['f0']}") == 0  # again
    client.close()

    got = subscriber.take(3)
    wait_for(lambda: pending(srv) == 0, "an empty outbox")
    assert srv.stop() == 0, srv.stderr()
    assert subscriber.messages.empty()  # exactly one each: the repeated fin added none
    events = {doc["fileId"]: (topic, doc) for topic, doc in got}
    assert sorted(events) == ["bad", "f0", "f1"]
    assert len({doc["id"] for _, doc in got}) == 3
    for fid, (topic, doc) in events.items():
        assert topic == f"ft/events/{cid}/{fid}"
        assert doc["clientId"] == cid and doc["fileId"] == fid and doc["name"] == f"{fid}.bin"
        assert doc["node"] == socket.gethostname()
        when = datetime.fromisoformat(doc["time"]).timestamp()
        assert started - 1 <= when <= time.time() + 1 and doc["time"].endswith("Z")
        uuid.UUID(doc["id"])
    bad = events["bad"][1]
    assert bad["event"] == "failed" and bad["size"] == len(files["f2"])
    assert (bad["reason"], bad["reasonCode"]) == ("checksum_mismatch", 0x80)
    assert bad["checksum"] == "ab" * 32 and bad["destination"] is None
    for fid in ("f0", "f1"):
        doc = events[fid][1]
        assert doc["event"] == "exported" and "reason" not in doc
        assert doc["size"] == len(files[fid]) and doc["checksum"] == sha[fid]
        path = find_export(srv.exports, cid, fid, f"{fid}.bin")
        assert doc["destination"] == str(path.absolute()) and path.read_bytes() == files[fid]


def outbox(srv: ServerProcess) -> dict[str, str]:
    """The events waiting on disk for the broker (read while ftserver is stopped): file id ->
    event id."""
    files = srv.data_dir.glob("outbox/mqtt/*/*.json")
    docs = [json.loads(f.read_bytes()) for f in files if not f.name.startswith(".")]
    return {doc["fileId"]: doc["id"] for doc in docs}


def take_files(sub: Subscriber, file_ids: set[str]) -> dict[str, dict[str, Any]]:
    """Events until each of ``file_ids`` has one, by event id (a repeat has an id seen
    before)."""
    got: dict[str, dict[str, Any]] = {}
    while not file_ids <= {doc["fileId"] for doc in got.values()}:
        _topic, doc = sub.messages.get(timeout=WAIT)
        got[doc["id"]] = doc
    return got


def test_events_wait_for_the_broker_across_restarts_and_kills(
    make_server: Callable[..., ServerProcess], broker: Broker, subscriber: Subscriber, cid: str
) -> None:
    """Relay mode: a device connects through to the broker, so while the broker is down it
    cannot connect at all. The broker is made to hang instead (SIGSTOP after the devices and
    the subscriber connected): file transfer goes on at ftserver, fins are answered, and their
    events wait on disk for a PUBACK that does not come. ftserver is then stopped (SIGTERM),
    or killed (SIGKILL) right after a fin answer, the broker resumes, ftserver restarts on the
    same data: every event arrives, to the subscriber connected since before the hang.
    Finally the broker really stops (SIGTERM, persistence on) with an event pending and starts
    again on its port. The freezes last seconds, far below the keep-alives of the relay's legs
    (relay.keepalive, 60 s) and of the subscriber (60 s): no connection is dropped for them."""
    args = server_args(broker)
    srv = make_server(*args)
    data = os.urandom(3000)
    ok = hashlib.sha256(data).hexdigest()
    got: dict[str, dict[str, Any]] = {}

    # 1. the broker hangs while a fin is answered; ftserver is stopped (SIGTERM) meanwhile
    client = FtClient(srv.mqtt_port, cid)
    broker.freeze()
    assert upload(client, "a1", data, ok) == 0
    wait_for(lambda: pending(srv) == 1, "1 event pending")
    assert srv.stop() == 0, srv.stderr()
    client.client.loop_stop()
    on_disk = outbox(srv)
    assert list(on_disk) == ["a1"]
    broker.thaw()
    srv = make_server(*args, data=srv.data_dir)
    got |= take_files(subscriber, {"a1"})
    assert on_disk["a1"] in got  # the event written before the answer, not a new one

    # 2. it hangs again; ftserver is killed (SIGKILL) right after answering a fin
    client = FtClient(srv.mqtt_port, cid)
    broker.freeze()
    assert upload(client, "b1", data, ok) == 0
    assert srv.kill() == -9
    client.client.loop_stop()
    on_disk = outbox(srv)
    assert "b1" in on_disk
    broker.thaw()
    srv = make_server(*args, data=srv.data_dir)
    got |= take_files(subscriber, {"b1"})
    assert on_disk["b1"] in got
    wait_for(lambda: pending(srv) == 0, "an empty outbox")
    assert subscriber.connects == 1  # the same subscriber connection throughout

    # 3. it hangs with a fin answered, then really stops (its devices are disconnected and
    # new ones refused: 0x88 Server unavailable) and starts again on its port
    client = FtClient(srv.mqtt_port, cid)
    broker.freeze()
    assert upload(client, "c1", data, ok) == 0
    wait_for(lambda: pending(srv) == 1, "1 event pending")
    broker.stop()
    client.client.loop_stop()
    refused = FtClient(srv.mqtt_port, f"{cid}-late", subscribe=False)
    assert refused.connack[1] == 0x88
    refused.client.loop_stop()
    assert pending(srv) == 1
    broker.start()
    got |= take_files(subscriber, {"c1"})
    wait_for(lambda: pending(srv) == 0, "an empty outbox")
    assert srv.stop() == 0, srv.stderr()
    assert subscriber.connects == 2  # reconnected after the restart, to its persistent session

    # at least once and none lost: one event id per file, each the exported file
    while not subscriber.messages.empty():
        _topic, doc = subscriber.messages.get()
        got[doc["id"]] = doc
    assert sorted(doc["fileId"] for doc in got.values()) == ["a1", "b1", "c1"]
    assert all(doc["event"] == "exported" and doc["checksum"] == ok for doc in got.values())


def test_events_over_tls_with_a_client_certificate(
    make_server: Callable[..., ServerProcess], tmp_path: Path, cid: str
) -> None:
    """mqtts:// upstream: the broker's certificate names ``broker.test`` (not the address
    connected to), checked through relay.server_name and relay.ca_file; the broker requires
    the client certificate of relay.cert_file / relay.key_file. The devices' upstream legs and
    the events connection share these settings."""
    ca = trustme.CA()
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key", "ccert", "ckey")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server_cert = ca.issue_cert("broker.test")
    server_cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server_cert.private_key_pem.write_to_path(str(files["key"]))
    client_cert = ca.issue_cert("ftserver-events")
    client_cert.cert_chain_pems[0].write_to_path(str(files["ccert"]))
    client_cert.private_key_pem.write_to_path(str(files["ckey"]))
    broker = Broker(tmp_path / "mosquitto")
    tls_port = broker.add_tls_listener(files["ca"], files["cert"], files["key"])
    broker.start()
    sub = Subscriber(broker.port)  # on the plain listener
    args = (
        "--workers", "1",
        "--set", f"relay.upstream=mqtts://127.0.0.1:{tls_port}",
        "--set", "relay.events_topic=ft/events",
        "--set", f"relay.ca_file={files['ca']}",
        "--set", f"relay.cert_file={files['ccert']}",
        "--set", f"relay.key_file={files['ckey']}",
        "--set", "notify.retry_max=500ms",
    )  # fmt: skip
    data = os.urandom(2000)
    try:
        # without relay.server_name the certificate does not match 127.0.0.1: the devices'
        # own upstream legs fail their TLS handshake, so the devices are refused
        srv = make_server(*args)
        refused = FtClient(srv.mqtt_port, cid, subscribe=False)
        assert refused.connack[1] == 0x88  # Server unavailable
        refused.client.loop_stop()
        samples = scrape(srv.http_port)
        assert metric(samples, "ftserver_relay_connect_failures_total", reason="tls") == 1
        assert metric(samples, "ftserver_relay_connect_failures_total") == 1
        assert "not valid for '127.0.0.1'" in srv.stderr()  # the name, not the client cert
        assert srv.stop() == 0, srv.stderr()
        # with it, the device connects through, uploads, and its event goes out on the
        # events connection (same TLS settings, client certificate required by the broker)
        srv = make_server(*args, "--set", "relay.server_name=broker.test", data=srv.data_dir)
        client = FtClient(srv.mqtt_port, cid)
        assert upload(client, "t1", data, hashlib.sha256(data).hexdigest()) == 0
        client.close()
        ((topic, doc),) = sub.take(1)
        assert topic == f"ft/events/{cid}/t1" and doc["event"] == "exported"
        wait_for(lambda: pending(srv) == 0, "the PUBACK")
        assert metric(scrape(srv.http_port), "ftserver_relay_connect_failures_total") == 0
        assert srv.stop() == 0, srv.stderr()
    finally:
        sub.close()
        broker.stop()

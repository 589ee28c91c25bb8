"""Sessions and transfers across connections: resume, persistent sessions, takeover, QoS 2,
subscriptions, Response Topic, restarts after SIGKILL."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProps

from ftharness import FtClient, ServerProcess, find_export
from ftserver.mqtt import codec
from ftserver.mqtt.packets import (
    Connack,
    Disconnect,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
)
from rawclient import RawClient


def test_disconnect_mid_transfer_then_resume(server: ServerProcess, cid: str) -> None:
    data = os.urandom(64 * 1024)
    a = FtClient(server.mqtt_port, cid)
    assert a.command("$file/r/init", json.dumps({"name": "r.bin"})) == 0
    for off in range(0, 32 * 1024, 4096):
        assert a.command(f"$file/r/{off}", data[off : off + 4096]) == 0
    a.client.socket().close()  # abrupt: no DISCONNECT
    a.client.loop_stop()
    b = FtClient(server.mqtt_port, cid)
    fin = b.command(f"$file/r/fin/{len(data)}")
    assert fin == 0x80
    assert b.doc_for(f"$file/r/fin/{len(data)}")["missing"] == [[32 * 1024, 64 * 1024]]
    for off in range(32 * 1024, len(data), 4096):
        assert b.command(f"$file/r/{off}", data[off : off + 4096]) == 0
    assert b.command(f"$file/r/fin/{len(data)}") == 0
    b.close()
    assert find_export(server.exports, cid, "r", "r.bin").read_bytes() == data


def test_fin_result_reaches_a_reconnected_persistent_session(
    server: ServerProcess, cid: str
) -> None:
    data = os.urandom(300_000)
    c = RawClient(server.mqtt_port)
    ack = c.connect(cid, clean=True, properties={"session_expiry_interval": 120})
    assert isinstance(ack, Connack) and ack.reason_code == 0
    assert isinstance(c.subscribe(f"$file-response/{cid}"), Suback)
    c.publish("$file/p/init", json.dumps({"name": "p.bin"}).encode())
    for off in range(0, len(data), 65536):
        c.publish(f"$file/p/{off}", data[off : off + 65536])
    fin_pid = c.publish(f"$file/p/fin/{len(data)}", b"")
    # gone before reading anything: the fin's result must wait for the session. Half-close
    # first, so that closing with unread data (which sends a TCP reset) cannot discard
    # commands the server has not read yet.
    c.sock.shutdown(socket.SHUT_WR)
    time.sleep(0.3)
    c.close()
    c2 = RawClient(server.mqtt_port)
    ack = c2.connect(cid, clean=False, properties={"session_expiry_interval": 120})
    assert isinstance(ack, Connack) and ack.session_present
    docs = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        p = c2.recv()
        assert p is not None
        if isinstance(p, Publish):
            assert p.packet_id is not None
            c2.send(codec.encode_puback(Puback(p.packet_id), 5))
            doc = json.loads(p.payload)
            docs.append(doc)
            if doc["topic"].startswith("$file/p/fin/"):
                break
    fin_doc = docs[-1]
    assert fin_doc["topic"] == f"$file/p/fin/{len(data)}"
    assert fin_doc["packet_id"] == fin_pid
    assert fin_doc["reason_code"] == 0
    c2.close()
    assert find_export(server.exports, cid, "p", "p.bin").read_bytes() == data


def test_takeover_closes_the_old_connection(server: ServerProcess, cid: str) -> None:
    a = FtClient(server.mqtt_port, cid)
    b = FtClient(server.mqtt_port, cid)
    a._wait(lambda: a.disconnect_reason is not None, "DISCONNECT")
    assert int(a.disconnect_reason.value) == 0x8E
    a.client.loop_stop()
    assert b.command("$file/t/init", json.dumps({"name": "t"})) == 0
    b.close()


def test_qos2_flow_and_duplicate_not_processed_twice(server: ServerProcess, cid: str) -> None:
    c = RawClient(server.mqtt_port)
    c.connect(cid)
    c.subscribe(f"$file-response/{cid}")
    pid = c.publish("$file/q2/init", json.dumps({"name": "q"}).encode(), qos=2)
    rec = c.recv()
    assert isinstance(rec, Pubrec) and rec.packet_id == pid and rec.reason_code == 0
    doc = c.recv()
    assert isinstance(doc, Publish) and json.loads(doc.payload)["reason_code"] == 0
    assert doc.packet_id is not None
    c.send(codec.encode_puback(Puback(doc.packet_id), 5))
    # duplicate (same packet id, before PUBREL) with different metadata: not processed again
    c.publish("$file/q2/init", json.dumps({"name": "other"}).encode(), qos=2, pid=pid, dup=True)
    rec = c.recv()
    assert isinstance(rec, Pubrec) and rec.reason_code == 0
    c.send(codec.encode_pubrel(Pubrel(pid), 5))
    comp = c.recv()
    assert isinstance(comp, Pubcomp) and comp.packet_id == pid and comp.reason_code == 0
    # an error result travels in PUBREC and ends the exchange
    pid2 = c.publish("$file/q2/fin/5", b"", qos=2)
    rec = c.recv()
    assert isinstance(rec, Pubrec) and rec.packet_id == pid2 and rec.reason_code == 0x80
    doc = c.recv()
    assert isinstance(doc, Publish)
    assert json.loads(doc.payload)["reason_description"] == "incomplete"
    # PUBREL for an unknown id
    c.send(codec.encode_pubrel(Pubrel(999), 5))
    comp = c.recv()
    assert isinstance(comp, Pubcomp) and comp.reason_code == 0x92
    c.close()


def test_subscription_rules(server: ServerProcess, cid: str) -> None:
    c = RawClient(server.mqtt_port)
    c.connect(cid)
    ack = c.subscribe(
        f"$file-response/{cid}",
        "$file-response/someone-else",
        "$file-response/#",
        "$file/x/init",
        "$SYS/#",
        "$share/g/resp",
        "resp/#",
        "a/#/b",
    )
    assert isinstance(ack, Suback)
    assert ack.reason_codes == [1, 0x87, 0x87, 0x87, 0x87, 0x9E, 1, 0x8F]
    c.close()
    c3 = RawClient(server.mqtt_port, level=4)
    c3.connect(cid + "-v3")
    ack = c3.subscribe(f"$file-response/{cid}-v3", "$SYS/#", "$share/g/x", "ok/+")
    assert isinstance(ack, Suback) and ack.reason_codes == [1, 0x80, 0x80, 1]
    c3.close()


def test_response_topic_and_correlation_data(server: ServerProcess, cid: str) -> None:
    c = FtClient(server.mqtt_port, cid, subscribe=False)
    _result, mid = c.client.subscribe(f"resp/{cid}/#", qos=1)
    c._wait(lambda: ("sub", mid) in c.acks, "SUBACK")
    props = PahoProps(PacketTypes.PUBLISH)
    props.ResponseTopic = f"resp/{cid}/x"
    props.CorrelationData = b"\x00corr\xff"
    assert c.command("$file-async/rt/init", json.dumps({"name": "n"}), props=props) == 0
    msg = c.messages.get(timeout=10)
    assert msg.topic == f"resp/{cid}/x"
    assert msg.properties.CorrelationData == b"\x00corr\xff"
    assert json.loads(msg.payload)["topic"] == "$file-async/rt/init"
    c.close()


def test_connect_rules(server: ServerProcess) -> None:
    with RawClient(server.mqtt_port) as c:
        ack = c.connect("x" * 300)
        assert isinstance(ack, Connack) and ack.reason_code == 0x85
        assert c.recv() is None
    with RawClient(server.mqtt_port, level=4) as c:
        ack = c.connect("%" * 100)  # escapes to 300 bytes
        assert isinstance(ack, Connack) and ack.reason_code == 2
    with RawClient(server.mqtt_port, level=4) as c:
        ack = c.connect("", clean=False)
        assert isinstance(ack, Connack) and ack.reason_code == 2
    with RawClient(server.mqtt_port) as c:
        ack = c.connect("")
        assert isinstance(ack, Connack) and ack.reason_code == 0
        assigned = ack.properties["assigned_client_identifier"]
        assert assigned
        assert ack.properties["shared_subscription_available"] == 0
        assert ack.properties["receive_maximum"] >= 1
        assert ack.properties["maximum_packet_size"] == 16 * 1024 * 1024
        sub = c.subscribe(f"$file-response/{assigned}")
        assert isinstance(sub, Suback) and sub.reason_codes == [1]
    with RawClient(server.mqtt_port, level=3) as c:
        c.send(b"\x10\x0f\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x01x")  # MQTT 3.1
        ack = c.recv()
        assert isinstance(ack, Connack) and ack.reason_code == 1


def test_keep_alive_timeout(server: ServerProcess, cid: str) -> None:
    with RawClient(server.mqtt_port) as c:
        c.connect(cid, keep_alive=1)
        started = time.monotonic()
        p = c.recv(timeout=5)
        assert isinstance(p, Disconnect) and p.reason_code == 0x8D
        assert time.monotonic() - started >= 1.4
        assert c.recv() is None


def test_malformed_packet_disconnects_only_the_offender(server: ServerProcess, cid: str) -> None:
    good = FtClient(server.mqtt_port, cid)
    bad = RawClient(server.mqtt_port)
    bad.connect(cid + "-bad")
    bad.send(b"\x32\x05\x00\x02\xff\xfe\x00")  # PUBLISH with an invalid UTF-8 topic
    p = bad.recv()
    assert isinstance(p, Disconnect) and p.reason_code in (0x81, 0x82)
    assert bad.recv() is None
    bad.close()
    assert good.command("$file/ok/init", json.dumps({"name": "ok"})) == 0
    good.close()


@pytest.mark.parametrize("durability", ["fast", "sync"])
def test_sigkill_mid_transfer_then_restart(
    make_server: Callable[..., ServerProcess], cid: str, durability: str
) -> None:
    srv = make_server("--durability", durability)
    data = os.urandom(3 * 1024 * 1024 + 123)
    seg = 64 * 1024
    offsets = list(range(0, len(data), seg))
    a = FtClient(srv.mqtt_port, cid)
    assert a.command("$file/k/init", json.dumps({"name": "k.bin"})) == 0
    half = offsets[: len(offsets) // 2]
    mids = [a.publish(f"$file/k/{o}", data[o : o + seg]) for o in half]
    for mid in mids:
        assert a.wait_ack(mid) == 0
    assert srv.kill() == -9
    a.client.loop_stop()
    srv2 = make_server("--durability", durability, data=srv.data_dir)
    b = FtClient(srv2.mqtt_port, cid)
    fin = f"$file/k/fin/{len(data)}"
    assert b.command(fin) == 0x80
    assert b.doc_for(fin)["missing"] == [[half[-1] + seg, len(data)]]
    mids = [b.publish(f"$file/k/{o}", data[o : o + seg]) for o in offsets[len(half) :]]
    for mid in mids:
        assert b.wait_ack(mid) == 0
    assert b.command(f"$file/k/fin/{len(data)}/{hashlib.sha256(data).hexdigest()}") == 0
    b.close()
    assert find_export(srv2.exports, cid, "k", "k.bin").read_bytes() == data
    assert srv2.stop() == 0


def test_mixed_modes_and_topic_aliases(server: ServerProcess, cid: str) -> None:
    with RawClient(server.mqtt_port) as c:
        c.connect(cid)
        c.subscribe(f"$file-response/{cid}")
        c.publish(
            "$file-async/mx/init",
            json.dumps({"name": "mx"}).encode(),
            properties={"topic_alias": 1},
        )
        # alias 1 -> the init topic again (an identical init: success)
        c.publish("", json.dumps({"name": "mx"}).encode(), properties={"topic_alias": 1})
        c.publish("$file/mx/0", b"hello ", properties={"topic_alias": 2})
        c.publish("$file-async/mx/6", b"world")
        c.publish("$file/mx/fin/11", b"")
        acks: dict[int, int] = {}
        docs: list[dict[str, object]] = []
        while len(acks) < 5 or len(docs) < 5:
            p = c.recv()
            if isinstance(p, Puback):
                acks[p.packet_id] = p.reason_code
            elif isinstance(p, Publish):
                assert p.packet_id is not None
                c.send(codec.encode_puback(Puback(p.packet_id), 5))
                docs.append(json.loads(p.payload))
        assert set(acks.values()) == {0}
        assert [d["topic"] for d in docs] == [
            "$file-async/mx/init",
            "$file-async/mx/init",
            "$file/mx/0",
            "$file-async/mx/6",
            "$file/mx/fin/11",
        ]
        # an alias that was never set, and one above the maximum, are protocol errors
        c.publish("", b"", properties={"topic_alias": 9})
        p = c.recv()
        assert isinstance(p, Disconnect) and p.reason_code == 0x82
    with RawClient(server.mqtt_port) as c:
        c.connect(cid + "b")
        c.publish("x/y", b"", properties={"topic_alias": 1000})
        p = c.recv()
        assert isinstance(p, Disconnect) and p.reason_code == 0x94
    assert find_export(server.exports, cid, "mx", "mx").read_bytes() == b"hello world"


def test_receive_maximum_exceeded(make_server: Callable[..., ServerProcess], cid: str) -> None:
    srv = make_server("--set", "mqtt.receive_maximum=2")
    with RawClient(srv.mqtt_port) as c:
        ack = c.connect(cid)
        assert isinstance(ack, Connack) and ack.properties["receive_maximum"] == 2
        for f in ("a", "b", "c"):
            c.publish(f"$file/{f}/init", json.dumps({"name": f}).encode())
            c.publish(f"$file/{f}/0", b"data")
        # acknowledged at once: these never count against the Receive Maximum
        for _ in range(6):
            p = c.recv()
            assert isinstance(p, Puback) and p.reason_code == 0
        # three fins in one write: each is held until its export ends, the third is one too many
        fins = [
            codec.encode_publish(Publish(f"$file/{f}/fin/4", b"", 1, packet_id=100 + k), 5)
            for k, f in enumerate("abc")
        ]
        c.send(b"".join(fins))
        got = []
        while (p := c.recv()) is not None:
            got.append(p)
        assert isinstance(got[-1], Disconnect) and got[-1].reason_code == 0x93

"""Record the bytes a real paho-mqtt 2.x client sends, for the codec's recorded-bytes tests.

A paho client is driven by hand (no network thread) against a listening socket on
127.0.0.1 port 0. The server side answers with hand-written bytes (not our encoder) where paho
needs an answer to go on: CONNACK, a PUBREC for the QoS 2 publish (so paho sends PUBREL) and
a QoS 1 PUBLISH (so paho sends PUBACK). Everything paho wrote is returned as one stream.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

#: QoS 1 PUBLISH the fake server sends so that paho answers with PUBACK (packet id 0x1234).
SERVER_PUBLISH_V5 = bytes.fromhex("320a0003732f311234006869")
SERVER_PUBLISH_V311 = bytes.fromhex("32090003732f3112346869")


@dataclass
class Recording:
    """The stream paho wrote, and what the test expects to decode from it."""

    protocol_level: int
    stream: bytes
    qos1_mid: int = 0
    qos2_mid: int = 0
    subscribe_mid: int = 0
    unsubscribe_mid: int = 0


def _pump(client: mqtt.Client) -> None:
    """Let paho read and handle exactly one packet the fake server sent."""
    rc = client.loop(timeout=2.0)
    if rc != mqtt.MQTT_ERR_SUCCESS:
        raise RuntimeError(f"paho loop failed: {rc}")


def record_session(protocol_level: int) -> Recording:
    """Run one scripted paho session at level 4 or 5 and return what paho sent."""
    v5 = protocol_level == 5
    server = socket.create_server(("127.0.0.1", 0))
    conn: socket.socket | None = None
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"paho-recorder-{protocol_level}",
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else True,
    )
    try:
        client.username_pw_set("device-user", "s3cret")
        will_props = None
        if v5:
            will_props = Properties(PacketTypes.WILLMESSAGE)
            will_props.WillDelayInterval = 10
            will_props.ContentType = "text/plain"
            will_props.UserProperty = [("w", "1")]
        client.will_set("devices/gone", b"offline", qos=1, retain=True, properties=will_props)
        connect_props = None
        if v5:
            connect_props = Properties(PacketTypes.CONNECT)
            connect_props.SessionExpiryInterval = 3600
            connect_props.ReceiveMaximum = 32
            connect_props.MaximumPacketSize = 1 << 20
            connect_props.TopicAliasMaximum = 8
            connect_props.RequestProblemInformation = 1
            connect_props.UserProperty = [("client", "paho"), ("client", "twice")]
        port = server.getsockname()[1]
        if v5:
            client.connect("127.0.0.1", port, keepalive=45, properties=connect_props)
        else:
            client.connect("127.0.0.1", port, keepalive=45)
        conn, _ = server.accept()
        conn.settimeout(5.0)
        conn.sendall(b"\x20\x03\x00\x00\x00" if v5 else b"\x20\x02\x00\x00")
        _pump(client)  # CONNACK

        rec = Recording(protocol_level, b"")
        props0 = props1 = props2 = None
        if v5:
            props0 = Properties(PacketTypes.PUBLISH)
            props0.PayloadFormatIndicator = 1
            props0.ContentType = "application/json"
            props0.MessageExpiryInterval = 60
            props1 = Properties(PacketTypes.PUBLISH)
            props1.ResponseTopic = "replies/paho"
            props1.CorrelationData = b"\x00\x01corr"
            props1.UserProperty = [("k1", "v1"), ("k2", "v2"), ("k1", "again")]
            props1.TopicAlias = 3
            props2 = Properties(PacketTypes.PUBLISH)
            props2.TopicAlias = 4
            props2.UserProperty = [("q", "2")]
        client.publish("$file/f1/init", b'{"name":"a.txt"}', qos=0, properties=props0)
        rec.qos1_mid = client.publish(
            "$file/f1/0", b"segment-bytes" * 3, qos=1, properties=props1
        ).mid
        client.publish("$file/f1/39", bytes(range(200)), qos=0)
        rec.qos2_mid = client.publish("$file/f1/fin/39", b"", qos=2, properties=props2).mid
        conn.sendall(bytes((0x50, 0x02)) + rec.qos2_mid.to_bytes(2, "big"))  # PUBREC
        _pump(client)  # -> PUBREL
        if v5:
            sub_props = Properties(PacketTypes.SUBSCRIBE)
            sub_props.SubscriptionIdentifier = 42
            sub_props.UserProperty = [("s", "1")]
            rec.subscribe_mid = client.subscribe(
                [
                    ("$file-response/paho-recorder-5", SubscribeOptions(qos=1)),
                    (
                        "replies/+",
                        SubscribeOptions(
                            qos=2, noLocal=True, retainAsPublished=True, retainHandling=2
                        ),
                    ),
                    ("all/#", SubscribeOptions(qos=0, retainHandling=1)),
                ],
                properties=sub_props,
            )[1]
            rec.unsubscribe_mid = client.unsubscribe(["replies/+", "all/#"])[1]
        else:
            rec.subscribe_mid = client.subscribe(
                [("$file-response/paho-recorder-4", 1), ("replies/+", 2), ("all/#", 0)]
            )[1]
            rec.unsubscribe_mid = client.unsubscribe(["replies/+", "all/#"])[1]
        conn.sendall(SERVER_PUBLISH_V5 if v5 else SERVER_PUBLISH_V311)
        _pump(client)  # -> PUBACK 0x1234
        client._send_pingreq()
        if v5:
            disc_props = Properties(PacketTypes.DISCONNECT)
            disc_props.SessionExpiryInterval = 0
            disc_props.ReasonString = "bye"
            client.disconnect(
                reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"),
                properties=disc_props,
            )
        else:
            client.disconnect()
        chunks = []
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        rec.stream = b"".join(chunks)
        return rec
    finally:
        client._reset_sockets()
        if conn is not None:
            conn.close()
        server.close()


def record_large_publish(protocol_level: int, size: int) -> bytes:
    """CONNECT, one QoS 1 PUBLISH of ``size`` bytes, DISCONNECT, as paho sends them."""
    v5 = protocol_level == 5
    server = socket.create_server(("127.0.0.1", 0))
    conn: socket.socket | None = None
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id="paho-large",
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else True,
    )
    try:
        client.connect("127.0.0.1", server.getsockname()[1], keepalive=0)
        conn, _ = server.accept()
        conn.settimeout(5.0)
        conn.sendall(b"\x20\x03\x00\x00\x00" if v5 else b"\x20\x02\x00\x00")
        _pump(client)
        payload = bytes(i * 7 % 251 for i in range(size))
        client.publish("$file/big/0", payload, qos=1)
        while client.want_write():
            client.loop_write()
        client.disconnect()
        chunks = []
        while chunk := conn.recv(1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        client._reset_sockets()
        if conn is not None:
            conn.close()
        server.close()

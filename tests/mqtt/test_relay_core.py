"""Relay mode's rules in :class:`ftserver.mqtt.core.SessionCore`, without sockets: the device's
bytes in, and what goes to the device (read with ``mqtt5``) and to the broker (the
``SendUpstream``/``OpenUpstream``/``CloseUpstream`` actions) out. The broker's side is played
by calling the core's ``upstream_*`` inputs with the packets a broker sends.

End-to-end behaviour against a real Mosquitto is in ``tests/relay/``.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import mqtt5
from coreharness import SETTINGS, Client, claiming_registry, closed, read_v5, sent
from test_session_core import _frame, _str

from ftserver.mqtt.actions import Action, CloseUpstream, OpenUpstream, SendUpstream
from ftserver.mqtt.packets import (
    Connack,
    Disconnect,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from ftserver.mqtt.relaying import RELAY_RECEIVE_MAXIMUM
from ftserver.mqtt.session import SessionRegistry

RELAY = dataclasses.replace(SETTINGS, relay=True)
QOS1, QOS2 = mqtt5.QoS.AT_LEAST_ONCE, mqtt5.QoS.EXACTLY_ONCE


def subscribe_raw(pid: int, filters: list[tuple[str, int]], *, subscription_id: int) -> bytes:
    """A v5 SUBSCRIBE written by hand (``mqtt5`` refuses to write an invalid filter)."""
    props = bytes((0x0B, subscription_id))  # Subscription Identifier (below 128: one byte)
    body = struct.pack("!H", pid) + bytes((len(props),)) + props
    return _frame(0x82, body + b"".join(_str(f) + bytes((qos,)) for f, qos in filters))


def up(actions: list[Action]) -> list[Any]:
    """The packets the actions send to the broker."""
    return [a.packet for a in actions if isinstance(a, SendUpstream)]


def down(c: Client, packet: Any) -> None:
    """The broker sends ``packet`` (one read)."""
    c.core.upstream_packet(packet)
    c.core.upstream_read_done()


def relay_client(registry: SessionRegistry | None = None) -> Client:
    return Client(settings=RELAY, registry=registry)


def connected(
    c: Client, broker: Connack | None = None, client_id: str = "dev-1", **kw: Any
) -> mqtt5.ConnAckPacket:
    """CONNECT through the relay, the broker accepting (or answering ``broker``)."""
    kw.setdefault("clean_start", True)
    acts = c.feed(mqtt5.ConnectPacket(client_id, **kw).write())
    assert [type(a).__name__ for a in acts].count("OpenUpstream") == 1
    assert read_v5(acts) == []  # no CONNACK before the broker's
    c.core.upstream_connected(broker or Connack(False, 0))
    (connack,) = read_v5(c.take())
    assert isinstance(connack, mqtt5.ConnAckPacket)
    return connack


# -- CONNECT ---------------------------------------------------------------------------------------


def test_connect_goes_upstream_with_the_device_fields() -> None:
    c = relay_client()
    will = mqtt5.Will("dev/gone", payload=b"bye", qos=QOS1, will_delay_interval=5)
    acts = c.feed(
        mqtt5.ConnectPacket(
            "dev-1",
            clean_start=False,
            keep_alive=30,
            username="u",
            password=b"p",
            will=will,
            session_expiry_interval=999_999,
            topic_alias_max=5,
            user_properties=[("k", "v")],
        ).write()
    )
    (open_,) = [a for a in acts if isinstance(a, OpenUpstream)]
    connect = open_.connect
    assert (connect.client_id, connect.clean_start, connect.username, connect.password) == (
        "dev-1",
        False,
        "u",
        b"p",
    )
    assert connect.will is not None and connect.will.topic == "dev/gone"
    assert connect.will.payload == b"bye" and connect.will.qos == 1
    assert connect.will.properties["will_delay_interval"] == 5
    props = connect.properties
    assert props["session_expiry_interval"] == SETTINGS.session_expiry_max  # capped as here
    assert props["receive_maximum"] == RELAY_RECEIVE_MAXIMUM  # bounded memory per device
    assert "topic_alias_maximum" not in props  # the broker sends no aliases to ftserver
    assert props["user_properties"] == [("k", "v")]


def test_connack_takes_the_broker_answer() -> None:
    c = relay_client()
    broker = Connack(
        True,
        0,
        {"receive_maximum": 2, "maximum_qos": 1, "retain_available": 0, "reason_string": "hi"},
    )
    connack = connected(c, broker, clean_start=False, session_expiry_interval=60)
    assert connack.session_present  # the broker's
    assert connack.receive_max == 2  # within the broker's
    assert connack.max_qos == QOS1
    assert not connack.retain_available
    assert connack.reason_str == "hi"
    # shared subscriptions are the broker's business in relay mode
    assert connack.shared_subscription_available


def test_assigned_client_identifier_comes_from_the_broker() -> None:
    c = relay_client()
    acts = c.feed(mqtt5.ConnectPacket("", clean_start=True).write())
    (open_,) = [a for a in acts if isinstance(a, OpenUpstream)]
    assert open_.connect.client_id == ""
    c.core.upstream_connected(Connack(False, 0, {"assigned_client_identifier": "auto-7"}))
    (connack,) = read_v5(c.take())
    assert connack.assigned_client_id == "auto-7"
    assert c.core.client_id == "auto-7" and "auto-7" in c.registry.sessions


def test_broker_refusal_is_passed_through() -> None:
    c = relay_client()
    c.feed(mqtt5.ConnectPacket("dev-1", username="u", password=b"bad").write())
    c.core.upstream_connected(Connack(False, 0x86))
    acts = c.take()
    (connack,) = read_v5(acts)
    assert connack.reason_code == 0x86 and closed(acts)
    assert "dev-1" not in c.registry.sessions


def test_broker_refusal_v311_keeps_its_return_code() -> None:
    from test_session_core import connect_v311

    c = relay_client()
    c.feed(connect_v311("dev-1"))
    c.core.upstream_connected(Connack(False, 5))
    acts = c.take()
    assert sent(acts) == bytes.fromhex("20020005") and closed(acts)


def test_broker_unavailable_is_server_unavailable() -> None:
    from test_session_core import connect_v311

    c = relay_client()
    c.feed(mqtt5.ConnectPacket("dev-1").write())
    c.core.upstream_failed("unreachable")
    acts = c.take()
    (connack,) = read_v5(acts)
    assert connack.reason_code == 0x88 and closed(acts)
    c3 = relay_client()
    c3.feed(connect_v311("dev-1"))
    c3.core.upstream_failed("timeout")
    assert sent(c3.take()) == bytes.fromhex("20020003")


def test_broker_without_the_session_clears_the_local_one() -> None:
    registry = SessionRegistry()
    c = relay_client(registry)
    connected(c, clean_start=False, session_expiry_interval=60)
    read_v5(c.feed(mqtt5.SubscribePacket(1, [mqtt5.TopicFilter("$file-response/dev-1")]).write()))
    again = relay_client(registry)  # takes the session over
    connack = connected(again, Connack(False, 0), clean_start=False, session_expiry_interval=60)
    assert not connack.session_present
    assert registry.sessions["dev-1"].subscriptions == {}


# -- device -> broker -----------------------------------------------------------------------------


def test_qos1_publish_acknowledged_with_the_broker_code() -> None:
    c = relay_client()
    connected(c)
    acts = c.feed(
        mqtt5.PublishPacket(
            "tele/t", b"21.5", qos=QOS1, packet_id=7, retain=True, user_properties=[("u", "1")]
        ).write()
    )
    (pub,) = up(acts)
    assert isinstance(pub, Publish)
    assert (pub.topic, bytes(pub.payload), pub.qos, pub.retain, pub.packet_id) == (
        "tele/t",
        b"21.5",
        1,
        True,
        7,
    )
    assert pub.properties["user_properties"] == [("u", "1")]
    assert read_v5(acts) == []  # no PUBACK before the broker's
    down(c, Puback(7, 0x10))
    (puback,) = read_v5(c.take())
    assert puback.packet_id == 7 and puback.reason_code == 0x10


def test_publish_without_alias_goes_up_as_it_came() -> None:
    c = relay_client()
    connected(c)
    wire = mqtt5.PublishPacket(
        "tele/t", b"21.5", qos=QOS1, packet_id=7, user_properties=[("u", "1")]
    ).write()
    (send,) = [a for a in c.feed(wire) if isinstance(a, SendUpstream)]
    assert send.raw is not None and bytes(send.raw) == wire  # no encoding on the way up
    aliased = mqtt5.PublishPacket("tele/a", b"1", topic_alias=3).write()
    (send,) = [a for a in c.feed(aliased) if isinstance(a, SendUpstream)]
    assert send.raw is None  # re-encoded without the alias


def test_topic_alias_resolved_before_going_up() -> None:
    c = relay_client()
    connected(c)
    c.feed(mqtt5.PublishPacket("tele/a", b"1", topic_alias=3).write())
    (pub,) = up(c.feed(mqtt5.PublishPacket("", b"2", topic_alias=3).write()))
    assert pub.topic == "tele/a" and "topic_alias" not in pub.properties


def test_qos2_publish_flow_end_to_end() -> None:
    c = relay_client()
    connected(c)
    (pub,) = up(c.feed(mqtt5.PublishPacket("tele/t", b"x", qos=QOS2, packet_id=9).write()))
    assert pub.qos == 2 and pub.packet_id == 9
    # a duplicate before the broker's PUBREC is not sent twice
    assert (
        up(
            c.feed(
                mqtt5.PublishPacket("tele/t", b"x", qos=QOS2, packet_id=9, duplicate=True).write()
            )
        )
        == []
    )
    down(c, Pubrec(9))
    (pubrec,) = read_v5(c.take())
    assert isinstance(pubrec, mqtt5.PubRecPacket) and pubrec.packet_id == 9
    (rel,) = up(c.feed(mqtt5.PubRelPacket(9).write()))
    assert isinstance(rel, Pubrel) and rel.packet_id == 9
    down(c, Pubcomp(9))
    (pubcomp,) = read_v5(c.take())
    assert isinstance(pubcomp, mqtt5.PubCompPacket) and pubcomp.packet_id == 9


def test_file_transfer_stays_local() -> None:
    c = relay_client()
    connected(c)
    acts = c.feed(mqtt5.PublishPacket("$file/f1/0", b"data", qos=QOS1, packet_id=1).write())
    assert up(acts) == []
    (puback,) = read_v5(acts)
    assert puback.reason_code == 0
    # not a command, but a $file topic all the same: never passed to the broker
    acts = c.feed(mqtt5.PublishPacket("$file-response/x", b"spoof", qos=QOS1, packet_id=2).write())
    assert up(acts) == []


def test_relayed_publishes_count_against_the_receive_maximum() -> None:
    c = relay_client()
    connected(c)
    for pid in range(1, SETTINGS.receive_maximum + 1):
        c.feed(mqtt5.PublishPacket("tele/t", b"x", qos=QOS1, packet_id=pid).write())
    acts = c.feed(mqtt5.PublishPacket("tele/t", b"x", qos=QOS1, packet_id=99).write())
    (disconnect,) = read_v5(acts)
    assert disconnect.reason_code == 0x93 and closed(acts)  # Receive Maximum exceeded
    assert CloseUpstream(None) in acts


# -- subscriptions --------------------------------------------------------------------------------


def test_subscribe_split_and_merged_in_order() -> None:
    c = relay_client()
    connected(c)
    filters = [
        ("cmd/dev-1/#", 2),
        ("$file-response/dev-1", 1),
        ("bad/#/x", 0),
        ("$share/g/tele/#", 1),
    ]
    acts = c.feed(subscribe_raw(4, filters, subscription_id=12))
    (sub,) = up(acts)
    assert isinstance(sub, Subscribe) and sub.packet_id == 4
    assert [(f, o.qos) for f, o in sub.subscriptions] == [
        ("cmd/dev-1/#", 2),
        ("$share/g/tele/#", 1),
    ]
    assert sub.properties["subscription_identifiers"] == [12]
    assert read_v5(acts) == []  # the SUBACK waits for the broker's
    down(c, Suback(4, [2, 0x87]))
    (suback,) = read_v5(c.take())
    assert suback.packet_id == 4
    assert [int(rc) for rc in suback.reason_codes] == [2, 1, 0x8F, 0x87]
    assert set(c.registry.sessions["dev-1"].subscriptions) == {"$file-response/dev-1"}


def test_subscribe_all_local_answers_at_once() -> None:
    c = relay_client()
    connected(c)
    acts = c.feed(mqtt5.SubscribePacket(5, [mqtt5.TopicFilter("$file-response/dev-1")]).write())
    assert up(acts) == []
    (suback,) = read_v5(acts)
    assert [int(rc) for rc in suback.reason_codes] == [1]


def test_unsubscribe_split_and_merged() -> None:
    c = relay_client()
    connected(c)
    read_v5(c.feed(mqtt5.SubscribePacket(1, [mqtt5.TopicFilter("$file-response/dev-1")]).write()))
    acts = c.feed(mqtt5.UnsubscribePacket(2, ["tele/#", "$file-response/dev-1"]).write())
    (unsub,) = up(acts)
    assert isinstance(unsub, Unsubscribe) and unsub.topic_filters == ["tele/#"]
    down(c, Unsuback(2, [0x11]))
    (unsuback,) = read_v5(c.take())
    assert [int(rc) for rc in unsuback.reason_codes] == [0x11, 0x00]


# -- broker -> device -----------------------------------------------------------------------------


def test_broker_messages_get_device_packet_ids_and_wait_for_its_window() -> None:
    c = relay_client()
    connected(c, receive_max=1)
    down(c, Publish("cmd/a", b"1", 1, True, False, 700, {"content_type": "t"}))
    (first,) = read_v5(c.take())
    assert first.payload == b"1" and first.retain and first.qos == QOS1
    assert first.content_type == "t"
    down(c, Publish("cmd/a", b"2", 1, False, False, 701))
    down(c, Publish("cmd/a", b"1", 1, True, True, 700))  # broker resends: held
    assert read_v5(c.take()) == []  # beyond the device's Receive Maximum: waits
    acts = c.feed(mqtt5.PubAckPacket(first.packet_id).write())
    assert up(acts) == [Puback(700, 0)]  # the broker hears of it once the device acknowledged
    (second,) = read_v5(acts)
    assert second.payload == b"2"
    assert up(
        c.feed(
            mqtt5.PubAckPacket(second.packet_id, reason_code=mqtt5.PubAckReasonCode(0x10)).write()
        )
    ) == [Puback(701, 0x10)]


def test_broker_messages_share_the_window_with_response_documents() -> None:
    from ftserver.mqtt.session import Message

    c = relay_client()
    connected(c, receive_max=1)
    c.core.deliver(Message("$file-response/dev-1", b"doc", 1))
    (doc,) = read_v5(c.take())
    down(c, Publish("cmd/a", b"m", 1, False, False, 5))
    assert read_v5(c.take()) == []
    (msg,) = read_v5(c.feed(mqtt5.PubAckPacket(doc.packet_id).write()))
    assert msg.payload == b"m" and msg.packet_id != doc.packet_id


def test_qos2_from_the_broker_end_to_end() -> None:
    c = relay_client()
    connected(c)
    down(c, Publish("cmd/a", b"q2", 2, False, False, 33))
    (pub,) = read_v5(c.take())
    assert pub.qos == QOS2
    assert up(c.feed(mqtt5.PubRecPacket(pub.packet_id).write())) == [Pubrec(33, 0)]
    down(c, Pubrel(33))
    (rel,) = read_v5(c.take())
    assert isinstance(rel, mqtt5.PubRelPacket) and rel.packet_id == pub.packet_id
    assert up(c.feed(mqtt5.PubCompPacket(pub.packet_id).write())) == [Pubcomp(33, 0)]
    assert c.registry.sessions["dev-1"].inflight == {}


def test_unknown_pubrel_from_the_broker_is_completed() -> None:
    c = relay_client()
    connected(c)
    down(c, Pubrel(44))
    assert up(c.take()) == [Pubcomp(44, 0x92)]


def test_released_message_resent_as_pubrel_to_the_next_connection() -> None:
    registry = SessionRegistry()
    c = relay_client(registry)
    connected(c, clean_start=False, session_expiry_interval=60)
    down(c, Publish("cmd/a", b"q2", 2, False, False, 33))
    (pub,) = read_v5(c.take())
    c.feed(mqtt5.PubRecPacket(pub.packet_id).write())
    again = relay_client(registry)  # takes the session over
    again.feed(mqtt5.ConnectPacket("dev-1", clean_start=False, session_expiry_interval=60).write())
    again.core.upstream_connected(Connack(True, 0))
    connack, rel = read_v5(again.take())
    assert connack.session_present
    assert isinstance(rel, mqtt5.PubRelPacket) and rel.packet_id == pub.packet_id
    down(again, Pubrel(33))  # the broker resends its PUBREL: already passed on
    assert up(again.feed(mqtt5.PubCompPacket(pub.packet_id).write())) == [Pubcomp(33, 0)]


# -- ending ---------------------------------------------------------------------------------------


def test_disconnect_passed_up_with_its_reason() -> None:
    c = relay_client()
    connected(c)
    acts = c.feed(mqtt5.DisconnectPacket(reason_code=mqtt5.DisconnectReasonCode(0x04)).write())
    (close,) = [a for a in acts if isinstance(a, CloseUpstream)]
    assert close.disconnect == Disconnect(0x04, {})
    assert closed(acts)


def test_vanished_device_closes_the_leg_without_disconnect() -> None:
    c = relay_client()
    connected(c)
    c.take()
    c.core.connection_lost()
    assert c.take() == [CloseUpstream(None)]


def test_broker_closing_the_leg_disconnects_the_device_with_its_code() -> None:
    c = relay_client()
    connected(c)
    c.core.upstream_closed(Disconnect(0x8E, {"reason_string": "taken over"}))
    acts = c.take()
    (disconnect,) = read_v5(acts)
    assert disconnect.reason_code == 0x8E and closed(acts)
    assert disconnect.reason_str == "taken over"
    assert not any(isinstance(a, CloseUpstream) for a in acts)  # the leg is gone already
    c2 = relay_client()
    connected(c2, client_id="dev-2")
    c2.core.upstream_closed(None)
    (disconnect,) = read_v5(c2.take())
    assert disconnect.reason_code == 0x80


def test_broker_messages_before_the_session_is_claimed_are_kept() -> None:
    """With workers the session is claimed after the broker's CONNACK; a persistent session's
    queued messages can follow that CONNACK at once: none may be lost meanwhile."""

    registry = claiming_registry()
    c = relay_client(registry)
    c.feed(mqtt5.ConnectPacket("dev-1", clean_start=False, session_expiry_interval=60).write())
    c.core.upstream_connected(Connack(True, 0))
    payload = bytearray(b"queued")
    down(c, Publish("q/1", memoryview(payload), 1, False, False, 3))
    payload[:] = b"reused"  # the leg's buffer moves on
    assert read_v5(c.take()) == []  # no CONNACK yet: the claim is running
    c.core.session_claimed(None)
    connack, pub = read_v5(c.take())
    assert connack.session_present
    assert pub.topic == "q/1" and pub.payload == b"queued"


def test_broker_closing_the_leg_before_the_session_is_ready() -> None:
    """The leg ends between the broker's CONNACK and the device's (the claim is running):
    the device gets Server unavailable, not a bare close."""

    registry = claiming_registry()
    c = relay_client(registry)
    c.feed(mqtt5.ConnectPacket("dev-1").write())
    c.core.upstream_connected(Connack(False, 0))
    c.take()
    c.core.upstream_closed(None)
    acts = c.take()
    (connack,) = read_v5(acts)
    assert connack.reason_code == 0x88 and closed(acts)


def test_shutdown_closes_the_leg_without_disconnect() -> None:
    """ftserver stopping is the device's path to the broker breaking: the device gets 0x8B,
    the leg ends without DISCONNECT, so the broker applies the Will (docs/relay.md)."""
    c = relay_client()
    connected(c)
    c.core.shutdown()
    acts = c.take()
    (disconnect,) = read_v5(acts)
    assert disconnect.reason_code == 0x8B and closed(acts)
    assert CloseUpstream(None) in acts

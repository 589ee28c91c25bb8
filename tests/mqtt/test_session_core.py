"""The session rules of :class:`ftserver.mqtt.core.SessionCore`, in process, without sockets or
an event loop: bytes in, actions out (see ``coreharness``)."""

from __future__ import annotations

import dataclasses
import struct

import mqtt5
import pytest
from coreharness import (
    SETTINGS,
    Client,
    Commands,
    Pending,
    claiming_registry,
    closed,
    kinds,
    read_v5,
    sent,
)

from ftserver.auth import FAILED_LOGIN_DELAY
from ftserver.errors import SUCCESS, Outcome, StorageError
from ftserver.mqtt.actions import (
    AwaitResult,
    CancelTimer,
    ClaimSession,
    Close,
    Event,
    GroupCommit,
    PauseReading,
    ResumeReading,
    Send,
    StartTimer,
    VerifyLogin,
)
from ftserver.mqtt.session import Message, SessionRegistry
from ftserver.mqtt.settings import Access

QOS0, QOS1, QOS2 = mqtt5.QoS.AT_MOST_ONCE, mqtt5.QoS.AT_LEAST_ONCE, mqtt5.QoS.EXACTLY_ONCE
SEGMENT = "$file/f1/0"


def publish(topic: str, pid: int | None = 1, qos: mqtt5.QoS = QOS1, **kw: object) -> bytes:
    return mqtt5.PublishPacket(topic, b"data", qos=qos, packet_id=pid, **kw).write()


def pubrel(pid: int) -> bytes:
    return mqtt5.PubRelPacket(pid).write()


def _str(s: str) -> bytes:
    return struct.pack("!H", len(s)) + s.encode()


def _frame(first: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes((first, len(body))) + body


def connect_v311(client_id: str, *, clean: bool = True, keep_alive: int = 0) -> bytes:
    """A 3.1.1 CONNECT written by hand from §3.1 of the 3.1.1 spec."""
    flags = 0x02 if clean else 0x00
    return _frame(
        0x10, _str("MQTT") + bytes((4, flags)) + struct.pack("!H", keep_alive) + _str(client_id)
    )


def publish_v311(topic: str, pid: int, qos: int = 1) -> bytes:
    return _frame(0x30 | qos << 1, _str(topic) + struct.pack("!H", pid) + b"data")


def subscribe_v311(pid: int, *filters: str) -> bytes:
    return _frame(0x82, struct.pack("!H", pid) + b"".join(_str(f) + b"\x01" for f in filters))


# -- CONNECT -------------------------------------------------------------------------------------


def test_connect_v311_answers_connack_and_arms_keep_alive() -> None:
    c = Client()
    assert c.take() == [StartTimer(SETTINGS.connect_timeout)]
    acts = c.feed(connect_v311("dev-1", keep_alive=30))
    assert sent(acts) == bytes.fromhex("20020000")
    assert CancelTimer() in acts and StartTimer(45.0) in acts
    assert Event("connect_v311") in acts
    assert not closed(acts)


def test_connect_v5_announces_the_server_limits() -> None:
    c = Client()
    ack = c.connect_v5("dev-1")
    assert ack.reason_code == mqtt5.ConnAckReasonCode.SUCCESS
    assert not ack.session_present
    assert ack.receive_max == SETTINGS.receive_maximum
    assert ack.max_packet_size == SETTINGS.max_packet_size
    assert ack.topic_alias_max == SETTINGS.topic_alias_maximum
    assert ack.shared_subscription_available is False
    assert ack.assigned_client_id is None and ack.server_keep_alive is None
    # the session expiry asked for is granted as is: no property
    assert ack.session_expiry_interval is None


def test_connect_v5_session_expiry_capped() -> None:
    c = Client()
    ack = c.connect_v5("dev-1", session_expiry_interval=SETTINGS.session_expiry_max + 1)
    assert ack.session_expiry_interval == SETTINGS.session_expiry_max


def test_empty_client_id_v5_is_assigned() -> None:
    c = Client()
    ack = c.connect_v5("")
    assert ack.reason_code == mqtt5.ConnAckReasonCode.SUCCESS
    assert ack.assigned_client_id is not None and ack.assigned_client_id.startswith("ft-")
    assert c.core.client_id == ack.assigned_client_id


def test_empty_client_id_v311_assigned_only_with_clean_session() -> None:
    c = Client()
    assert sent(c.feed(connect_v311("", clean=True))) == bytes.fromhex("20020000")
    c = Client()
    acts = c.feed(connect_v311("", clean=False))
    assert sent(acts) == bytes.fromhex("20020002")  # identifier rejected
    assert closed(acts)


def test_client_id_too_long_once_escaped_is_refused() -> None:
    c = Client()
    acts = c.feed(mqtt5.ConnectPacket("/" * 100, clean_start=True).write())  # escaped x3
    (ack,) = read_v5(acts)
    assert ack.reason_code == mqtt5.ConnAckReasonCode.CLIENT_ID_NOT_VALID
    assert closed(acts)
    c = Client()
    assert c.connect_v5("a" * 255).reason_code == mqtt5.ConnAckReasonCode.SUCCESS


def test_enhanced_authentication_is_refused() -> None:
    c = Client()
    acts = c.feed(mqtt5.ConnectPacket("d", clean_start=True, authentication_method="SCRAM").write())
    (ack,) = read_v5(acts)
    assert ack.reason_code == mqtt5.ConnAckReasonCode.BAD_AUTHENTICATION_METHOD
    assert closed(acts)


@pytest.mark.parametrize(("asked", "granted"), [(0, 60), (300, 60), (30, None)])
def test_keep_alive_capped_by_the_server(asked: int, granted: int | None) -> None:
    c = Client(settings=dataclasses.replace(SETTINGS, keepalive_max=60))
    acts = c.feed(mqtt5.ConnectPacket("d", clean_start=True, keep_alive=asked).write())
    (ack,) = read_v5(acts)
    assert ack.server_keep_alive == granted
    assert StartTimer((granted or asked) * 1.5) in acts


def test_keep_alive_timeout_via_ticks() -> None:
    c = Client()
    c.connect_v5(keep_alive=10)
    # traffic at t=10 moves the deadline: at t=15 the core waits 10 s more
    c.feed(mqtt5.PingReqPacket().write(), now=10.0)
    c.core.timer_fired(15.0)
    assert c.take() == [StartTimer(10.0)]
    c.core.timer_fired(25.0)
    acts = c.take()
    (disconnect,) = read_v5(acts)
    assert disconnect.reason_code == mqtt5.DisconnectReasonCode.KEEP_ALIVE_TIMEOUT
    assert closed(acts)


def test_no_connect_within_the_connect_timeout() -> None:
    c = Client()
    c.take()
    c.core.timer_fired(SETTINGS.connect_timeout)
    assert c.take() == [Close()]


def test_will_is_accepted() -> None:
    c = Client()
    will = mqtt5.Will("dev/gone", payload=b"bye", qos=QOS1, will_delay_interval=5)
    assert c.connect_v5(will=will).reason_code == mqtt5.ConnAckReasonCode.SUCCESS


def test_anonymous_client_refused_when_not_allowed() -> None:
    c = Client(access=Access(anonymous_ok=False))
    acts = c.feed(mqtt5.ConnectPacket("d", clean_start=True).write())
    (ack,) = read_v5(acts)
    assert ack.reason_code == mqtt5.ConnAckReasonCode.NOT_AUTHORIZED
    assert Event("login_failed") in acts and closed(acts)


def _password_access(tmp_path: object) -> Access:
    from pathlib import Path

    from ftserver.auth import PasswordFile

    path = Path(str(tmp_path)) / "passwords"
    path.write_text("alice:$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$0000\n")
    return Access(passwords=PasswordFile(path))


def test_login_verified_then_what_followed_the_connect(tmp_path: object) -> None:
    c = Client(access=_password_access(tmp_path))
    connect = mqtt5.ConnectPacket("d", clean_start=True, username="alice", password=b"pw")
    acts = c.feed(connect.write(), publish(SEGMENT, 7))
    assert PauseReading("connect") in acts
    assert VerifyLogin("alice", b"pw") in acts
    assert sent(acts) == b"" and c.commands.processed == []  # held until the CONNACK
    c.core.login_verified(True)
    acts = c.take()
    assert ResumeReading("connect") in acts
    ack, puback = read_v5(acts)
    assert ack.reason_code == mqtt5.ConnAckReasonCode.SUCCESS
    assert (puback.packet_id, puback.reason_code) == (7, mqtt5.PubAckReasonCode.SUCCESS)


def test_bad_password_answered_after_a_delay(tmp_path: object) -> None:
    c = Client(access=_password_access(tmp_path))
    c.feed(mqtt5.ConnectPacket("d", clean_start=True, username="alice", password=b"x").write())
    c.core.login_verified(False)
    acts = c.take()
    assert acts == [Event("login_failed"), StartTimer(FAILED_LOGIN_DELAY)]
    c.core.timer_fired(FAILED_LOGIN_DELAY)
    acts = c.take()
    (ack,) = read_v5(acts)
    assert ack.reason_code == mqtt5.ConnAckReasonCode.BAD_USER_NAME_OR_PASSWORD
    assert closed(acts)


# -- sessions and takeover ----------------------------------------------------------------------


def test_takeover_closes_the_old_connection() -> None:
    registry = SessionRegistry()
    old, new = Client(registry=registry), Client(registry=registry)
    old.connect_v5("dev-1", session_expiry_interval=60)
    old.take()
    ack = new.connect_v5("dev-1", clean_start=False, session_expiry_interval=60)
    assert ack.session_present
    acts = old.take()
    (disconnect,) = read_v5(acts)
    assert disconnect.reason_code == mqtt5.DisconnectReasonCode.SESSION_TAKEN_OVER
    assert Event("takeover") in acts and closed(acts)
    assert old.core.session is None
    # the old connection's end leaves the session to the new one
    old.core.connection_lost()
    assert registry.sessions["dev-1"].connection is new.core


def test_claim_from_the_session_registry_before_the_connack() -> None:
    registry = claiming_registry()
    c = Client(registry=registry)
    acts = c.feed(mqtt5.ConnectPacket("dev-1", clean_start=True).write(), publish(SEGMENT))
    assert ClaimSession("dev-1") in acts and sent(acts) == b""
    c.core.session_claimed(None)
    ack, puback = read_v5(c.take())
    assert ack.reason_code == 0 and puback.reason_code == 0


def test_claim_failure_refuses_the_client() -> None:
    registry = SessionRegistry()
    registry.bridge = object()  # type: ignore[assignment]  # only its presence matters here
    c = Client(registry=registry)
    c.feed(mqtt5.ConnectPacket("dev-1", clean_start=True).write())
    c.core.claim_failed(ConnectionError("supervisor gone"))
    acts = c.take()
    (ack,) = read_v5(acts)
    assert ack.reason_code == mqtt5.ConnAckReasonCode.SERVER_UNAVAILABLE
    assert closed(acts)


# -- QoS 1 and QoS 2 from the client ------------------------------------------------------------


def test_qos1_command_acknowledged_then_answered() -> None:
    c = Client()
    c.connect_v5()
    acts = c.feed(publish(SEGMENT, 3, response_topic="my/answers", correlation_data=b"\x01"))
    (puback,) = read_v5(acts)
    assert (puback.packet_id, puback.reason_code) == (3, 0)
    assert c.commands.processed == [("dev-1", SEGMENT, b"data", 1)]
    assert c.commands.commits == 1
    ((cid, topic, pid, outcome, extra),) = c.commands.responded
    assert (cid, topic, pid, outcome) == ("dev-1", SEGMENT, 3, SUCCESS)
    assert extra == {"response_topic": "my/answers", "correlation_data": b"\x01"}


def test_refusal_reason_goes_in_the_puback() -> None:
    c = Client()
    c.commands.results[SEGMENT] = Outcome(0x97, "quota_exceeded")
    c.connect_v5()
    (puback,) = read_v5(c.feed(publish(SEGMENT, 3)))
    assert puback.reason_code == mqtt5.PubAckReasonCode.QUOTA_EXCEEDED


def test_acknowledgements_of_one_read_go_out_together() -> None:
    c = Client()
    c.connect_v5()
    acts = c.feed(publish(SEGMENT, 1), publish("$file/f1/4", 2), publish("$file/f1/8", 3))
    sends = [a for a in acts if isinstance(a, Send)]
    assert len(sends) == 1 and [p.packet_id for p in read_v5(acts)] == [1, 2, 3]
    assert c.commands.commits == 1


def test_publish_outside_file_transfer_has_no_subscribers() -> None:
    c = Client()
    c.connect_v5()
    (puback,) = read_v5(c.feed(publish("sensors/t", 5)))
    assert puback.reason_code == mqtt5.PubAckReasonCode.NO_MATCHING_SUBSCRIBERS
    assert c.commands.responded == []


def test_qos1_v311_puback_bytes() -> None:
    c = Client()
    c.feed(connect_v311("dev-1"))
    assert sent(c.feed(publish_v311(SEGMENT, 0x1234))) == bytes.fromhex("40021234")


def test_upload_not_granted() -> None:
    from ftserver.acl import Acl, Rule

    acl = Acl([Rule(clientid="dev-*", upload=False)])
    c = Client(access=Access(acl=acl))
    c.connect_v5()
    (puback,) = read_v5(c.feed(publish(SEGMENT, 1)))
    assert puback.reason_code == mqtt5.PubAckReasonCode.NOT_AUTHORIZED
    assert c.commands.processed == []


def test_qos2_flow_with_duplicate_before_pubrel() -> None:
    c = Client()
    c.connect_v5()
    (pubrec,) = read_v5(c.feed(publish(SEGMENT, 9, QOS2)))
    assert (pubrec.packet_id, pubrec.reason_code) == (9, 0)
    # the same packet again before PUBREL: PUBREC again, the command is not run twice
    (pubrec,) = read_v5(c.feed(publish(SEGMENT, 9, QOS2, duplicate=True)))
    assert isinstance(pubrec, mqtt5.PubRecPacket) and pubrec.packet_id == 9
    assert len(c.commands.processed) == 1
    (pubcomp,) = read_v5(c.feed(pubrel(9)))
    assert (pubcomp.packet_id, pubcomp.reason_code) == (9, 0)
    # released: the same id is a new message now
    read_v5(c.feed(publish(SEGMENT, 9, QOS2)))
    assert len(c.commands.processed) == 2


def test_pubrel_of_unknown_packet_id() -> None:
    c = Client()
    c.connect_v5()
    (pubcomp,) = read_v5(c.feed(pubrel(42)))
    assert pubcomp.reason_code == mqtt5.PubCompReasonCode.PACKET_ID_NOT_FOUND


def test_qos2_refused_command_forgets_the_packet_id() -> None:
    c = Client()
    c.commands.results[SEGMENT] = Outcome(0x80, "invalid_offset")
    c.connect_v5()
    (pubrec,) = read_v5(c.feed(publish(SEGMENT, 9, QOS2)))
    assert pubrec.reason_code == mqtt5.PubRecReasonCode.UNSPECIFIED_ERROR
    (pubcomp,) = read_v5(c.feed(pubrel(9)))
    assert pubcomp.reason_code == mqtt5.PubCompReasonCode.PACKET_ID_NOT_FOUND


# -- deferred commands, Receive Maximum, group commit -------------------------------------------


def test_held_acknowledgement_waits_for_the_deferred_result() -> None:
    c = Client()
    pending = Pending(None)
    c.commands.results["$file/f1/fin/4"] = pending
    c.connect_v5()
    acts = c.feed(publish("$file/f1/fin/4", 5))
    (await_result,) = [a for a in acts if isinstance(a, AwaitResult)]
    assert await_result.final is pending.final and sent(acts) == b""
    c.core.deferred_done(await_result.job, Outcome(0x80, "checksum_mismatch"))
    acts = c.take()
    (puback,) = read_v5(acts)
    assert (puback.packet_id, puback.reason_code) == (5, 0x80)
    assert c.commands.responded[-1][3] == Outcome(0x80, "checksum_mismatch")


def test_async_fin_acknowledged_at_once_answered_later() -> None:
    c = Client()
    c.commands.results["$file-async/f1/fin/4"] = Pending(SUCCESS)
    c.connect_v5()
    acts = c.feed(publish("$file-async/f1/fin/4", 5))
    (puback,) = read_v5(acts)
    assert puback.reason_code == 0 and c.commands.responded == []
    (job,) = [a.job for a in acts if isinstance(a, AwaitResult)]
    c.core.deferred_done(job, RuntimeError("bug"))  # mapped by errors.outcome_of
    assert c.take() == []  # the acknowledgement went out already
    assert c.commands.responded[-1][3] == Outcome(0x80, "internal_error")


def test_receive_maximum_exceeded() -> None:
    c = Client()
    for n in range(SETTINGS.receive_maximum + 1):
        c.commands.results[f"$file/f{n}/fin/4"] = Pending(None)
    c.connect_v5()
    held = [publish(f"$file/f{n}/fin/4", n + 1) for n in range(SETTINGS.receive_maximum)]
    assert not closed(c.feed(*held))
    acts = c.feed(publish(f"$file/f{SETTINGS.receive_maximum}/fin/4", 99))
    (disconnect,) = read_v5(acts)
    assert disconnect.reason_code == mqtt5.DisconnectReasonCode.RECEIVE_MAX_EXCEEDED
    assert closed(acts)


def test_group_commit_holds_the_batch() -> None:
    c = Client()
    c.connect_v5()
    c.commands.group_commit_due = True
    acts = c.feed(publish(SEGMENT, 1), publish("$file/f1/4", 2))
    assert kinds(acts) == ["PauseReading", "GroupCommit"] and c.commands.commits == 0
    (commit,) = [a for a in acts if isinstance(a, GroupCommit)]
    c.core.commit_done(commit.batch, None)
    acts = c.take()
    assert acts[0] == ResumeReading("commit")
    assert [p.packet_id for p in read_v5(acts)] == [1, 2]


def test_failed_commit_answers_the_failure() -> None:
    c = Client()
    c.connect_v5()
    c.commands.commit_error = StorageError("enospc")
    (puback,) = read_v5(c.feed(publish(SEGMENT, 1)))
    assert puback.reason_code == 0x80
    assert c.commands.responded[-1][3] == Outcome(0x80, "enospc")


# -- topic aliases ------------------------------------------------------------------------------


def test_topic_alias_defined_then_used() -> None:
    c = Client()
    c.connect_v5()
    read_v5(c.feed(publish(SEGMENT, 1, topic_alias=2)))
    (puback,) = read_v5(c.feed(publish("", 2, topic_alias=2)))
    assert puback.reason_code == 0
    assert [p[1] for p in c.commands.processed] == [SEGMENT, SEGMENT]
    assert c.commands.responded[-1][1] == SEGMENT


def test_topic_alias_not_defined() -> None:
    c = Client()
    c.connect_v5()
    acts = c.feed(publish("", 1, topic_alias=3))
    (disconnect,) = read_v5(acts)
    assert disconnect.reason_code == mqtt5.DisconnectReasonCode.PROTOCOL_ERROR
    assert closed(acts) and c.commands.processed == []


def test_topic_alias_out_of_range() -> None:
    c = Client()
    c.connect_v5()
    acts = c.feed(publish(SEGMENT, 1, topic_alias=SETTINGS.topic_alias_maximum + 1))
    (disconnect,) = read_v5(acts)
    assert disconnect.reason_code == mqtt5.DisconnectReasonCode.TOPIC_ALIAS_INVALID
    assert closed(acts)


# -- subscriptions ------------------------------------------------------------------------------


def subscribe(pid: int, *filters: str) -> bytes:
    """A v5 SUBSCRIBE written by hand (``mqtt5`` refuses to write an invalid filter)."""
    body = struct.pack("!H", pid) + b"\x00" + b"".join(_str(f) + b"\x02" for f in filters)
    return _frame(0x82, body)


def test_subscription_codes() -> None:
    c = Client()
    c.connect_v5()
    filters = ["$file-response/dev-1", "$file-response/dev-2", "$share/g/t", "a/#/b", "t/+"]
    (suback,) = read_v5(c.feed(subscribe(4, *filters)))
    assert suback.packet_id == 4
    # granted QoS 1 at most (documents go out at QoS 1); other clients' responses: 0x87;
    # shared subscriptions: 0x9E; invalid filter: 0x8F
    assert [int(rc) for rc in suback.reason_codes] == [0x01, 0x87, 0x9E, 0x8F, 0x01]
    assert set(c.registry.sessions["dev-1"].subscriptions) == {"$file-response/dev-1", "t/+"}


def test_subscription_failure_v311_is_0x80() -> None:
    c = Client()
    c.feed(connect_v311("dev-1"))
    acts = c.feed(subscribe_v311(4, "$file-response/dev-1", "$file-response/x"))
    assert sent(acts) == bytes.fromhex("9004000401" + "80")


def test_unsubscribe_codes() -> None:
    c = Client()
    c.connect_v5()
    read_v5(c.feed(subscribe(1, "t/1")))
    (unsuback,) = read_v5(c.feed(mqtt5.UnsubscribePacket(2, ["t/1", "t/2"]).write()))
    assert [int(rc) for rc in unsuback.reason_codes] == [0x00, 0x11]


# -- delivery to the client ---------------------------------------------------------------------


def document(n: int, size: int = 10) -> Message:
    return Message("$file-response/dev-1", bytes([n]) * size, 1)


def test_delivery_respects_the_client_receive_maximum() -> None:
    c = Client()
    c.connect_v5(receive_max=1)
    c.core.deliver(document(1))
    c.core.deliver(document(2))
    (first,) = read_v5(c.take())
    assert first.payload == b"\x01" * 10 and first.qos == QOS1
    (second,) = read_v5(c.feed(mqtt5.PubAckPacket(first.packet_id).write()))
    assert second.payload == b"\x02" * 10 and second.packet_id != first.packet_id


def test_delivery_respects_the_client_maximum_packet_size() -> None:
    c = Client()
    c.connect_v5(max_packet_size=64)
    c.core.deliver(document(1, size=100))
    assert c.take() == []
    assert c.registry.sessions["dev-1"].inflight == {}
    c.core.deliver(document(2, size=10))
    (pub,) = read_v5(c.take())
    assert pub.payload == b"\x02" * 10


def test_response_document_routed_back_after_the_acknowledgement() -> None:
    registry = SessionRegistry()
    commands = Commands()
    c = Client(registry=registry, commands=commands)

    def route(client_id: str, topic: str, packet_id: int, outcome: Outcome) -> None:
        registry.route("$file-response/" + client_id, b"{}", {})

    commands.on_respond = route
    c.connect_v5()
    read_v5(c.feed(subscribe(1, "$file-response/dev-1")))
    puback, doc = read_v5(c.feed(publish(SEGMENT, 7)))
    assert isinstance(puback, mqtt5.PubAckPacket) and puback.packet_id == 7
    assert isinstance(doc, mqtt5.PublishPacket) and doc.topic == "$file-response/dev-1"


def test_unacknowledged_documents_resent_to_the_next_connection() -> None:
    registry = SessionRegistry()
    c = Client(registry=registry)
    c.connect_v5(session_expiry_interval=60)
    c.core.deliver(document(1))
    (pub,) = read_v5(c.take())
    d = Client(registry=registry)
    acts = d.feed(
        mqtt5.ConnectPacket("dev-1", clean_start=False, session_expiry_interval=60).write()
    )
    ack, again = read_v5(acts)
    assert ack.session_present
    assert again.duplicate and again.packet_id == pub.packet_id


def test_shutdown_says_so() -> None:
    c = Client()
    c.connect_v5()
    c.core.shutdown()
    acts = c.take()
    (disconnect,) = read_v5(acts)
    assert disconnect.reason_code == mqtt5.DisconnectReasonCode.SERVER_SHUTTING_DOWN
    assert acts[-1] == Close()

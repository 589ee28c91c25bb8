"""A server at its connection limits answers the CONNECT Server busy, in process (the core's
decision, see ``coreharness``); and the keep-alive while the server holds reading back."""

from __future__ import annotations

import mqtt5
from coreharness import SETTINGS, Client, closed, read_v5, sent
from test_session_core import connect_v311

from ftserver.mqtt.actions import Event, Send, StartTimer


def test_busy_v5_connect_is_answered_server_busy() -> None:
    c = Client(admitted=False)
    assert c.take() == [StartTimer(SETTINGS.connect_timeout)]
    acts = c.feed(mqtt5.ConnectPacket("dev-1", clean_start=True).write())
    (connack,) = read_v5(acts)
    assert isinstance(connack, mqtt5.ConnAckPacket)
    assert connack.reason_code == mqtt5.ConnAckReasonCode.SERVER_BUSY  # 0x89
    assert closed(acts)
    assert c.core.session is None and "dev-1" not in c.registry.sessions
    assert not any(isinstance(a, Event) and a.name.startswith("connect_v") for a in acts)


def test_busy_v311_connect_is_answered_server_unavailable() -> None:
    c = Client(admitted=False)
    acts = c.feed(connect_v311("dev-1"))
    assert sent(acts) == bytes.fromhex("20020003")  # return code 3: Server unavailable
    assert closed(acts)
    assert c.core.session is None


def test_busy_without_connect_is_closed_at_the_connect_timeout() -> None:
    c = Client(admitted=False)
    c.take()
    c.core.timer_fired(SETTINGS.connect_timeout)
    acts = c.take()
    assert closed(acts)
    assert not any(isinstance(a, Send) for a in acts)  # no CONNECT: nothing to answer


def test_admitted_connect_is_unchanged() -> None:
    c = Client()
    assert c.connect_v5("dev-1").reason_code == mqtt5.ConnAckReasonCode.SUCCESS


def test_alive_counts_as_received_for_the_keep_alive() -> None:
    c = Client()
    c.feed(mqtt5.ConnectPacket("dev-1", clean_start=True, keep_alive=10).write())
    c.core.alive(14.0)  # bytes wait unread: the client is sending
    c.core.timer_fired(15.0)  # the check at 1.5 x keep alive
    acts = c.take()
    assert not closed(acts)
    assert StartTimer(14.0) in acts  # next check 15 s after the activity
    c.core.timer_fired(29.0)
    assert closed(c.take())  # nothing since: keep-alive timeout

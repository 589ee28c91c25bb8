"""paho-mqtt clients for the relay tests: a device (or a client of the broker) that records
what it receives, its acknowledgements with their reason codes, its CONNACK and its
disconnection, and can leave without DISCONNECT (its socket cut) to make the broker publish
its Will.

A ``Peer`` never reconnects by itself: every reconnection in a test is explicit.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

WAIT = 20.0


def code(rc: Any) -> int:
    """The number of a paho reason code (or of a plain int)."""
    return int(getattr(rc, "value", rc))


def props(packet: int = PacketTypes.PUBLISH, **values: Any) -> Properties:
    """MQTT 5 properties by paho's attribute names (``UserProperty=[("k", "v")]``...)."""
    p = Properties(packet)
    for name, value in values.items():
        setattr(p, name, value)
    return p


class Peer:
    """One paho client, v3.1.1 (``version=4``) or v5, on 127.0.0.1:``port``."""

    def __init__(
        self,
        port: int,
        client_id: str,
        *,
        version: int = 5,
        clean: bool = True,
        session_expiry: int | None = None,
        username: str | None = None,
        password: str | None = None,
        will: tuple[str, bytes, int] | None = None,
        will_props: Properties | None = None,
        connect: bool = True,
    ) -> None:
        self.port = port
        self.client_id = client_id
        self.version = version
        self.v5 = version == 5
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            clean_session=None if self.v5 else clean,
            reconnect_on_failure=False,
        )
        self.clean = clean
        self.session_expiry = session_expiry
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.acks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self.connack: tuple[bool, int, Any] | None = None
        self.disconnected: int | None = None
        self._cond = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            topic, payload, qos = will
            self.client.will_set(topic, payload, qos=qos, properties=will_props)
        if connect:
            self.connect()

    # -- connection ----------------------------------------------------------------------

    def connect(self, timeout: float = WAIT) -> tuple[bool, int, Any]:
        """Connect and wait for the CONNACK: (session present, reason code, properties)."""
        self.connack = None
        self.disconnected = None
        connect_props = None
        if self.v5:
            connect_props = props(PacketTypes.CONNECT)
            if self.session_expiry is not None:
                connect_props.SessionExpiryInterval = self.session_expiry
        self.client.connect(
            "127.0.0.1",
            self.port,
            keepalive=30,
            clean_start=self.clean if self.v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=connect_props,
        )
        self.client.loop_start()
        try:
            self.wait(
                lambda: self.connack is not None or self.disconnected is not None,
                "CONNACK",
                timeout,
            )
        except TimeoutError:
            self.client.loop_stop()
            raise
        if self.connack is None:
            raise ConnectionError(f"{self.client_id}: closed before CONNACK ({self.disconnected})")
        return self.connack

    def _on_connect(self, _c: Any, _u: Any, flags: Any, rc: Any, properties: Any) -> None:
        with self._cond:
            self.connack = (bool(flags.session_present), code(rc), properties)
            self._cond.notify_all()

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, rc: Any, _props: Any) -> None:
        with self._cond:
            self.disconnected = code(rc)
            self._cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _props: Any) -> None:
        with self._cond:
            self.acks[mid] = code(rc)
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: Any, _props: Any) -> None:
        with self._cond:
            self.subacks[mid] = [code(r) for r in rcs] if isinstance(rcs, list) else [code(rcs)]
            self._cond.notify_all()

    def wait(self, pred: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        with self._cond:
            if not self._cond.wait_for(pred, timeout):
                raise TimeoutError(f"{self.client_id}: no {what} within {timeout}s")

    def wait_disconnected(self, timeout: float = WAIT) -> int:
        """Wait until the server closes the connection; its reason code (paho's for v3.1.1)."""
        self.wait(lambda: self.disconnected is not None, "disconnection", timeout)
        assert self.disconnected is not None
        return self.disconnected

    def close(self) -> None:
        """A normal DISCONNECT (reason 0x00); ``disconnect_with_will`` for 0x04."""
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def disconnect_with_will(self) -> None:
        """MQTT 5 DISCONNECT with reason code 0x04: the broker publishes the Will anyway."""
        self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=0x04))
        self.wait(lambda: self.disconnected is not None, "end of the connection")
        self.client.loop_stop()

    def cut(self) -> None:
        """Leave without DISCONNECT: the network loop stops, then the socket is shut down (the
        server reads end of file, as when a device loses power or coverage)."""
        sock = self.client.socket()
        self.client.loop_stop()
        assert isinstance(sock, socket.socket), "not connected"
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    # -- traffic ---------------------------------------------------------------------------

    def subscribe(self, filters: Sequence[tuple[str, int]], timeout: float = WAIT) -> list[int]:
        """One SUBSCRIBE carrying every filter; the SUBACK's codes, in order."""
        result, mid = self.client.subscribe(list(filters))
        assert result == mqtt.MQTT_ERR_SUCCESS, result
        self.wait(lambda: mid in self.subacks, f"SUBACK {mid}", timeout)
        return self.subacks[mid]

    def unsubscribe(self, filters: Sequence[str], timeout: float = WAIT) -> list[int]:
        """One UNSUBSCRIBE; the UNSUBACK's codes (MQTT 5; paho gives one 0 for v3.1.1)."""
        result, mid = self.client.unsubscribe(list(filters))
        assert result == mqtt.MQTT_ERR_SUCCESS, result
        self.wait(lambda: mid in self.subacks, f"UNSUBACK {mid}", timeout)
        return self.subacks[mid]

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 1,
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> int:
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
        return info.mid

    def wait_ack(self, mid: int, timeout: float = WAIT) -> int:
        """The PUBACK's (QoS 1) or PUBCOMP's (QoS 2) reason code (always 0 for v3.1.1)."""
        self.wait(lambda: mid in self.acks, f"acknowledgement of {mid}", timeout)
        return self.acks[mid]

    def receive(self, timeout: float = WAIT) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def receive_n(self, n: int, timeout: float = WAIT) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout
        return [self.messages.get(timeout=max(0.01, deadline - time.monotonic())) for _ in range(n)]

    def receive_on(self, topic: str, timeout: float = WAIT) -> mqtt.MQTTMessage:
        """The next message on ``topic`` (others are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            if msg.topic == topic:
                return msg

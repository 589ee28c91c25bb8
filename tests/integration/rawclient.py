"""A bare MQTT client over a blocking socket, built on ftserver's codec (client side).

For the flows paho hides (PUBREC reason codes, DUP resends, raw CONNACK codes, abrupt
closes). Protocol conformance of the codec itself is checked against independent oracles in
tests/protocol.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from ftserver.mqtt import codec
from ftserver.mqtt.packets import (
    Connect,
    Packet,
    Properties,
    Publish,
    Subscribe,
    SubscriptionOptions,
)


class RawClient:
    def __init__(self, port: int, level: int = 5, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.level = level
        self.decoder = codec.Decoder(1 << 26, server=False, protocol_level=max(level, 4))
        self.pid = 0

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def connect(
        self,
        client_id: str,
        *,
        clean: bool = True,
        keep_alive: int = 60,
        properties: Properties | None = None,
        username: str | None = None,
        password: bytes | None = None,
    ) -> Any:
        connect = Connect(
            client_id,
            self.level,
            clean,
            keep_alive,
            username=username,
            password=password,
            properties=properties or {},
        )
        self.send(codec.encode_connect(connect))
        return self.recv()

    def next_pid(self) -> int:
        self.pid = self.pid % 65535 + 1
        return self.pid

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        *,
        pid: int | None = None,
        dup: bool = False,
        properties: Properties | None = None,
    ) -> int:
        if qos and pid is None:
            pid = self.next_pid()
        self.send(
            codec.encode_publish(
                Publish(topic, payload, qos, False, dup, pid if qos else None, properties or {}),
                self.level,
            )
        )
        return pid or 0

    def subscribe(self, *filters: str, qos: int = 1) -> Any:
        pid = self.next_pid()
        subs = [(f, SubscriptionOptions(qos)) for f in filters]
        self.send(codec.encode_subscribe(Subscribe(pid, subs), self.level))
        return self.recv()

    def recv(self, timeout: float = 10.0) -> Packet | None:
        """The next packet, or None when the server closed the connection."""
        deadline = time.monotonic() + timeout
        while True:
            packet = self.decoder.next_packet()
            if packet is not None:
                if isinstance(packet, Publish):
                    packet.payload = bytes(packet.payload)
                return packet
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                raise TimeoutError("no packet from the server in time") from None
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.decoder.feed(data)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""A scripted stand-in for a file-transfer *server*, built on ftserver's own MQTT codec.

It exists for results the real server does not produce on demand (0x97 a chosen number of
times, 0x80 on one chosen segment, a segment acknowledged and then "lost"), so the uploader's
reaction to each can be tested. It is a double of the peer, never of the component under test:
the uploader runs unchanged against it, over real sockets on 127.0.0.1.

It speaks MQTT 3.1.1 and 5: CONNACK, SUBACK (QoS 1 granted), PINGRESP, PUBACK with the reason
code ``policy`` chooses, and a response document (QoS 1, Correlation Data copied) to the
client's ``$file-response/{clientId}`` (or the MQTT 5 Response Topic) after every command.
Segments acknowledged with 0x00 are stored, unless the policy says to drop them; fin checks
byte coverage and answers ``incomplete`` with ``missing`` like ftserver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ftcore
from ftserver.mqtt.codec import (
    Decoder,
    encode_connack,
    encode_pingresp,
    encode_puback,
    encode_publish,
    encode_suback,
)
from ftserver.mqtt.packets import (
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Properties,
    Puback,
    Publish,
    Suback,
    Subscribe,
)


@dataclass
class Answer:
    """What to answer a command with; ``store=False`` acknowledges a segment without
    keeping it (as if the server lost it)."""

    code: int = 0
    description: str = "success"
    store: bool = True


@dataclass
class Transfer:
    data: bytearray = field(default_factory=bytearray)
    ranges: ftcore.RangeSet = field(default_factory=ftcore.RangeSet)
    meta: dict[str, Any] | None = None
    exported: bytes | None = None


#: (kind, file id, offset or size, how many times this exact topic was seen) -> Answer
Policy = Callable[[str, str, int, int], Answer]


def always_ok(kind: str, file_id: str, number: int, seen: int) -> Answer:
    return Answer()


class FakeFtServer:
    def __init__(self, policy: Policy = always_ok) -> None:
        self.policy = policy
        self.transfers: dict[tuple[str, str], Transfer] = {}
        #: every command topic received, in order
        self.log: list[str] = []
        self.seen: dict[str, int] = {}
        #: reason codes sent, in order
        self.answers: list[int] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._session(reader, writer)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = Decoder(64 * 1024 * 1024)
        level = 5
        client_id = ""
        subscribed: set[str] = set()
        next_id = 0
        while data := await reader.read(256 * 1024):
            decoder.feed(data)
            while (packet := decoder.next_packet()) is not None:
                if isinstance(packet, Connect):
                    level = packet.protocol_level
                    client_id = packet.client_id
                    props: Properties = {"receive_maximum": 64} if level == 5 else {}
                    writer.write(encode_connack(Connack(False, 0, props), level))
                elif isinstance(packet, Subscribe):
                    subscribed.update(f for f, _o in packet.subscriptions)
                    codes = [1] * len(packet.subscriptions)
                    writer.write(encode_suback(Suback(packet.packet_id, codes), level))
                elif isinstance(packet, Pingreq):
                    writer.write(encode_pingresp())
                elif isinstance(packet, Disconnect):
                    return
                elif isinstance(packet, Publish) and packet.qos == 1:
                    assert packet.packet_id is not None
                    answer = self._command(client_id, packet.topic, bytes(packet.payload))
                    self.answers.append(answer.code)
                    writer.write(encode_puback(Puback(packet.packet_id, answer.code), level))
                    target = packet.properties.get("response_topic") or (
                        f"$file-response/{client_id}"
                    )
                    if target in subscribed:
                        doc = {
                            "vsn": "0.1",
                            "topic": packet.topic,
                            "packet_id": packet.packet_id,
                            "reason_code": answer.code,
                            "reason_description": answer.description,
                        }
                        if isinstance(answer, _FinAnswer) and answer.missing:
                            doc["missing"] = answer.missing
                        next_id = next_id % 65535 + 1
                        props = {}
                        corr = packet.properties.get("correlation_data")
                        if corr is not None and level == 5:
                            props["correlation_data"] = corr
                        out = Publish(target, json.dumps(doc).encode(), 1, False, False, next_id)
                        out.properties = props
                        writer.write(encode_publish(out, level))
            await writer.drain()

    def _command(self, client_id: str, topic: str, payload: bytes) -> Answer:
        self.log.append(topic)
        self.seen[topic] = seen = self.seen.get(topic, 0) + 1
        levels = topic.split("/")
        file_id, rest = levels[1], levels[2:]
        tr = self.transfers.setdefault((client_id, file_id), Transfer())
        if rest == ["init"]:
            answer = self.policy("init", file_id, 0, seen)
            if answer.code == 0:
                tr.meta = json.loads(payload)
            return answer
        if rest[:1] == ["fin"]:
            size = int(rest[1])
            answer = self.policy("fin", file_id, size, seen)
            if answer.code != 0:
                return answer
            if tr.meta is None:
                return _FinAnswer(0x80, "incomplete")
            if not tr.ranges.complete(size):
                return _FinAnswer(
                    0x80, "incomplete", missing=[list(g) for g in tr.ranges.gaps(size, 16)]
                )
            tr.exported = bytes(tr.data[:size])
            return answer
        offset = int(rest[0])
        answer = self.policy("segment", file_id, offset, seen)
        if answer.code == 0 and answer.store:
            end = offset + len(payload)
            if len(tr.data) < end:
                tr.data.extend(bytes(end - len(tr.data)))
            tr.data[offset:end] = payload
            if payload:
                tr.ranges.add(offset, end)
        return answer


@dataclass
class _FinAnswer(Answer):
    missing: list[list[int]] = field(default_factory=list)

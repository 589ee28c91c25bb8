"""The broker sink: each event published at QoS 1 to ``{relay.events_topic}/{clientId}/{fileId}``.

One connection per worker to the broker of ``relay.upstream`` (aiomqtt; MQTT 3.1.1, which
every broker speaks), with the relay's TLS settings and, with ``relay.credentials = "fixed"``,
its user name and password (else none: passthrough credentials belong to devices, and this
connection is ftserver's own). The client identifier is
``ftserver-events-<host>-<worker>``: stable, so the broker replaces a dead worker's connection
by its successor's. An event counts as delivered once the broker's PUBACK arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

import aiomqtt

from ftserver.config import RelayConfig, parse_upstream, relay_tls_context
from ftserver.notify.outbox import Entry
from ftserver.topics import is_valid_topic_name

log = logging.getLogger(__name__)

#: events published before their PUBACKs are awaited (paho allows 20 in flight by default)
WINDOW = 16


def client_id(worker: int, node: str | None = None) -> str:
    """The events connection's MQTT client identifier."""
    return f"ftserver-events-{node or socket.gethostname()}-{worker}"


def events_topic(prefix: str, doc: dict[str, Any]) -> str:
    return f"{prefix}/{doc['clientId']}/{doc['fileId']}"


class MqttSink:
    """Publishes events to the upstream broker (see the module docstring)."""

    name = "mqtt"
    window = WINDOW

    def __init__(self, relay: RelayConfig, *, identifier: str, timeout: float) -> None:
        self.relay = relay
        self.identifier = identifier
        self.timeout = timeout
        self.host, self.port, tls = parse_upstream(relay.upstream)
        self._tls = relay_tls_context(relay) if tls else None
        self._client: aiomqtt.Client | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._watch: asyncio.Task[None] | None = None

    def describe(self) -> str:
        return f"{self.relay.upstream} as {self.identifier}"

    def admits(self, doc: dict[str, Any]) -> bool:
        topic = events_topic(self.relay.events_topic, doc)
        if is_valid_topic_name(topic):
            return True
        log.warning(
            "notify mqtt: no event for %r/%r: %r is not a valid topic name (a wildcard in "
            "the client id)",
            doc["clientId"],
            doc["fileId"],
            topic,
        )
        return False

    async def connect(self) -> None:
        if self._client is not None:
            if self._watch is not None and not self._watch.done():
                return
            await self.close()  # lost while idle: connect again before sending
        fixed = self.relay.credentials == "fixed"
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.identifier,
            username=self.relay.username if fixed else None,
            password=self.relay.password if fixed else None,
            tls_context=self._tls,
            timeout=self.relay.connect_timeout,
            keepalive=self.relay.keepalive,
            clean_session=True,
            logger=log,
        )
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(client)
        self._client, self._stack = client, stack
        self._watch = asyncio.create_task(_until_disconnected(client))
        log.info("notify mqtt: connected to %s", self.describe())

    async def send(self, entry: Entry) -> None:
        client, watch = self._client, self._watch
        if client is None or watch is None or watch.done():
            raise ConnectionError("not connected to the broker")
        topic = events_topic(self.relay.events_topic, entry.doc)
        publish = asyncio.ensure_future(
            client.publish(topic, entry.body, qos=1, timeout=self.timeout)
        )
        await asyncio.wait((publish, watch), return_when=asyncio.FIRST_COMPLETED)
        if not publish.done():
            publish.cancel()
            with contextlib.suppress(BaseException):
                await publish
            raise ConnectionError("the broker closed the connection before its PUBACK")
        publish.result()

    async def close(self) -> None:
        watch, self._watch = self._watch, None
        stack, self._stack = self._stack, None
        self._client = None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(BaseException):
                await watch
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()


async def _until_disconnected(client: aiomqtt.Client) -> None:
    """Returns when the connection is lost (nothing is subscribed: no message comes)."""
    with contextlib.suppress(aiomqtt.MqttError):
        async for _message in client.messages:
            pass

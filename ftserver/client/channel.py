"""The upload's side of its connection: up or down, reconnects, the response-topic subscription.

The :class:`~ftserver.client.link.Link` connects (or waits for the application to); the
:class:`Channel` turns what it reports into what an upload needs to know:

- a *generation* per accepted CONNACK: an acknowledgement time measured across two says
  nothing about the path, and the commands of an older one were lost with it;
- the server's Receive Maximum, which caps the window;
- whether the subscription to the response topic must be made again (on the first connect,
  and on every reconnect that did not find the session), and whether the documents the server
  would have queued were lost with the session (then what awaits one is published again);
- when to give up: the link's own error, or a shared connection down for longer than the
  reconnect timeout (an owned link gives up by itself).

It calls ``on_up`` / ``on_down`` so that the upload can account for the commands in flight;
it knows nothing of commands itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiomqtt

from ftserver.client.errors import ConnectionFailed, UploadRejected
from ftserver.client.link import Link
from ftserver.client.tap import Connack, reason_value

log = logging.getLogger("ftserver.client")


class Channel:
    """One upload's view of ``link``; ``wake`` is set on every change."""

    def __init__(
        self,
        link: Link,
        *,
        response_topic: str,
        docs_required: bool,
        window: int,
        connect_timeout: float,
        reconnect_timeout: float,
        wake: asyncio.Event,
        clock: Callable[[], float],
        client_id: str,
        file_id: str,
        on_up: Callable[[float], None],
        on_down: Callable[[float], None],
    ) -> None:
        self.link = link
        self.response_topic = response_topic
        #: whether results need response documents (3.1.1, or a fin in async mode)
        self.docs_required = docs_required
        self.window = window
        self.connect_timeout = connect_timeout
        self.reconnect_timeout = reconnect_timeout
        self.wake = wake
        self.clock = clock
        self.client_id = client_id
        self.file_id = file_id
        self.on_up = on_up
        self.on_down = on_down
        #: whether response documents are received at all (a refused optional subscription
        #: turns it off)
        self.docs = True
        self.up = False
        #: one more per accepted CONNACK
        self.gen = 0
        #: commands in flight at most: the window, or the server's Receive Maximum if lower
        self.limit = window
        self.reconnects = 0
        self.need_subscribe = False
        self.session_present = False
        self._connected_once = False
        self._down_since: float | None = clock()
        self._kicked = False

    @property
    def owned(self) -> bool:
        """Whether the connection is the upload's own (it may force it down and reconnect)."""
        return self.link.owned

    @property
    def ready(self) -> bool:
        """Connected and subscribed: commands may be sent."""
        return self.up and not self.need_subscribe

    async def open(self) -> None:
        """Wait for the first connection (``ConnectionFailed`` when there is none)."""
        self.link.on_change = self.changed
        await self.link.open()
        self.changed()

    def detach(self) -> None:
        self.link.on_change = lambda: None

    def changed(self) -> None:
        """The link connected or dropped (called on the loop thread)."""
        now = self.clock()
        link = self.link
        if link.up and not self.up:
            self.up = True
            self.gen += 1
            self._down_since = None
            self._kicked = False
            connack: Connack | None = link.last_connack
            self.session_present = bool(connack and connack.session_present)
            if self._connected_once:
                self.reconnects += 1
                log.info("reconnected (session present: %s)", self.session_present)
            if connack is not None and connack.receive_maximum:
                self.limit = max(1, min(self.window, connack.receive_maximum))
            self.on_up(now)
            if self.docs and (not self._connected_once or not self.session_present):
                self.need_subscribe = True
            self._connected_once = True
        elif not link.up and self.up:
            self.up = False
            self._down_since = now
            self.on_down(now)
            log.info("connection lost")
        self.wake.set()

    def kick(self) -> None:
        """A command has had no acknowledgement for too long: force a connection of our own
        down (once per connection) so that it is reconnected."""
        if not self._kicked:
            self._kicked = self.link.kick()

    def check(self, now: float) -> None:
        """Raise the link's error, or ``ConnectionFailed`` when a shared connection has been
        down for longer than the reconnect timeout."""
        err = self.link.error
        if err is not None:
            err.client_id = self.client_id
            err.file_id = self.file_id
            raise err
        if (
            not self.up
            and self._down_since is not None
            and now - self._down_since > self.reconnect_timeout
            and not self.link.owned
        ):
            raise ConnectionFailed(
                f"the MQTT connection stayed down for {self.reconnect_timeout:.0f}s",
                client_id=self.client_id,
                file_id=self.file_id,
            )

    async def subscribe(self) -> bool:
        """Subscribe to the response topic; True when the documents queued for the previous
        session were lost (a reconnect without the session): what awaits one must be
        published again. Returns early (``need_subscribe`` set again) when the connection
        drops meanwhile or the subscription fails."""
        self.need_subscribe = False
        sub = asyncio.ensure_future(
            self.link.client.subscribe(self.response_topic, qos=1, timeout=self.connect_timeout)
        )
        try:
            while not sub.done() and self.up:
                self.wake.clear()
                waiter = asyncio.ensure_future(self.wake.wait())
                try:
                    await asyncio.wait({sub, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
        finally:
            if not sub.done():
                sub.cancel()
                await asyncio.gather(sub, return_exceptions=True)
        failure = None if sub.cancelled() else sub.exception()
        if failure is not None and not isinstance(failure, aiomqtt.MqttError):
            raise failure
        if sub.cancelled() or failure is not None:
            if self.up:
                log.info(
                    "subscribing to %s failed (%s); trying again",
                    self.response_topic,
                    failure or "connection lost",
                )
                await asyncio.sleep(0.1)
            self.need_subscribe = True
            return False
        granted = sub.result()
        code = reason_value(granted[0]) if granted else 0x80
        if code >= 0x80:
            if self.docs_required:
                raise UploadRejected(
                    f"the server refused the subscription to {self.response_topic} "
                    f"(0x{code:02X}); response documents are needed "
                    + ("with MQTT 3.1.1" if self.link.protocol != 5 else "in asynchronous mode"),
                    reason_code=code,
                    client_id=self.client_id,
                    file_id=self.file_id,
                )
            log.warning(
                "the server refused the subscription to %s (0x%02X); "
                "going on without response documents",
                self.response_topic,
                code,
            )
            self.docs = False
            return False
        return self._connected_once and not self.session_present

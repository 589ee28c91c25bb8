"""The one thing the MQTT layer asks of the file-transfer layer: run a command, answer it.

The session core hands over ``(client_id, topic, payload, qos)`` and gets an :class:`Outcome`
at once, a :class:`Pending` one, or None when the topic is no file-transfer command. Once the
acknowledgement is out it asks for the response document with :meth:`CommandHandler.respond`.
The dispatcher (``ftserver.transfer.dispatch.Dispatcher``) satisfies this protocol
structurally; the MQTT layer never imports it. :meth:`CommandHandler.fast_path` gives the
connection a :class:`SegmentTaker`, the native path for plain segments.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from ftserver.errors import Outcome
from ftserver.mqtt.packets import Payload


class Pending(Protocol):
    """A command whose result is not known yet (a fin waiting for its export).

    ``ack`` is the acknowledgement to send now (async fin: accepted), or None when the
    acknowledgement itself waits for ``final``.
    """

    @property
    def ack(self) -> Outcome | None: ...

    @property
    def final(self) -> Awaitable[Outcome]: ...


class SegmentTaker(Protocol):
    """The native segment path of one connection (see docs/architecture.md): it takes the run
    of plain segment PUBLISHes at the head of the receive buffer, places them, and hands back
    their PUBACKs; everything else stays for the core."""

    def take(self, buf: bytearray, start: int, end: int) -> int:
        """Take what it can of ``buf[start:end]``; the position after the last packet taken."""
        ...

    def take_acks(self) -> bytes:
        """The PUBACKs (success) of the packets taken since the last call, in order."""
        ...

    def release(self) -> None:
        """The connection is gone."""
        ...


class CommandHandler(Protocol):
    def process(
        self, client_id: str, topic: str, payload: Payload, qos: int
    ) -> Outcome | Pending | None:
        """Run the command; ``payload`` may be a view of the receive buffer, valid only
        during the call."""
        ...

    def respond(
        self,
        client_id: str,
        topic: str,
        packet_id: int,
        outcome: Outcome,
        *,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        """Publish the response document of a command that was answered ``outcome``."""
        ...

    @property
    def group_commit_due(self) -> bool:
        """Whether the batch's acknowledgements wait for :meth:`group_commit`."""
        ...

    def commit(self) -> None:
        """Make the batch durable at no wait, before it is acknowledged (may raise)."""
        ...

    async def group_commit(self) -> None:
        """Make the batch durable (sync durability), off the event loop."""
        ...

    def fast_path(
        self, client_id: str, protocol_level: int, max_packet_size: int
    ) -> SegmentTaker | None:
        """The native segment path for a connection that just became ``client_id``'s, or
        None (the handler has none)."""
        ...

"""The one thing the MQTT layer asks of the file-transfer layer: run a command, answer it.

The session core hands over ``(client_id, topic, payload, qos)`` and gets an :class:`Outcome`
at once, a :class:`Pending` one, or None when the topic is no file-transfer command. Once the
acknowledgement is out it asks for the response document with :meth:`CommandHandler.respond`.
The dispatcher (``ftserver.transfer.dispatch.Dispatcher``) satisfies this protocol
structurally; the MQTT layer never imports it.
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

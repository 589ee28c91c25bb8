"""What the session core asks of its connection: the actions it emits.

The core (:class:`ftserver.mqtt.core.SessionCore`) does no IO. Each input it gets (a decoded
packet, a timer firing, an answer to an earlier request) turns into zero or more of these,
handed in order to the ``emit`` callable it was built with. The asyncio protocol performs
them; a test collects them in a list. Requests that take time (:class:`VerifyLogin`,
:class:`ClaimSession`, :class:`AwaitResult`, :class:`GroupCommit`) are answered by calling the
core back with their result (``login_verified``, ``session_claimed``/``claim_failed``,
``deferred_done``, ``commit_done``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeAlias

from ftserver.errors import Outcome
from ftserver.mqtt.packets import Connect, Disconnect, Packet


@dataclass(frozen=True, slots=True)
class Send:
    """Write these bytes (one or more whole packets) to the peer."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection once what was sent is written; the core is closed already."""


@dataclass(frozen=True, slots=True)
class PauseReading:
    """Stop reading from the peer until the matching :class:`ResumeReading`."""

    reason: str


@dataclass(frozen=True, slots=True)
class ResumeReading:
    reason: str


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Call ``timer_fired(now)`` after ``delay`` seconds, replacing any timer running."""

    delay: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """Stop the timer (if any) without calling the core."""


@dataclass(frozen=True, slots=True)
class VerifyLogin:
    """Check a user name and password; answer with ``login_verified(ok)``."""

    username: str
    password: bytes


@dataclass(frozen=True, slots=True)
class ClaimSession:
    """Make this worker the client identifier's only home (the supervisor takes it from
    another worker if need be); answer with ``session_claimed(blob)`` (the session that
    worker handed over, or None) or ``claim_failed(exc)``."""

    client_id: str


@dataclass(frozen=True, slots=True)
class AwaitResult:
    """Wait for a deferred command's result; answer with ``deferred_done(job, outcome)``
    (or the exception it raised instead)."""

    job: object
    final: Awaitable[Outcome]


@dataclass(frozen=True, slots=True)
class GroupCommit:
    """Make the batch durable (sync durability): run the command handler's
    ``group_commit()``; answer with ``commit_done(batch, None)`` (or the exception)."""

    batch: object


@dataclass(frozen=True, slots=True)
class OpenUpstream:
    """Relay mode: open the upstream leg with this CONNECT (``ftserver.mqtt.upstream``);
    answered with ``upstream_connected(connack)`` or ``upstream_failed(reason)``."""

    connect: Connect


@dataclass(frozen=True, slots=True)
class SendUpstream:
    """Relay mode: send this packet to the broker on the upstream leg, now; ``raw``, when
    given, is the packet already encoded (a PUBLISH passed on as the device sent it)."""

    packet: Packet
    raw: memoryview | None = None


@dataclass(frozen=True, slots=True)
class CloseUpstream:
    """Relay mode: end the upstream leg, with this DISCONNECT or (None) without one."""

    disconnect: Disconnect | None


@dataclass(frozen=True, slots=True)
class Event:
    """Something worth counting happened (``connect_v5``, ``takeover``, ``login_failed``…)."""

    name: str


Action: TypeAlias = (
    Send
    | Close
    | PauseReading
    | ResumeReading
    | StartTimer
    | CancelTimer
    | VerifyLogin
    | ClaimSession
    | AwaitResult
    | GroupCommit
    | OpenUpstream
    | SendUpstream
    | CloseUpstream
    | Event
)

"""The commands of an upload in flight, and which result belongs to which.

A :class:`Command` is one init, segment or fin and the state of its current publish. The
:class:`Tracker` holds those in flight and is the listener of the
:class:`~ftserver.client.tap.Tap`: paho's callbacks only find the command a PUBACK or a
response document belongs to, record the result and wake the upload's task, which collects
the resolved commands (:meth:`Tracker.collect`) and decides what to do with each.

Where a result comes from:

- MQTT 5, synchronous mode: the PUBACK reason code (after a failure code the response document
  is awaited a little longer, ``doc_grace``, for the description and, for fin, the ``missing``
  ranges it carries: MQTT 5 PUBACKs may carry no Reason String);
- MQTT 5, asynchronous mode: the PUBACK for init and segments; the response document for fin;
- MQTT 3.1.1 (no reason codes): the response document, in both modes.

Response documents are matched by their MQTT 5 Correlation Data (unique for every publish of a
command) or, without it, by (command topic, packet id).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Final, Literal

from ftserver.client.tap import Connack, Document

Kind = Literal["init", "segment", "fin"]

_DOC_KEYS: Final = frozenset({"vsn", "topic", "packet_id", "reason_code", "reason_description"})
_NAMES: Final = {
    0x00: "success",
    0x10: "no_matching_subscribers",
    0x80: "error",
    0x83: "cancel",
    0x87: "not_authorized",
    0x97: "quota_exceeded",
}


def code_name(code: int) -> str:
    """A description for a result that came without one."""
    return _NAMES.get(code, f"0x{code:02X}")


class Command:
    """One command and the state of its current publish."""

    __slots__ = (
        "ack_code",
        "ack_reason",
        "acked",
        "attempts",
        "code",
        "corrs",
        "deadline",
        "description",
        "extra",
        "gen",
        "kind",
        "length",
        "mids",
        "offset",
        "payload",
        "resolved",
        "retries",
        "sent_at",
        "topic",
    )

    def __init__(
        self, kind: Kind, topic: str, *, offset: int = 0, length: int = 0, payload: bytes = b""
    ) -> None:
        self.kind = kind
        self.topic = topic
        self.offset = offset
        self.length = length
        self.payload = payload
        #: publishes so far, and resends after 0x80
        self.attempts = 0
        self.retries = 0
        #: the current publish: PUBACK seen, result known, and that result
        self.acked = False
        self.resolved = False
        self.code = -1
        self.description = ""
        #: the response document's other keys (fin's ``missing``)
        self.extra: dict[str, Any] = {}
        #: a failure PUBACK whose document is still awaited
        self.ack_code: int | None = None
        self.ack_reason: str | None = None
        self.deadline = 0.0
        self.sent_at = 0.0
        #: the connection generation it was published on
        self.gen = 0
        #: (topic, packet id) and correlation data of every publish not yet resolved
        self.mids: list[tuple[str, int]] = []
        self.corrs: list[bytes] = []

    def published(self, now: float, gen: int, deadline: float) -> None:
        """A new publish of this command starts: forget the previous one's result."""
        self.attempts += 1
        self.resolved = False
        self.acked = False
        self.code = -1
        self.ack_code = None
        self.sent_at = now
        self.gen = gen
        self.deadline = deadline


class Tracker:
    """The commands in flight; the tap's listener that gives them their results.

    ``v5`` and ``async_mode`` decide which results need a response document; ``docs`` says
    whether documents are received at all (not when the subscription to the response topic
    was refused and they are optional). ``wake`` is set whenever a command got its result.
    """

    def __init__(
        self,
        *,
        v5: bool,
        async_mode: bool,
        doc_grace: float,
        docs: Callable[[], bool],
        wake: asyncio.Event,
        clock: Callable[[], float],
    ) -> None:
        self.v5 = v5
        self.async_mode = async_mode
        self.doc_grace = doc_grace
        self.wake = wake
        self.clock = clock
        self.docs = docs
        self.inflight: set[Command] = set()
        #: segment bytes in ``inflight``
        self.inflight_bytes = 0
        self._by_mid: dict[int, Command] = {}
        self._by_topic_mid: dict[tuple[str, int], Command] = {}
        self._by_corr: dict[bytes, Command] = {}
        self._done: deque[Command] = deque()
        self._corr_prefix = secrets.token_bytes(8)
        self._corr_seq = itertools.count()

    def needs_doc(self, cmd: Command) -> bool:
        """Whether ``cmd``'s result is a response document rather than its PUBACK."""
        return not self.v5 or (self.async_mode and cmd.kind == "fin")

    def new_correlation(self) -> bytes:
        """Correlation Data for one publish (unique within and across uploads)."""
        return self._corr_prefix + next(self._corr_seq).to_bytes(8, "big")

    def track(self, cmd: Command, topic: str, mid: int, corr: bytes) -> None:
        """``cmd`` was just published on ``topic`` as packet ``mid`` (with ``corr``, if any)."""
        self._by_mid[mid] = cmd
        self._by_topic_mid[(topic, mid)] = cmd
        cmd.mids.append((topic, mid))
        if corr:
            self._by_corr[corr] = cmd
            cmd.corrs.append(corr)
        if cmd.kind == "segment" and cmd not in self.inflight:
            self.inflight_bytes += cmd.length
        self.inflight.add(cmd)

    def resolve(self, cmd: Command, code: int, description: str, extra: dict[str, Any]) -> None:
        """``cmd``'s current publish has its result; the upload collects it."""
        if cmd.resolved:
            return
        cmd.resolved = True
        cmd.code = code
        cmd.description = description
        cmd.extra = extra
        for topic, mid in cmd.mids:
            if self._by_mid.get(mid) is cmd:
                del self._by_mid[mid]
            if self._by_topic_mid.get((topic, mid)) is cmd:
                del self._by_topic_mid[(topic, mid)]
        for corr in cmd.corrs:
            self._by_corr.pop(corr, None)
        cmd.mids.clear()
        cmd.corrs.clear()
        self._done.append(cmd)
        self.wake.set()

    def collect(self) -> Iterator[Command]:
        """The commands resolved since the last call, taken out of flight."""
        while self._done:
            cmd = self._done.popleft()
            if cmd not in self.inflight:
                continue
            self.inflight.discard(cmd)
            if cmd.kind == "segment":
                self.inflight_bytes -= cmd.length
            yield cmd

    def waiting(self) -> list[Command]:
        """The commands in flight still without a result."""
        return [cmd for cmd in self.inflight if not cmd.resolved]

    # -- tap listener ------------------------------------------------------------------------

    def on_puback(self, mid: int, reason_code: int, reason_string: str | None) -> None:
        cmd = self._by_mid.pop(mid, None)
        if cmd is None or cmd.resolved:
            return
        cmd.acked = True
        if not self.v5:
            if not self.docs():  # pragma: no cover - 3.1.1 refuses to run without documents
                self.resolve(cmd, 0, "success", {})
            return
        if reason_code != 0:
            if self.docs() and reason_code >= 0x80:
                # the response document says why (and, for fin, what is missing): it follows
                # the PUBACK closely, but do not wait for it forever
                cmd.ack_code = reason_code
                cmd.ack_reason = reason_string
                cmd.deadline = self.clock() + self.doc_grace
                self.wake.set()
                return
            self.resolve(cmd, reason_code, reason_string or code_name(reason_code), {})
        elif not self.needs_doc(cmd):
            self.resolve(cmd, 0, "success", {})

    def on_document(self, doc: Document) -> None:
        try:
            body = json.loads(doc.payload)
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        cmd: Command | None = None
        if doc.correlation is not None:
            cmd = self._by_corr.get(doc.correlation)
        if cmd is None:
            topic, pid = body.get("topic"), body.get("packet_id")
            if isinstance(topic, str) and isinstance(pid, int):
                cmd = self._by_topic_mid.get((topic, pid))
        code = body.get("reason_code")
        if cmd is None or cmd.resolved or not isinstance(code, int):
            return
        desc = body.get("reason_description")
        extra = {k: v for k, v in body.items() if k not in _DOC_KEYS}
        self.resolve(cmd, code, desc if isinstance(desc, str) else code_name(code), extra)

    def on_connack(self, connack: Connack) -> None:
        pass  # the upload learns of connections through its Channel

    def on_connection_lost(self) -> None:
        pass  # the upload learns of connections through its Channel

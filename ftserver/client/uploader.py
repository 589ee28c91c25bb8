"""The upload algorithm: init, a window of segments, fin, and what to do with each result.

One task drives the transfer; paho's callbacks (through :class:`~ftserver.client.tap.Tap`)
only record results and wake it. Every command is a :class:`_Cmd` whose *result* comes from:

- MQTT 5, synchronous mode: the PUBACK reason code (after a failure code the response document
  is awaited a little longer, for the description and, for fin, the ``missing`` ranges it
  carries: MQTT 5 PUBACKs may carry no Reason String);
- MQTT 5, asynchronous mode: the PUBACK for init and segments; the response document for fin;
- MQTT 3.1.1 (no reason codes): the response document, in both modes.

Response documents are matched to commands by their MQTT 5 Correlation Data (unique for every
publish of a command) or, without it, by (command topic, packet id).

What each result leads to (EIP-0021, PROTOCOL.md §4):

- 0x00: done (a segment's byte range is recorded as acknowledged, also in the state file);
- 0x80 on a segment: resent, up to ``max_retries`` times per segment;
- 0x80 on fin, ``incomplete`` with ``missing``: those byte ranges are resent, then fin again;
  ``incomplete`` without ``missing`` (the server lacks the init, or does not say what is
  missing): init again, then fin; if still incomplete, the whole file again;
  ``timeout`` (the server's assembly took too long): fin again, which joins the running export;
  ``checksum_mismatch``: the file is checked for changes and sent once more in full;
  anything else: :class:`~ftserver.client.errors.UploadRejected`;
- 0x97: sending pauses (exponential backoff with jitter, reset by the next success), then the
  same command is resent; commands already in flight are still collected;
- 0x83: :class:`~ftserver.client.errors.UploadCancelled` at once; 0x87: not authorized.

A dropped connection stops sending; once reconnected, paho resends every command that had no
PUBACK yet (same packet id, DUP set), and commands that had their PUBACK but still await a
response document are published again unless the server kept the session (it then delivers
the queued documents). A command without a result for the command timeout is resent, or, on a
connection of the uploader's own that has not acknowledged anything for that long, the
connection is forced down and reconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import secrets
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import ftcore
from ftserver.client import state as statefile
from ftserver.client.errors import (
    ConnectionFailed,
    UploadCancelled,
    UploadError,
    UploadRejected,
    UploadTimeout,
)
from ftserver.client.flight import FlightControl
from ftserver.client.link import Backoff, Link, MqttSettings, OwnedLink, SharedLink, new_client_id
from ftserver.client.source import Source, SourceLike
from ftserver.client.state import UploadState
from ftserver.client.tap import Connack, Document, properties, reason_value

log = logging.getLogger("ftserver.client")

DEFAULT_SEGMENT_SIZE: Final = 256 * 1024
DEFAULT_WINDOW: Final = 16
DEFAULT_MAX_RETRIES: Final = 5
#: fin rounds (fin, resend what is missing, fin again) before giving up
MAX_FIN_ROUNDS: Final = 64
#: how often the state file is rewritten while data is acknowledged (seconds)
STATE_INTERVAL: Final = 1.0
#: how often progress is reported (seconds)
PROGRESS_INTERVAL: Final = 0.2

_DOC_KEYS: Final = frozenset({"vsn", "topic", "packet_id", "reason_code", "reason_description"})
_NAMES: Final = {
    0x00: "success",
    0x10: "no_matching_subscribers",
    0x80: "error",
    0x83: "cancel",
    0x87: "not_authorized",
    0x97: "quota_exceeded",
}


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Every timeout and backoff of an upload, in seconds."""

    #: one connection attempt (TCP, TLS, CONNACK); also SUBACK
    connect: float = 30.0
    #: a command without result is resent (or a stalled connection reconnected) after this
    command: float = 30.0
    #: a fin without result: the server assembles and exports meanwhile (its own limit,
    #: ``transfer.assemble_timeout``, is 5 minutes by default)
    fin: float = 360.0
    #: the connection down for longer than this ends the upload (ConnectionFailed)
    reconnect: float = 120.0
    #: no command succeeding for longer than this ends the upload (UploadTimeout)
    stall: float = 600.0
    #: after a failure PUBACK (MQTT 5), how long to wait for the response document that says
    #: why (and, for fin, what is missing)
    doc_grace: float = 5.0
    #: reconnect backoff: first delay, maximum delay
    reconnect_backoff: tuple[float, float] = (0.2, 10.0)
    #: 0x97 backoff: first pause, longest pause
    pause_backoff: tuple[float, float] = (0.5, 30.0)


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot for progress displays."""

    #: hashing, connecting, init, uploading, finishing, paused, reconnecting, done
    state: str
    #: bytes of the file the server has acknowledged
    bytes_done: int
    bytes_total: int
    #: segment bytes published so far, resends included
    bytes_sent: int
    #: seconds since the upload started
    elapsed: float
    #: bytes acknowledged before this run (from the state file)
    bytes_resumed: int = 0


@dataclass(frozen=True, slots=True)
class UploadResult:
    """A finished upload: the server confirmed the export."""

    client_id: str
    file_id: str
    name: str
    size: int
    #: hex SHA-256 sent in the init metadata (None with ``file_checksum=False``)
    checksum: str | None
    elapsed: float
    #: segment payload bytes published in this run, resends included
    bytes_sent: int
    #: of those, bytes sent more than once (resent after 0x80/0x97, after a reconnect, or
    #: because fin reported them missing)
    bytes_resent: int
    #: bytes skipped because the state file recorded them as acknowledged
    bytes_resumed: int
    reconnects: int
    #: pause episodes (0x97)
    pauses: int
    #: segments resent after 0x80
    retries: int
    #: fin commands sent
    fins: int

    @property
    def extra_ratio(self) -> float:
        """Resent bytes as a fraction of the bytes this run had to send."""
        need = self.size - self.bytes_resumed
        return self.bytes_resent / need if need > 0 else 0.0


class _Cmd:
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
        self, kind: str, topic: str, *, offset: int = 0, length: int = 0, payload: bytes = b""
    ) -> None:
        self.kind = kind
        self.topic = topic
        self.offset = offset
        self.length = length
        self.payload = payload
        self.attempts = 0
        self.retries = 0
        self.acked = False
        self.resolved = False
        self.code = -1
        self.description = ""
        self.extra: dict[str, Any] = {}
        self.ack_code: int | None = None
        self.ack_reason: str | None = None
        self.deadline = 0.0
        self.sent_at = 0.0
        self.gen = 0
        self.mids: list[tuple[str, int]] = []
        self.corrs: list[bytes] = []


class _Engine:
    """One upload over one link."""

    def __init__(
        self,
        *,
        source: Source,
        link: Link,
        state: UploadState,
        state_path: Path | None,
        mode: str,
        segment_size: int,
        window: int,
        segment_checksums: bool,
        response_topic: str | None,
        max_retries: int,
        timeouts: Timeouts,
        on_progress: Callable[[Progress], None] | None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        self.source = source
        self.link = link
        self.tap = link.tap
        self.state = state
        self.state_path = state_path
        self.mode = mode
        self.segment_size = segment_size
        self.window = window
        self.limit = window
        self.segment_checksums = segment_checksums
        self.max_retries = max_retries
        self.t = timeouts
        self.on_progress = on_progress
        self.v5 = link.protocol == 5
        self.prefix = ("$file-async/" if mode == "async" else "$file/") + state.file_id + "/"
        self.client_id = state.client_id
        self.response_topic = (
            response_topic if self.v5 and response_topic else f"$file-response/{self.client_id}"
        )
        self.custom_response_topic = self.v5 and bool(response_topic)
        #: whether results need response documents (3.1.1, or a fin in async mode)
        self.docs_required = not self.v5 or mode == "async"
        #: whether documents are received at all (a failed optional subscription turns it off)
        self.docs = True
        self.size = state.size
        self.acked = state.acked_set()
        self.resumed = self.acked.covered
        self.by_mid: dict[int, _Cmd] = {}
        self.by_topic_mid: dict[tuple[str, int], _Cmd] = {}
        self.by_corr: dict[bytes, _Cmd] = {}
        self.inflight: set[_Cmd] = set()
        #: segment bytes in ``inflight``, kept within the flight control's budget
        self.inflight_bytes = 0
        self.flight = FlightControl(2 * segment_size, window * segment_size)
        #: connection generation (one more per CONNACK); a round trip across two says nothing
        self.gen = 0
        self.done: deque[_Cmd] = deque()
        self.wake = asyncio.Event()
        self.up = False
        self.connected_once = False
        self.need_subscribe = False
        self.session_present = False
        self.down_since: float | None = self.started
        self.kicked = False
        self.paused_until = 0.0
        self.pause_attempt = 0
        self.pause_backoff = Backoff(*timeouts.pause_backoff)
        self.last_progress = self.started
        self.phase = "connecting"
        self.corr_prefix = secrets.token_bytes(8)
        self.corr_seq = itertools.count()
        self.dirty = False
        self.last_save = self.started
        self.last_report = 0.0
        self.last_phase = ""
        self.bytes_sent = 0
        self.bytes_resent = 0
        #: byte ranges published at least once in this run (what is sent again is resent)
        self.sent = ftcore.RangeSet()
        self.reconnects = 0
        self.pauses = 0
        self.retries = 0
        self.fins = 0

    # -- run ---------------------------------------------------------------------------------

    async def run(self) -> UploadResult:
        self.tap.add_listener(self)
        self.tap.watch(self.response_topic)
        self.link.on_change = self._on_link_change
        finished = False
        try:
            self._report(force=True)
            await self.link.open()
            self._on_link_change()
            await self._transfer()
            finished = True
        finally:
            self.link.on_change = lambda: None
            self.tap.remove_listener(self)
            self.tap.unwatch(self.response_topic)
            if finished:
                if self.state_path is not None:
                    statefile.remove(self.state_path)
            else:
                self._save(force=True)
        self.phase = "done"
        self._report(force=True)
        elapsed = self.loop.time() - self.started
        log.debug(
            "exported %s (%d bytes) as %s/%s in %.1fs",
            self.state.meta.get("name"),
            self.size,
            self.client_id,
            self.state.file_id,
            elapsed,
        )
        return UploadResult(
            client_id=self.client_id,
            file_id=self.state.file_id,
            name=str(self.state.meta.get("name", "")),
            size=self.size,
            checksum=self.state.checksum,
            elapsed=elapsed,
            bytes_sent=self.bytes_sent,
            bytes_resent=self.bytes_resent,
            bytes_resumed=self.resumed,
            reconnects=self.reconnects,
            pauses=self.pauses,
            retries=self.retries,
            fins=self.fins,
        )

    async def _transfer(self) -> None:
        need_init = True
        pending: list[tuple[int, int]] = self.acked.gaps(self.size)
        bare_incomplete = 0
        resent_all = False
        last_missing: list[tuple[int, int]] | None = None
        for _round in range(MAX_FIN_ROUNDS):
            if need_init:
                self.phase = "init"
                init = self._one("init", "init", json.dumps(self.state.meta).encode())
                await self._exchange(iter([init]), 1, self._handle_single)
                if init.code != 0:
                    raise self._rejected(init, "init refused")
                need_init = False
            if pending:
                self.phase = "uploading"
                await self._exchange(self._segments(pending), self.limit, self._handle_segment)
                self._save(force=True)
            self.phase = "finishing"
            fin = self._one("fin", f"fin/{self.size}", b"")
            self.fins += 1
            await self._exchange(iter([fin]), 1, self._handle_single)
            if fin.code == 0:
                return
            desc = fin.description
            log.info("fin: %s (0x%02X)", desc, fin.code)
            if desc == "incomplete":
                missing = _parse_missing(fin.extra.get("missing"), self.size)
                if missing:
                    if missing == last_missing:
                        raise self._rejected(fin, "the server keeps reporting the same gaps")
                    last_missing = missing
                    log.info(
                        "server is missing %d bytes in %d ranges; resending them",
                        sum(e - s for s, e in missing),
                        len(missing),
                    )
                    self._forget(missing)
                    pending = missing
                    continue
                # no ranges: the server lacks the init metadata (ftserver says so this way),
                # or it does not tell what is missing (EMQX): init again, then the whole file
                bare_incomplete += 1
                need_init = True
                pending = []
                if bare_incomplete == 2:
                    self._forget([(0, self.size)])
                    pending = self.acked.gaps(self.size)
                elif bare_incomplete > 2:
                    raise self._rejected(fin, "fin stays incomplete")
                continue
            if desc == "timeout":
                pending = []
                continue
            if desc == "checksum_mismatch" and not resent_all:
                resent_all = True
                await self._check_unchanged()
                self._forget([(0, self.size)])
                pending = self.acked.gaps(self.size)
                continue
            raise self._rejected(fin, "fin refused")
        raise UploadRejected(
            f"no export after {MAX_FIN_ROUNDS} fin rounds",
            client_id=self.client_id,
            file_id=self.state.file_id,
        )

    async def _check_unchanged(self) -> None:
        if self.state.checksum is None:
            return
        now = await asyncio.to_thread(self.source.sha256)
        if now != self.state.checksum:
            raise UploadRejected(
                f"{self.source.description} changed during the upload",
                description="checksum_mismatch",
                client_id=self.client_id,
                file_id=self.state.file_id,
            )

    def _forget(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Drop ``ranges`` from the acknowledged set (the server does not have them)."""
        drop = sorted(ranges)
        kept = ftcore.RangeSet()
        for start, end in self.acked:
            pos = start
            for ds, de in drop:
                if de <= pos or ds >= end:
                    continue
                if ds > pos:
                    kept.add(pos, ds)
                pos = max(pos, de)
            if pos < end:
                kept.add(pos, end)
        self.acked = kept
        self.dirty = True

    def _rejected(self, cmd: _Cmd, what: str) -> UploadRejected:
        return UploadRejected(
            f"{what}: {cmd.description} (0x{cmd.code:02X})",
            reason_code=cmd.code,
            description=cmd.description,
            client_id=self.client_id,
            file_id=self.state.file_id,
        )

    # -- commands ----------------------------------------------------------------------------

    def _one(self, kind: str, rest: str, payload: bytes) -> _Cmd:
        return _Cmd(kind, self.prefix + rest, payload=payload)

    def _segments(self, ranges: list[tuple[int, int]]) -> Iterator[_Cmd]:
        step = self.segment_size
        for start, end in ranges:
            for offset in range(start, end, step):
                length = min(step, end - offset)
                yield _Cmd("segment", self.prefix + str(offset), offset=offset, length=length)

    def _needs_doc(self, cmd: _Cmd) -> bool:
        return not self.v5 or (self.mode == "async" and cmd.kind == "fin")

    def _timeout_of(self, cmd: _Cmd) -> float:
        return self.t.fin if cmd.kind == "fin" else self.t.command

    def _send(self, cmd: _Cmd) -> None:
        now = self.loop.time()
        topic = cmd.topic
        if cmd.kind == "segment":
            payload = self.source.read(cmd.offset, cmd.length)
            if len(payload) != cmd.length:
                raise UploadError(f"{self.source.description} shrank during the upload")
            if self.segment_checksums:
                topic = f"{topic}/{hashlib.sha256(payload).hexdigest()}"
        else:
            payload = cmd.payload
        props: Properties | None = None
        corr = b""
        if self.v5:
            props = properties(PacketTypes.PUBLISH)
            corr = self.corr_prefix + next(self.corr_seq).to_bytes(8, "big")
            props.CorrelationData = corr
            if self.custom_response_topic:
                props.ResponseTopic = self.response_topic
        try:
            mid = self.tap.publish(topic, payload, props)
        except BufferError:
            raise UploadError(
                "the MQTT client's outgoing queue is full (raise max_queued_outgoing_messages)"
            ) from None
        cmd.attempts += 1
        cmd.resolved = False
        cmd.acked = False
        cmd.code = -1
        cmd.ack_code = None
        cmd.sent_at = now
        cmd.gen = self.gen
        cmd.deadline = now + self._timeout_of(cmd)
        self.by_mid[mid] = cmd
        self.by_topic_mid[(topic, mid)] = cmd
        cmd.mids.append((topic, mid))
        if corr:
            self.by_corr[corr] = cmd
            cmd.corrs.append(corr)
        if cmd.kind == "segment" and cmd not in self.inflight:
            self.inflight_bytes += cmd.length
        self.inflight.add(cmd)
        if cmd.kind == "segment":
            before = self.sent.covered
            self.sent.add(cmd.offset, cmd.offset + cmd.length)
            self.bytes_sent += cmd.length
            self.bytes_resent += cmd.length - (self.sent.covered - before)

    def _resolve(self, cmd: _Cmd, code: int, description: str, extra: dict[str, Any]) -> None:
        if cmd.resolved:
            return
        cmd.resolved = True
        cmd.code = code
        cmd.description = description
        cmd.extra = extra
        for topic, mid in cmd.mids:
            if self.by_mid.get(mid) is cmd:
                del self.by_mid[mid]
            if self.by_topic_mid.get((topic, mid)) is cmd:
                del self.by_topic_mid[(topic, mid)]
        for corr in cmd.corrs:
            self.by_corr.pop(corr, None)
        cmd.mids.clear()
        cmd.corrs.clear()
        self.done.append(cmd)
        self.wake.set()

    # -- the loop ----------------------------------------------------------------------------

    async def _exchange(
        self, fresh: Iterator[_Cmd], limit: int, handle: Callable[[_Cmd], bool]
    ) -> None:
        """Send the commands of ``fresh`` (at most ``limit`` unresolved at once) until every
        one has a result that ``handle`` accepts; ``handle`` returns True to resend."""
        retry: deque[_Cmd] = deque()
        exhausted = False
        while True:
            self.wake.clear()
            self._check()
            if self.up and self.need_subscribe:
                await self._subscribe()
                continue
            while self.done:
                cmd = self.done.popleft()
                if cmd not in self.inflight:
                    continue
                self.inflight.discard(cmd)
                if cmd.kind == "segment":
                    self.inflight_bytes -= cmd.length
                if self._judge(cmd, handle):
                    retry.append(cmd)
            now = self.loop.time()
            if self.up and not self.need_subscribe and now >= self.paused_until:
                limit = min(limit, self.limit)
                budget = self.flight.budget(now)
                while len(self.inflight) < limit:
                    if self.inflight_bytes and self.inflight_bytes + self.segment_size > budget:
                        break
                    if retry:
                        cmd = retry.popleft()
                    elif not exhausted:
                        nxt = next(fresh, None)
                        if nxt is None:
                            exhausted = True
                            continue
                        cmd = nxt
                    else:
                        break
                    self._send(cmd)
            if exhausted and not retry and not self.inflight:
                return
            wait = self._expire(now)
            if now < self.paused_until:
                wait = min(wait, self.paused_until - now)
            self._save()
            self._report()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), max(wait, 0.001))

    def _judge(self, cmd: _Cmd, handle: Callable[[_Cmd], bool]) -> bool:
        code = cmd.code
        if code == 0x97:
            self._pause(cmd)
            return True
        if code == 0x83:
            raise UploadCancelled(
                f"the server cancelled the transfer: {cmd.description} (0x83)",
                reason_code=code,
                description=cmd.description,
                client_id=self.client_id,
                file_id=self.state.file_id,
            )
        if code == 0x87:
            raise self._rejected(cmd, "not authorized")
        if code == 0x10:
            raise UploadRejected(
                "the server does not handle file transfer (PUBACK 0x10, no matching "
                "subscribers): is this ftserver or EMQX with file transfer enabled?",
                reason_code=code,
                description=cmd.description,
                client_id=self.client_id,
                file_id=self.state.file_id,
            )
        if code == 0:
            self.last_progress = self.loop.time()
            self.pause_attempt = 0
        return handle(cmd)

    def _handle_segment(self, cmd: _Cmd) -> bool:
        if cmd.code == 0:
            self.acked.add(cmd.offset, cmd.offset + cmd.length)
            self.dirty = True
            now = self.loop.time()
            clean = cmd.attempts == 1 and cmd.gen == self.gen
            self.flight.acked(now, cmd.length, now - cmd.sent_at if clean else None)
            return False
        if cmd.code == 0x80 and cmd.retries < self.max_retries:
            cmd.retries += 1
            self.retries += 1
            log.info(
                "segment at %d: %s; resending (%d/%d)",
                cmd.offset,
                cmd.description,
                cmd.retries,
                self.max_retries,
            )
            return True
        raise self._rejected(cmd, f"segment at offset {cmd.offset} refused")

    def _handle_single(self, cmd: _Cmd) -> bool:
        return False

    def _pause(self, cmd: _Cmd) -> None:
        now = self.loop.time()
        if cmd.sent_at < self.paused_until or now < self.paused_until:
            return  # part of the pause already running
        delay = self.pause_backoff.delay(self.pause_attempt)
        self.pause_attempt += 1
        self.pauses += 1
        self.paused_until = now + delay
        log.info("server asks to pause (%s); resuming in %.1fs", cmd.description, delay)
        self._save(force=True)

    def _expire(self, now: float) -> float:
        """Handle commands past their deadline; seconds until the next deadline."""
        nearest = 1.0
        if not self.up:
            return nearest
        for cmd in list(self.inflight):
            if cmd.resolved:
                continue
            left = cmd.deadline - now
            if left > 0:
                nearest = min(nearest, left)
                continue
            if cmd.ack_code is not None:  # a failure PUBACK whose document did not come
                self._resolve(cmd, cmd.ack_code, cmd.ack_reason or _name(cmd.ack_code), {})
            elif not cmd.acked and self.link.owned:
                if not self.kicked:
                    self.kicked = self.link.kick()
                cmd.deadline = now + self._timeout_of(cmd)
            else:
                what = "response document" if cmd.acked else "acknowledgement"
                log.info("no %s for %s; publishing it again", what, cmd.topic)
                self._send(cmd)
        return nearest

    def _check(self) -> None:
        now = self.loop.time()
        err = self.link.error
        if err is not None:
            err.client_id = self.client_id
            err.file_id = self.state.file_id
            raise err
        if (
            not self.up
            and self.down_since is not None
            and now - self.down_since > self.t.reconnect
            and not self.link.owned
        ):
            raise ConnectionFailed(
                f"the MQTT connection stayed down for {self.t.reconnect:.0f}s",
                client_id=self.client_id,
                file_id=self.state.file_id,
            )
        if now - self.last_progress > self.t.stall:
            raise UploadTimeout(
                f"no progress for {self.t.stall:.0f}s",
                client_id=self.client_id,
                file_id=self.state.file_id,
            )

    # -- connection --------------------------------------------------------------------------

    def _on_link_change(self) -> None:
        now = self.loop.time()
        link = self.link
        if link.up and not self.up:
            self.up = True
            self.gen += 1
            self.down_since = None
            self.kicked = False
            connack: Connack | None = link.last_connack
            self.session_present = bool(connack and connack.session_present)
            if self.connected_once:
                self.reconnects += 1
                log.info("reconnected (session present: %s)", self.session_present)
            if connack is not None and connack.receive_maximum:
                self.limit = max(1, min(self.window, connack.receive_maximum))
            for cmd in self.inflight:
                if cmd.resolved:
                    continue
                cmd.deadline = now + self._timeout_of(cmd)
                if not cmd.acked and cmd.kind == "segment":
                    # paho publishes it again after the CONNACK
                    self.bytes_sent += cmd.length
                    self.bytes_resent += cmd.length
            if self.docs and (not self.connected_once or not self.session_present):
                self.need_subscribe = True
            self.connected_once = True
        elif not link.up and self.up:
            self.up = False
            self.down_since = now
            self._save(force=True)
            log.info("connection lost")
        self.wake.set()

    async def _subscribe(self) -> None:
        """Subscribe to the response topic (on the first connect, and on every reconnect
        that did not find the session); then republish what awaits a document."""
        self.need_subscribe = False
        sub = asyncio.ensure_future(
            self.link.client.subscribe(self.response_topic, qos=1, timeout=self.t.connect)
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
            return
        granted = sub.result()
        code = reason_value(granted[0]) if granted else 0x80
        if code >= 0x80:
            if self.docs_required:
                raise UploadRejected(
                    f"the server refused the subscription to {self.response_topic} "
                    f"(0x{code:02X}); response documents are needed "
                    + ("with MQTT 3.1.1" if not self.v5 else "in asynchronous mode"),
                    reason_code=code,
                    client_id=self.client_id,
                    file_id=self.state.file_id,
                )
            log.warning(
                "the server refused the subscription to %s (0x%02X); "
                "going on without response documents",
                self.response_topic,
                code,
            )
            self.docs = False
            return
        if self.connected_once and not self.session_present:
            for cmd in list(self.inflight):
                if not cmd.resolved and self._needs_doc(cmd):
                    self._send(cmd)

    # -- tap listener ------------------------------------------------------------------------

    def on_puback(self, mid: int, reason_code: int, reason_string: str | None) -> None:
        cmd = self.by_mid.pop(mid, None)
        if cmd is None or cmd.resolved:
            return
        cmd.acked = True
        if not self.v5:
            if not self.docs:  # pragma: no cover - 3.1.1 refuses to run without documents
                self._resolve(cmd, 0, "success", {})
            return
        if reason_code != 0:
            if self.docs and reason_code >= 0x80:
                # the response document says why (and, for fin, what is missing): it follows
                # the PUBACK closely, but do not wait for it forever
                cmd.ack_code = reason_code
                cmd.ack_reason = reason_string
                cmd.deadline = self.loop.time() + self.t.doc_grace
                self.wake.set()
                return
            self._resolve(cmd, reason_code, reason_string or _name(reason_code), {})
        elif not self._needs_doc(cmd):
            self._resolve(cmd, 0, "success", {})

    def on_document(self, doc: Document) -> None:
        try:
            body = json.loads(doc.payload)
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        cmd: _Cmd | None = None
        if doc.correlation is not None:
            cmd = self.by_corr.get(doc.correlation)
        if cmd is None:
            topic, pid = body.get("topic"), body.get("packet_id")
            if isinstance(topic, str) and isinstance(pid, int):
                cmd = self.by_topic_mid.get((topic, pid))
        code = body.get("reason_code")
        if cmd is None or cmd.resolved or not isinstance(code, int):
            return
        desc = body.get("reason_description")
        extra = {k: v for k, v in body.items() if k not in _DOC_KEYS}
        self._resolve(cmd, code, desc if isinstance(desc, str) else _name(code), extra)

    def on_connack(self, connack: Connack) -> None:
        pass  # through the link's on_change

    def on_connection_lost(self) -> None:
        pass  # through the link's on_change

    # -- state and progress ------------------------------------------------------------------

    def _save(self, *, force: bool = False) -> None:
        if self.state_path is None or (not self.dirty and not force):
            return
        now = self.loop.time()
        if not force and now - self.last_save < STATE_INTERVAL:
            return
        self.state.acked = list(self.acked)
        try:
            statefile.save(self.state_path, self.state)
        except OSError as exc:
            log.warning("cannot write the state file %s: %s", self.state_path, exc)
        self.last_save = now
        self.dirty = False

    def _report(self, *, force: bool = False) -> None:
        if self.on_progress is None:
            return
        now = self.loop.time()
        phase = self.phase
        if phase not in ("connecting", "done"):
            if not self.up:
                phase = "reconnecting"
            elif now < self.paused_until:
                phase = "paused"
        if not force and phase == self.last_phase and now - self.last_report < PROGRESS_INTERVAL:
            return
        self.last_report = now
        self.last_phase = phase
        self.on_progress(
            Progress(
                state=phase,
                bytes_done=self.acked.covered,
                bytes_total=self.size,
                bytes_sent=self.bytes_sent,
                elapsed=now - self.started,
                bytes_resumed=self.resumed,
            )
        )


def _name(code: int) -> str:
    return _NAMES.get(code, f"0x{code:02X}")


def _parse_missing(value: object, size: int) -> list[tuple[int, int]]:
    """The ``missing`` key of an incomplete fin's document, checked; [] when unusable."""
    if not isinstance(value, list):
        return []
    out: list[tuple[int, int]] = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in item)
        ):
            return []
        start, end = min(item[0], size), min(item[1], size)
        if 0 <= start < end:
            out.append((start, end))
    return sorted(out)


def _valid_file_id(file_id: str) -> None:
    if not file_id or any(ch in file_id for ch in "/+#\0"):
        raise ValueError(f"invalid file id {file_id!r}: it must be non-empty, without / + # NUL")


async def upload(
    source: SourceLike,
    *,
    file_id: str | None = None,
    name: str | None = None,
    client: aiomqtt.Client | None = None,
    mqtt: MqttSettings | None = None,
    mode: Literal["sync", "async"] = "sync",
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    window: int = DEFAULT_WINDOW,
    segment_checksums: bool = False,
    file_checksum: bool = True,
    state_file: str | os.PathLike[str] | None = None,
    resume: bool = False,
    response_topic: str | None = None,
    expire_at: int | None = None,
    segments_ttl: int | None = None,
    user_data: Any = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    timeouts: Timeouts | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> UploadResult:
    """Upload a file (a path or a binary stream) and return once the server exported it.

    Over ``client``, an ``aiomqtt.Client`` the application has connected (and keeps: it is
    never connected or disconnected here, and its own messages are left alone), or over a
    connection of its own described by ``mqtt`` (default: MQTT 5 to 127.0.0.1:1883), which it
    reconnects whenever it drops.

    - ``file_id``: default a random UUID (a resumed upload keeps the recorded one);
      ``name``: the exported file's name, default the path's base name.
    - ``mode``: ``"sync"`` (``$file/...``, results in the PUBACK) or ``"async"``
      (``$file-async/...``, results of fin in response documents).
    - ``segment_size`` bytes per segment; ``window`` segments in flight at once (also capped by
      the server's Receive Maximum); ``segment_checksums`` adds each segment's SHA-256 to its
      topic; ``file_checksum`` sends the whole file's SHA-256 in the init metadata (computed
      first, in a thread).
    - ``state_file``: where to record progress; with ``resume=True`` a matching recorded
      upload (same source, size, checksum, name, client and file id if given) continues where
      it stopped; otherwise a new one starts.
    - ``response_topic`` (MQTT 5): receive response documents there instead of on
      ``$file-response/{clientId}``; ``expire_at``, ``segments_ttl``, ``user_data``: init
      metadata (PROTOCOL.md §3).
    - ``max_retries``: resends of one segment after 0x80; ``timeouts``: see :class:`Timeouts`.
    - ``on_progress`` is called a few times a second with a :class:`Progress`.

    Raises :class:`~ftserver.client.errors.UploadCancelled` (0x83),
    :class:`~ftserver.client.errors.UploadRejected`,
    :class:`~ftserver.client.errors.UploadTimeout` or
    :class:`~ftserver.client.errors.ConnectionFailed`; the state file (if any) then allows a
    later ``resume=True`` to continue.
    """
    if client is not None and mqtt is not None:
        raise ValueError("give either client (a shared connection) or mqtt (a new one)")
    if mode not in ("sync", "async"):
        raise ValueError(f"mode must be 'sync' or 'async', not {mode!r}")
    if segment_size < 1 or window < 1 or max_retries < 0:
        raise ValueError("segment_size and window must be positive, max_retries >= 0")
    if file_id is not None:
        _valid_file_id(file_id)
    t = timeouts or Timeouts()
    settings = mqtt or MqttSettings()
    if client is None and settings.version not in (4, 5):
        raise ValueError("mqtt.version must be 4 (MQTT 3.1.1) or 5")
    started = asyncio.get_running_loop().time()
    if on_progress is not None:
        on_progress(Progress("hashing", 0, 0, 0, 0.0))
    # in a thread: a pipe or FIFO is copied to a temporary file first
    src = await asyncio.to_thread(Source, source)
    try:
        upload_name = name or src.default_name
        if not upload_name:
            raise ValueError("a stream without a name: pass name=...")
        checksum = await asyncio.to_thread(src.sha256) if file_checksum else None
        state_path = Path(state_file) if state_file is not None else None
        state: UploadState | None = None
        if state_path is not None and resume:
            try:
                state = statefile.load(state_path)
            except ValueError as exc:
                log.warning("ignoring the state file: %s", exc)
            if state is not None:
                why = _mismatch(
                    state,
                    src,
                    checksum,
                    upload_name,
                    file_id,
                    client.identifier if client is not None else settings.client_id,
                )
                if why:
                    log.warning("not resuming: %s; starting a new upload", why)
                    state = None
                else:
                    log.info(
                        "resuming %s/%s: %d of %d bytes already acknowledged",
                        state.client_id,
                        state.file_id,
                        sum(e - s for s, e in state.acked),
                        state.size,
                    )
        if state is None:
            meta: dict[str, Any] = {"name": upload_name, "size": src.size}
            if checksum is not None:
                meta["checksum"] = checksum
            if expire_at is not None:
                meta["expire_at"] = expire_at
            if segments_ttl is not None:
                meta["segments_ttl"] = segments_ttl
            if user_data is not None:
                meta["user_data"] = user_data
            cid = client.identifier if client is not None else settings.client_id or new_client_id()
            state = UploadState(
                client_id=cid,
                file_id=file_id or uuid.uuid4().hex,
                meta=meta,
                size=src.size,
                checksum=checksum,
                source=src.description,
                mtime_ns=src.mtime_ns,
            )
        if state_path is not None:
            statefile.save(state_path, state)
        link: Link
        if client is not None:
            link = SharedLink(client, reconnect_timeout=t.reconnect)
        else:
            link = OwnedLink(
                settings,
                state.client_id,
                connect_timeout=t.connect,
                reconnect_timeout=t.reconnect,
                backoff=Backoff(*t.reconnect_backoff),
                inflight=window,
            )
        engine = _Engine(
            source=src,
            link=link,
            state=state,
            state_path=state_path,
            mode=mode,
            segment_size=segment_size,
            window=window,
            segment_checksums=segment_checksums,
            response_topic=response_topic,
            max_retries=max_retries,
            timeouts=t,
            on_progress=on_progress,
        )
        engine.started = started
        ok = False
        try:
            result = await engine.run()
            ok = True
            return result
        finally:
            if isinstance(link, OwnedLink):
                await link.close(end_session=ok)
            else:
                await link.close()
    finally:
        src.close()


def _mismatch(
    state: UploadState,
    src: Source,
    checksum: str | None,
    name: str,
    file_id: str | None,
    client_id: str | None,
) -> str:
    """Why ``state`` does not describe this upload ("" when it does)."""
    if state.source != src.description:
        return f"it records {state.source}"
    if state.size != src.size:
        return "the size changed"
    if checksum is not None and state.checksum is not None:
        if checksum != state.checksum:
            return "the content changed"
    elif state.mtime_ns != src.mtime_ns:
        return "the file was modified"
    if state.meta.get("name") != name:
        return f"it records the name {state.meta.get('name')!r}"
    if file_id is not None and file_id != state.file_id:
        return f"it records file id {state.file_id!r}"
    if client_id is not None and client_id != state.client_id:
        return f"it records client id {state.client_id!r}"
    return ""

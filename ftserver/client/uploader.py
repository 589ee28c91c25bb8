"""The upload algorithm: init, a window of segments, fin, and what to do with each result.

One task drives the transfer; paho's callbacks only record results (in the
:class:`~ftserver.client.commands.Tracker`, which also says where each result comes from) and
wake it. The parts it drives, each in its module:

- :class:`~ftserver.client.options.UploadOptions`: every setting, checked once;
- :class:`~ftserver.client.channel.Channel`: the connection as the upload sees it (reconnects,
  the response-topic subscription, when to give up);
- :class:`~ftserver.client.ledger.Ledger`: what is acknowledged, sent and missing, and the
  state file;
- :class:`~ftserver.client.flight.FlightControl` and ``PauseControl``: how much may be in
  flight, and when nothing may;
- :class:`~ftserver.client.report.Reporter`: progress for the application.

What each result leads to (EIP-0021, docs/protocol.md §4):

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
import dataclasses
import hashlib
import json
import logging
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Final, Unpack

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ftserver.client.channel import Channel
from ftserver.client.commands import Command, Kind, Tracker, code_name
from ftserver.client.errors import UploadCancelled, UploadError, UploadRejected, UploadTimeout
from ftserver.client.flight import FlightControl, PauseControl
from ftserver.client.ledger import Ledger, Ranges
from ftserver.client.link import Backoff, Link, MqttSettings, OwnedLink, SharedLink, new_client_id
from ftserver.client.options import Timeouts, UploadFields, UploadOptions
from ftserver.client.prepare import initial_state
from ftserver.client.report import Progress, Reporter, UploadResult
from ftserver.client.source import Source, SourceLike
from ftserver.client.state import UploadState
from ftserver.client.tap import properties

__all__ = ["upload"]

log = logging.getLogger("ftserver.client")

#: fin rounds (fin, resend what is missing, fin again) before giving up
MAX_FIN_ROUNDS: Final = 64


class _Engine:
    """One upload over one link: the transfer's rounds and the loop that exchanges commands."""

    def __init__(
        self,
        *,
        source: Source,
        link: Link,
        state: UploadState,
        opts: UploadOptions,
        on_progress: Callable[[Progress], None] | None,
        started: float,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.clock = self.loop.time
        now = self.clock()
        self.started = started
        self.source = source
        self.opts = opts
        self.t = opts.timeouts
        self.state = state
        self.client_id = state.client_id
        self.file_id = state.file_id
        self.tap = link.tap
        self.v5 = link.protocol == 5
        self.prefix = ("$file-async/" if opts.mode == "async" else "$file/") + self.file_id + "/"
        self.custom_response_topic = self.v5 and bool(opts.response_topic)
        response_topic = (
            opts.response_topic
            if self.v5 and opts.response_topic
            else f"$file-response/{self.client_id}"
        )
        self.wake = asyncio.Event()
        self.channel = Channel(
            link,
            response_topic=response_topic,
            docs_required=not self.v5 or opts.mode == "async",
            window=opts.window,
            connect_timeout=self.t.connect,
            reconnect_timeout=self.t.reconnect,
            wake=self.wake,
            clock=self.clock,
            client_id=self.client_id,
            file_id=self.file_id,
            on_up=self._connected,
            on_down=self._disconnected,
        )
        self.tracker = Tracker(
            v5=self.v5,
            async_mode=opts.mode == "async",
            doc_grace=self.t.doc_grace,
            docs=lambda: self.channel.docs,
            wake=self.wake,
            clock=self.clock,
        )
        self.ledger = Ledger(state, opts.state_path, now)
        self.flight = FlightControl(2 * opts.segment_size, opts.window * opts.segment_size)
        self.pause = PauseControl(Backoff(*self.t.pause_backoff))
        self.reporter = Reporter(on_progress, started)
        self.phase = "connecting"
        #: when a command last succeeded (no success for ``timeouts.stall``: UploadTimeout)
        self.last_progress = now
        self.retries = 0
        self.fins = 0

    # -- run ---------------------------------------------------------------------------------

    async def run(self) -> UploadResult:
        response_topic = self.channel.response_topic
        self.tap.add_listener(self.tracker)
        self.tap.watch(response_topic)
        finished = False
        try:
            self._report(force=True)
            await self.channel.open()
            await self._transfer()
            finished = True
        finally:
            self.channel.detach()
            self.tap.remove_listener(self.tracker)
            self.tap.unwatch(response_topic)
            if finished:
                self.ledger.finished()
            else:
                self.ledger.save(self.clock(), force=True)
        self.phase = "done"
        self._report(force=True)
        elapsed = self.clock() - self.started
        log.debug(
            "exported %s (%d bytes) as %s/%s in %.1fs",
            self.state.meta.get("name"),
            self.ledger.size,
            self.client_id,
            self.file_id,
            elapsed,
        )
        return UploadResult(
            client_id=self.client_id,
            file_id=self.file_id,
            name=str(self.state.meta.get("name", "")),
            size=self.ledger.size,
            checksum=self.state.checksum,
            elapsed=elapsed,
            bytes_sent=self.ledger.bytes_sent,
            bytes_resent=self.ledger.bytes_resent,
            bytes_resumed=self.ledger.resumed,
            reconnects=self.channel.reconnects,
            pauses=self.pause.count,
            retries=self.retries,
            fins=self.fins,
        )

    async def _transfer(self) -> None:
        """init, the missing segments, fin; again as fin's result asks, a bounded number of
        rounds."""
        size = self.ledger.size
        need_init = True
        pending: Ranges = self.ledger.missing()
        bare_incomplete = 0
        resent_all = False
        last_missing: Ranges | None = None
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
                await self._exchange(
                    self._segments(pending), self.channel.limit, self._handle_segment
                )
                self.ledger.save(self.clock(), force=True)
            self.phase = "finishing"
            fin = self._one("fin", f"fin/{size}", b"")
            self.fins += 1
            await self._exchange(iter([fin]), 1, self._handle_single)
            if fin.code == 0:
                return
            desc = fin.description
            log.info("fin: %s (0x%02X)", desc, fin.code)
            if desc == "incomplete":
                missing = _parse_missing(fin.extra.get("missing"), size)
                if missing:
                    if missing == last_missing:
                        raise self._rejected(fin, "the server keeps reporting the same gaps")
                    last_missing = missing
                    log.info(
                        "server is missing %d bytes in %d ranges; resending them",
                        sum(e - s for s, e in missing),
                        len(missing),
                    )
                    self.ledger.forget(missing)
                    pending = missing
                    continue
                # no ranges: the server lacks the init metadata (ftserver says so this way),
                # or it does not tell what is missing (EMQX): init again, then the whole file
                bare_incomplete += 1
                need_init = True
                pending = []
                if bare_incomplete == 2:
                    self.ledger.forget([(0, size)])
                    pending = self.ledger.missing()
                elif bare_incomplete > 2:
                    raise self._rejected(fin, "fin stays incomplete")
                continue
            if desc == "timeout":
                pending = []
                continue
            if desc == "checksum_mismatch" and not resent_all:
                resent_all = True
                await self._check_unchanged()
                self.ledger.forget([(0, size)])
                pending = self.ledger.missing()
                continue
            raise self._rejected(fin, "fin refused")
        raise UploadRejected(
            f"no export after {MAX_FIN_ROUNDS} fin rounds",
            client_id=self.client_id,
            file_id=self.file_id,
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
                file_id=self.file_id,
            )

    def _rejected(self, cmd: Command, what: str) -> UploadRejected:
        return UploadRejected(
            f"{what}: {cmd.description} (0x{cmd.code:02X})",
            reason_code=cmd.code,
            description=cmd.description,
            client_id=self.client_id,
            file_id=self.file_id,
        )

    # -- commands ----------------------------------------------------------------------------

    def _one(self, kind: Kind, rest: str, payload: bytes) -> Command:
        return Command(kind, self.prefix + rest, payload=payload)

    def _segments(self, ranges: Ranges) -> Iterator[Command]:
        step = self.opts.segment_size
        for start, end in ranges:
            for offset in range(start, end, step):
                length = min(step, end - offset)
                yield Command("segment", self.prefix + str(offset), offset=offset, length=length)

    def _timeout_of(self, cmd: Command) -> float:
        return self.t.fin if cmd.kind == "fin" else self.t.command

    def _send(self, cmd: Command) -> None:
        """Publish ``cmd`` (again): a segment's bytes are read from the source each time."""
        now = self.clock()
        topic = cmd.topic
        if cmd.kind == "segment":
            payload = self.source.read(cmd.offset, cmd.length)
            if len(payload) != cmd.length:
                raise UploadError(f"{self.source.description} shrank during the upload")
            if self.opts.segment_checksums:
                topic = f"{topic}/{hashlib.sha256(payload).hexdigest()}"
        else:
            payload = cmd.payload
        props: Properties | None = None
        corr = b""
        if self.v5:
            props = properties(PacketTypes.PUBLISH)
            corr = self.tracker.new_correlation()
            props.CorrelationData = corr
            if self.custom_response_topic:
                props.ResponseTopic = self.channel.response_topic
        try:
            mid = self.tap.publish(topic, payload, props)
        except BufferError:
            raise UploadError(
                "the MQTT client's outgoing queue is full (raise max_queued_outgoing_messages)"
            ) from None
        cmd.published(now, self.channel.gen, now + self._timeout_of(cmd))
        self.tracker.track(cmd, topic, mid, corr)
        if cmd.kind == "segment":
            self.ledger.published(cmd.offset, cmd.length)

    # -- the loop ----------------------------------------------------------------------------

    async def _exchange(
        self, fresh: Iterator[Command], limit: int, handle: Callable[[Command], bool]
    ) -> None:
        """Send the commands of ``fresh`` (at most ``limit`` unresolved at once) until every
        one has a result that ``handle`` accepts; ``handle`` returns True to resend."""
        channel = self.channel
        tracker = self.tracker
        step = self.opts.segment_size
        retry: deque[Command] = deque()
        exhausted = False
        while True:
            self.wake.clear()
            self._check()
            if channel.up and channel.need_subscribe:
                if await channel.subscribe():
                    for cmd in tracker.waiting():
                        if tracker.needs_doc(cmd):
                            self._send(cmd)
                continue
            for cmd in tracker.collect():
                if self._judge(cmd, handle):
                    retry.append(cmd)
            now = self.clock()
            if channel.ready and not self.pause.paused(now):
                limit = min(limit, channel.limit)
                budget = self.flight.budget(now)
                while len(tracker.inflight) < limit:
                    if tracker.inflight_bytes and tracker.inflight_bytes + step > budget:
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
            if exhausted and not retry and not tracker.inflight:
                return
            wait = self._expire(now)
            if self.pause.paused(now):
                wait = min(wait, self.pause.until - now)
            self.ledger.save(now)
            self._report()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), max(wait, 0.001))

    def _check(self) -> None:
        now = self.clock()
        self.channel.check(now)
        if now - self.last_progress > self.t.stall:
            raise UploadTimeout(
                f"no progress for {self.t.stall:.0f}s",
                client_id=self.client_id,
                file_id=self.file_id,
            )

    def _judge(self, cmd: Command, handle: Callable[[Command], bool]) -> bool:
        """The results every command shares; the rest is ``handle``'s. True: send it again."""
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
                file_id=self.file_id,
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
                file_id=self.file_id,
            )
        if code == 0:
            self.last_progress = self.clock()
            self.pause.succeeded()
        return handle(cmd)

    def _handle_segment(self, cmd: Command) -> bool:
        if cmd.code == 0:
            self.ledger.acknowledged(cmd.offset, cmd.length)
            now = self.clock()
            clean = cmd.attempts == 1 and cmd.gen == self.channel.gen
            self.flight.acked(now, cmd.length, now - cmd.sent_at if clean else None)
            return False
        max_retries = self.opts.max_retries
        if cmd.code == 0x80 and cmd.retries < max_retries:
            cmd.retries += 1
            self.retries += 1
            log.info(
                "segment at %d: %s; resending (%d/%d)",
                cmd.offset,
                cmd.description,
                cmd.retries,
                max_retries,
            )
            return True
        raise self._rejected(cmd, f"segment at offset {cmd.offset} refused")

    def _handle_single(self, cmd: Command) -> bool:
        return False

    def _pause(self, cmd: Command) -> None:
        now = self.clock()
        delay = self.pause.pause(now, cmd.sent_at)
        if delay is None:
            return  # part of the pause already running
        log.info("server asks to pause (%s); resuming in %.1fs", cmd.description, delay)
        self.ledger.save(now, force=True)

    def _expire(self, now: float) -> float:
        """Handle commands past their deadline; seconds until the next deadline."""
        nearest = 1.0
        if not self.channel.up:
            return nearest
        for cmd in self.tracker.waiting():
            left = cmd.deadline - now
            if left > 0:
                nearest = min(nearest, left)
                continue
            if cmd.ack_code is not None:  # a failure PUBACK whose document did not come
                self.tracker.resolve(
                    cmd, cmd.ack_code, cmd.ack_reason or code_name(cmd.ack_code), {}
                )
            elif not cmd.acked and self.channel.owned:
                self.channel.kick()
                cmd.deadline = now + self._timeout_of(cmd)
            else:
                what = "response document" if cmd.acked else "acknowledgement"
                log.info("no %s for %s; publishing it again", what, cmd.topic)
                self._send(cmd)
        return nearest

    # -- connection events (from the channel) ------------------------------------------------

    def _connected(self, now: float) -> None:
        for cmd in self.tracker.waiting():
            cmd.deadline = now + self._timeout_of(cmd)
            if not cmd.acked and cmd.kind == "segment":
                # paho publishes it again after the CONNACK
                self.ledger.republished(cmd.length)

    def _disconnected(self, now: float) -> None:
        self.ledger.save(now, force=True)

    # -- progress ----------------------------------------------------------------------------

    def _report(self, *, force: bool = False) -> None:
        now = self.clock()
        phase = self.phase
        if phase not in ("connecting", "done"):
            if not self.channel.up:
                phase = "reconnecting"
            elif self.pause.paused(now):
                phase = "paused"
        ledger = self.ledger
        self.reporter.report(
            phase,
            now,
            done=ledger.done,
            total=ledger.size,
            sent=ledger.bytes_sent,
            resumed=ledger.resumed,
            force=force,
        )


def _parse_missing(value: object, size: int) -> Ranges:
    """The ``missing`` key of an incomplete fin's document, checked; [] when unusable."""
    if not isinstance(value, list):
        return []
    out: Ranges = []
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


def _options(options: UploadOptions | None, fields: UploadFields) -> UploadOptions:
    """``options`` (default: the defaults) with the keyword arguments ``fields`` applied."""
    opts = options if options is not None else UploadOptions()
    if not fields:
        return opts
    changes: dict[str, Any] = dict(fields)
    if "timeouts" in changes and changes["timeouts"] is None:
        changes["timeouts"] = Timeouts()  # the keyword form's None meant the defaults
    return dataclasses.replace(opts, **changes)


def _link(
    client: aiomqtt.Client | None, settings: MqttSettings, client_id: str, opts: UploadOptions
) -> Link:
    t = opts.timeouts
    if client is not None:
        return SharedLink(client, reconnect_timeout=t.reconnect)
    return OwnedLink(
        settings,
        client_id,
        connect_timeout=t.connect,
        reconnect_timeout=t.reconnect,
        backoff=Backoff(*t.reconnect_backoff),
        inflight=opts.window,
    )


async def upload(
    source: SourceLike,
    options: UploadOptions | None = None,
    *,
    client: aiomqtt.Client | None = None,
    mqtt: MqttSettings | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    **fields: Unpack[UploadFields],
) -> UploadResult:
    """Upload a file (a path or a binary stream) and return once the server exported it.

    Over ``client``, an ``aiomqtt.Client`` the application has connected (and keeps: it is
    never connected or disconnected here, and its own messages are left alone), or over a
    connection of its own described by ``mqtt`` (default: MQTT 5 to 127.0.0.1:1883), which it
    reconnects whenever it drops.

    How: ``options``, an :class:`~ftserver.client.options.UploadOptions` (default: its
    defaults); any of its fields given as a keyword argument (``file_id=``, ``window=``,
    ``timeouts=``, ...) overrides the same field of ``options``. ``on_progress`` is called a
    few times a second with a :class:`~ftserver.client.report.Progress`.

    Raises ``ValueError`` for settings no upload could use,
    :class:`~ftserver.client.errors.UploadCancelled` (0x83),
    :class:`~ftserver.client.errors.UploadRejected`,
    :class:`~ftserver.client.errors.UploadTimeout` or
    :class:`~ftserver.client.errors.ConnectionFailed`; the state file (if any) then allows a
    later ``resume=True`` to continue.
    """
    if client is not None and mqtt is not None:
        raise ValueError("give either client (a shared connection) or mqtt (a new one)")
    opts = _options(options, fields)
    settings = mqtt or MqttSettings()
    if client is None and settings.version not in (4, 5):
        raise ValueError("mqtt.version must be 4 (MQTT 3.1.1) or 5")
    started = asyncio.get_running_loop().time()
    if on_progress is not None:
        on_progress(Progress("hashing", 0, 0, 0, 0.0))
    # in a thread: a pipe or FIFO is copied to a temporary file first
    src = await asyncio.to_thread(Source, source)
    try:
        name = opts.name or src.default_name
        if not name:
            raise ValueError("a stream without a name: pass name=...")
        checksum = await asyncio.to_thread(src.sha256) if opts.file_checksum else None
        state = initial_state(
            src,
            opts,
            name=name,
            checksum=checksum,
            client_id=client.identifier if client is not None else settings.client_id,
            new_client_id=(
                client.identifier if client is not None else settings.client_id or new_client_id()
            ),
        )
        link = _link(client, settings, state.client_id, opts)
        engine = _Engine(
            source=src, link=link, state=state, opts=opts, on_progress=on_progress, started=started
        )
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

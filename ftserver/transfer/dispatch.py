"""File-transfer commands: from a PUBLISH to a result (PROTOCOL.md §2–§5).

This is the one boundary where ``FtError`` becomes a reason code and a response document.
:meth:`Dispatcher.process` runs the command and returns its :class:`Outcome` at once, or a
:class:`Deferred` when the result needs an export (fin) or must wait for one (any command for
a transfer being exported). The connection sends the acknowledgement and asks
:meth:`Dispatcher.respond` for the response document once the result is durable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import ftcore
from ftserver.errors import (
    SUCCESS,
    AssembleTimeout,
    FtError,
    InvalidQos,
    Outcome,
    TransferBusy,
    outcome_of,
)
from ftserver.export.base import ExportInfo
from ftserver.limits import ByteRate, DiskWatch
from ftserver.meta import FileMeta, parse_filemeta
from ftserver.topics import RESPONSE_PREFIX, is_file_command_topic
from ftserver.transfer.commands import (
    Abort,
    Command,
    Fin,
    Init,
    Segment,
    check_file_size,
    check_segment_checksum,
    parse_command,
)
from ftserver.transfer.store import Transfer, TransferStore

log = logging.getLogger(__name__)

DOC_VSN = "0.1"


@dataclass(slots=True)
class Deferred:
    """A result that is not known yet.

    ``ack`` is the acknowledgement to send now (async fin: 0x00 "accepted"), or None when the
    acknowledgement itself waits for ``final`` (sync fin). ``final`` gives the result that the
    response document (and a held acknowledgement) carries.
    """

    ack: Outcome | None
    final: Awaitable[Outcome]


@dataclass(frozen=True, slots=True)
class Finished:
    """A transfer whose export ended, exported or failed: what the completion notifications
    (``ftserver.notify``, through :attr:`Dispatcher.on_finished`) are made of."""

    client_id: str
    file_id: str
    #: the export's result, as the fin is answered (``SUCCESS`` or the failure)
    outcome: Outcome
    meta: FileMeta | None
    #: the size the fin gave
    size: int
    #: the SHA-256 the device gave (fin, else init), if any
    checksum: bytes | None
    #: the export, when it succeeded
    export: ExportInfo | None


class Publisher(Protocol):
    """Where response documents go: the sessions of the MQTT layer (whichever worker or leg
    holds them). The dispatcher knows nothing else of MQTT."""

    def has_subscribers(self, topic: str) -> bool: ...

    def route(self, topic: str, payload: bytes, properties: Any) -> int:
        """Deliver a QoS 1 document (``properties``: MQTT 5 PUBLISH properties, as a dict)
        to every matching session; returns how many got it here."""
        ...


class Dispatcher:
    """Runs file-transfer commands: ``(client_id, topic, payload, qos)`` in, an
    :class:`Outcome` (or a :class:`Deferred` one) out, and the response documents routed
    through a :class:`Publisher`."""

    def __init__(
        self,
        store: TransferStore,
        registry: Publisher,
        *,
        max_file_size: int,
        assemble_timeout: float,
        observe: Callable[[str, Outcome], None] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.max_file_size = max_file_size
        self.assemble_timeout = assemble_timeout
        #: metrics hook: (command kind, outcome)
        self.observe = observe
        #: metrics hook: (seconds from arrival to result, outcome) of every fin
        self.on_fin: Callable[[float, Outcome], None] | None = None
        #: notification hook: called once per export that ended (exported or failed), before
        #: its fin is answered; a fin answered from an earlier export (a duplicate) runs none
        self.on_finished: Callable[[Finished], None] | None = None
        #: metrics hook: seconds to handle a segment, for one segment in ``sample_every``
        self.on_segment_time: Callable[[float], None] | None = None
        self.sample_every = 32
        self._sample = 0
        #: segment bytes stored so far (read by the metrics flush)
        self.received_bytes = 0
        #: quotas on new data (0x97): per-client byte rate, staging free-space watermark
        self.byte_rate: ByteRate | None = None
        self.disk: DiskWatch | None = None
        #: whether connections get the native segment path (ftcore.SegmentPath)
        self.native_segments = True
        #: segments the native path took (read by the metrics flush, like received_bytes)
        self.native_segment_count = 0

    # -- commands ----------------------------------------------------------------------------

    def process(
        self, client_id: str, topic: str, payload: bytes | bytearray | memoryview, qos: int
    ) -> Outcome | Deferred | None:
        """Run the file-transfer command ``topic``; None when it is not one (0x10)."""
        if qos == 0:
            if not is_file_command_topic(topic):
                return None
            invalid = outcome_of(InvalidQos())
            if self.observe is not None:
                self.observe("invalid_qos", invalid)
            return invalid
        cmd: Command | None = None
        result: Outcome | Deferred
        try:
            cmd = parse_command(topic)
            if cmd is None:
                return None
            self._sample += 1
            if self._sample >= self.sample_every and self.on_segment_time is not None:
                self._sample = 0
                if isinstance(cmd, Segment):
                    t0 = time.perf_counter()
                    result = self._run(client_id, cmd, payload)
                    self.on_segment_time(time.perf_counter() - t0)
                else:
                    result = self._run(client_id, cmd, payload)
            else:
                result = self._run(client_id, cmd, payload)
        except TransferBusy as busy:
            assert cmd is not None
            # open in another worker process (the client's previous one, still exporting or
            # handing it over), or being recovered: wait until it is ready, then run it here
            payload = bytes(payload)  # the receive buffer is reused meanwhile
            result = Deferred(None, self._when_free(client_id, cmd, payload, busy.ready))
        except Exception as exc:
            result = outcome_of(
                exc, what=topic, client_id=client_id, file_id=getattr(cmd, "file_id", "")
            )
        if isinstance(result, Outcome):
            if self.observe is not None:
                self.observe(type(cmd).__name__.lower() if cmd is not None else "invalid", result)
            if isinstance(cmd, Fin) and self.on_fin is not None:
                self.on_fin(0.0, result)
        return result

    def _run(
        self, client_id: str, cmd: Command, payload: bytes | bytearray | memoryview
    ) -> Outcome | Deferred:
        store = self.store
        if isinstance(cmd, Segment):
            view = memoryview(payload)
            check_file_size(self.max_file_size, cmd.offset, len(view))
            if cmd.checksum is not None:
                check_segment_checksum(cmd, view)
            if self.disk is not None:
                self.disk.check()
            if self.byte_rate is not None:
                self.byte_rate.take(client_id, len(view))
            running = store.export_running(client_id, cmd.file_id)
            if running is not None:
                data = bytes(view)  # the receive buffer is reused before the export ends
                return Deferred(
                    None,
                    self._after_export(
                        running, lambda: self._segment(client_id, cmd, memoryview(data))
                    ),
                )
            return self._segment(client_id, cmd, view)
        if isinstance(cmd, Init):
            meta = parse_filemeta(payload)
            if meta.size is not None:  # a file declared larger than the limit never fits
                check_file_size(self.max_file_size, meta.size, 0)
            running = store.export_running(client_id, cmd.file_id)
            if running is not None:
                return Deferred(
                    None, self._after_export(running, lambda: self._init(client_id, cmd, meta))
                )
            return self._init(client_id, cmd, meta)
        if isinstance(cmd, Abort):
            running = store.export_running(client_id, cmd.file_id)
            if running is not None:
                return Deferred(
                    None, self._after_export(running, lambda: self._abort(client_id, cmd))
                )
            return self._abort(client_id, cmd)
        assert isinstance(cmd, Fin)
        check_file_size(self.max_file_size, cmd.size, 0)
        running = store.export_running(client_id, cmd.file_id)
        if running is None:
            got = store.fin_prepare(client_id, cmd.file_id, cmd.size, cmd.checksum)
            if isinstance(got, ExportInfo):
                return SUCCESS
            running = store.fin_export(got, cmd.size, cmd.checksum)
            timeout = None if cmd.is_async else self.assemble_timeout
            result = self._export_result(running, cmd, time.perf_counter(), timeout, got)
            return Deferred(SUCCESS if cmd.is_async else None, result)
        # a fin while the same transfer is exported (a retransmission, or a second fin): it
        # shares that export, then is checked against its result like any late fin
        final = self._after_export(running, lambda: self._late_fin(client_id, cmd))
        if cmd.is_async:
            return Deferred(SUCCESS, final)
        return Deferred(None, self._with_timeout(final))

    def _segment(self, client_id: str, cmd: Segment, view: memoryview) -> Outcome:
        self.store.segment(client_id, cmd.file_id, cmd.offset, view)
        self.received_bytes += len(view)
        return SUCCESS

    def _init(self, client_id: str, cmd: Init, meta: Any) -> Outcome:
        self.store.init(client_id, cmd.file_id, meta)
        return SUCCESS

    def _abort(self, client_id: str, cmd: Abort) -> Outcome:
        self.store.abort(client_id, cmd.file_id)
        return SUCCESS

    def _late_fin(self, client_id: str, cmd: Fin) -> Outcome | Awaitable[Outcome]:
        got = self.store.fin_prepare(client_id, cmd.file_id, cmd.size, cmd.checksum)
        if isinstance(got, ExportInfo):
            return SUCCESS
        # the export failed and the transfer is still staged: this fin tries again (or joins
        # the retry another fin started meanwhile, which notifies for both)
        joined = self.store.export_running(client_id, cmd.file_id) is not None
        running = self.store.fin_export(got, cmd.size, cmd.checksum)
        return self._await_export(running, cmd, time.perf_counter(), None if joined else got)

    def _export_result(
        self,
        running: asyncio.Future[ExportInfo],
        cmd: Fin,
        started: float,
        timeout: float | None,
        t: Transfer,
    ) -> asyncio.Future[Outcome]:
        """The result of a fin that started an export: a future the export completes through
        a callback (what :meth:`_await_export` does, without a task, a shield and a
        ``wait_for`` per fin: the fin of a small file costs little more than these). With
        ``timeout`` (a synchronous fin's ``assemble_timeout``) it answers ``timeout`` if the
        export takes longer; the export goes on, and is counted when it ends."""
        loop = asyncio.get_running_loop()
        out: asyncio.Future[Outcome] = loop.create_future()
        timer = (
            None if timeout is None else loop.call_later(timeout, _settle, out, AssembleTimeout())
        )

        def done(f: asyncio.Future[ExportInfo]) -> None:
            if timer is not None:
                timer.cancel()
            if f.cancelled():
                if not out.done():
                    out.cancel()
                return
            exc = f.exception()
            result = (
                SUCCESS
                if exc is None
                else outcome_of(exc, what="export", client_id=t.client_id, file_id=cmd.file_id)
            )
            if self.on_finished is not None:
                self._finished(t, cmd, result, None if exc is not None else f.result())
            if self.observe is not None:
                self.observe("fin", result)
            if self.on_fin is not None:
                self.on_fin(time.perf_counter() - started, result)
            if not out.done():
                out.set_result(result)

        running.add_done_callback(done)
        return out

    async def _await_export(
        self, running: asyncio.Future[ExportInfo], cmd: Fin, started: float, t: Transfer | None
    ) -> Outcome:
        info: ExportInfo | None = None
        try:
            info = await asyncio.shield(running)
        except Exception as exc:
            result = outcome_of(exc, what="export", file_id=cmd.file_id)
        else:
            result = SUCCESS
        if t is not None and self.on_finished is not None:
            self._finished(t, cmd, result, info)
        if self.observe is not None:
            self.observe("fin", result)
        if self.on_fin is not None:
            self.on_fin(time.perf_counter() - started, result)
        return result

    def _finished(self, t: Transfer, cmd: Fin, result: Outcome, info: ExportInfo | None) -> None:
        """Tell :attr:`on_finished` (a failing notification never changes the fin's answer:
        the file was exported, or the failure stands, either way)."""
        assert self.on_finished is not None
        checksum = cmd.checksum
        if checksum is None and t.meta is not None:
            checksum = t.meta.checksum_bytes
        event = Finished(t.client_id, t.file_id, result, t.meta, cmd.size, checksum, info)
        try:
            self.on_finished(event)
        except Exception:
            log.exception("completion notification of %r/%r failed", t.client_id, t.file_id)

    async def _after_export(
        self,
        running: asyncio.Future[ExportInfo],
        then: Callable[[], Outcome | Awaitable[Outcome]],
    ) -> Outcome:
        """Wait for the running export (whatever its result), then run the command; a fin
        whose transfer is still staged then (the export failed) exports again and waits."""
        await asyncio.wait([running])
        try:
            result = then()
        except Exception as exc:
            return outcome_of(exc, what="command after an export")
        if isinstance(result, Outcome):
            return result
        return await result

    async def _when_free(
        self, client_id: str, cmd: Command, payload: bytes, ready: Awaitable[object] | None
    ) -> Outcome:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.assemble_timeout
        delay = 0.005
        while True:
            if ready is not None:
                # whatever it ends with: the command runs again and meets the new state
                await asyncio.wait([asyncio.ensure_future(ready)], timeout=self.assemble_timeout)
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
            try:
                result = self._run(client_id, cmd, payload)
            except TransferBusy as busy:
                if loop.time() >= deadline:
                    return outcome_of(AssembleTimeout())
                ready = busy.ready
                continue
            except Exception as exc:
                return outcome_of(
                    exc, what=type(cmd).__name__.lower(), client_id=client_id, file_id=cmd.file_id
                )
            if isinstance(result, Outcome):
                return result
            return await result.final

    async def _with_timeout(self, final: Awaitable[Outcome]) -> Outcome:
        try:
            return await asyncio.wait_for(asyncio.shield(final), self.assemble_timeout)
        except TimeoutError:
            return outcome_of(AssembleTimeout())

    # -- durability --------------------------------------------------------------------------

    @property
    def group_commit_due(self) -> bool:
        """Whether the acknowledgements of the current batch wait for a group commit (sync
        durability, with records written since the last one): :meth:`group_commit`."""
        return self.store.durability == "sync" and self.store.needs_commit

    def commit(self) -> None:
        """Make the current batch as durable as the mode asks for at no wait (fast durability:
        the journal records written), before it is acknowledged."""
        self.store.commit()

    async def group_commit(self) -> None:
        """Sync durability: data, then journal records flushed (one commit for the batch)."""
        await self.store.commit_sync()

    # -- the native segment path -------------------------------------------------------------

    def fast_path(
        self, client_id: str, protocol_level: int, max_packet_size: int
    ) -> FastSegments | None:
        """The native segment path of a connection that just became ``client_id``'s."""
        if not self.native_segments:
            return None
        path = self.store.segment_path(
            client_id, protocol_level, self.max_file_size, max_packet_size
        )
        return FastSegments(self, client_id, path)

    # -- response documents ------------------------------------------------------------------

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
        """Publish the response document of a processed command (docs/protocol.md)."""
        target = response_topic or RESPONSE_PREFIX + client_id
        if not self.registry.has_subscribers(target):
            return
        doc: dict[str, Any] = {
            "vsn": DOC_VSN,
            "topic": topic,
            "packet_id": packet_id,
            "reason_code": outcome.reason_code,
            "reason_description": outcome.description,
        }
        doc.update(outcome.extra)
        props: dict[str, Any] = {}
        if correlation_data is not None:
            props["correlation_data"] = correlation_data
        payload = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        self.registry.route(target, payload, props)


def _settle(out: asyncio.Future[Outcome], exc: FtError) -> None:
    """Answer ``out`` with the outcome of ``exc`` unless it has its answer already."""
    if not out.done():
        out.set_result(outcome_of(exc))


class FastSegments:
    """One connection's native segment path (``mqtt.handler.SegmentTaker``).

    ``ftcore.SegmentPath`` places the plain segments of the transfers the store registered with
    it; this class applies what the Python path would check first (the staging watermark; a
    per-client byte rate keeps every segment on the Python path, which meters it), journals the
    runs the native path placed and counts them. Anything it does not take goes the usual way,
    so every refusal is still answered by :meth:`Dispatcher.process`.
    """

    __slots__ = ("client_id", "dispatcher", "path")

    def __init__(self, dispatcher: Dispatcher, client_id: str, path: ftcore.SegmentPath) -> None:
        self.dispatcher = dispatcher
        self.client_id = client_id
        self.path = path

    def take(self, buf: bytearray, start: int, end: int) -> int:
        path = self.path
        if not len(path):
            return start
        d = self.dispatcher
        if d.byte_rate is not None:
            return start
        if d.disk is not None:
            try:
                d.disk.check()
            except FtError:
                return start  # the Python path answers 0x97 storage_full
        segments, placed = path.segments, path.payload_bytes
        pos = path.feed(buf, start, end)
        if pos != start:
            d.received_bytes += path.payload_bytes - placed
            d.native_segment_count += path.segments - segments
            store = d.store
            for file_id, run_start, run_end in path.take_placed():
                store.placed_run(self.client_id, file_id, run_start, run_end)
        return pos

    def take_acks(self) -> bytes:
        return self.path.take_acks()

    def release(self) -> None:
        self.dispatcher.store.drop_segment_path(self.client_id, self.path)

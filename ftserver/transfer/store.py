"""Transfers and the store of them: one file's state on disk and in memory (docs/protocol.md §5).

A transfer is the pair (clientId, fileId). Its state lives in its staging directory
(:mod:`ftserver.storage`: the layout, the journal, recovery, the collector); this module is
the policy on top: which transfers are open in this process, what each command does to them,
when they are checkpointed, closed, expired and handed to the exporter. The store opens a
transfer lazily, the first time a command names it, recovering it from its journal; so a
disconnect, a reconnect to another worker and a restart after ``kill -9`` are one mechanism.

Recovery can read up to the whole data file, so it runs in an executor thread: the command
that needs it gets ``TransferBusy(ready=<that recovery>)`` and the dispatcher runs it again
once the transfer is installed (or tells it the recovery's error).

An open transfer holds one descriptor: its data file's, which also holds the lock that
keeps it open in this process only (:mod:`ftserver.storage.staging`); its journal is opened
per batch write. Open transfers live in a bounded cache (``max_open``, sized by the server
from ``RLIMIT_NOFILE``): when it is full, the least recently used transfer that has nothing
in flight is closed (its journal written; it is reopened from disk the next time a command
names it), and when none can be, the command is told ``server_busy`` (0x97, resend later).

The store raises ``FtError`` subclasses; turning them into reason codes is the dispatcher's
business. Blocking work that can grow with the file (flushes, exports, re-reads) runs in an
executor thread; per-segment work (a ``pwrite`` into the page cache, BLAKE3 of the segment,
one buffered journal record) runs inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Literal, TypeAlias

import ftcore
from ftserver.errors import (
    ChecksumMismatch,
    FileMetaConflict,
    FtError,
    Incomplete,
    ServerBusy,
    StorageError,
    TooManyTransfers,
    TransferBusy,
    storage_errors,
)
from ftserver.export.base import Exporter, ExportInfo
from ftserver.export.local import LocalExporter
from ftserver.export.streaming import ADOPTED, Adoption, Streaming
from ftserver.meta import FileMeta
from ftserver.storage import gc, staging
from ftserver.storage import journal as jr
from ftserver.storage.recovery import reopen

log = logging.getLogger(__name__)

Durability = Literal["fast", "sync"]

#: at most this many gaps are reported in an ``incomplete`` fin's ``missing`` key
MAX_MISSING = 16
#: a journal larger than this is compacted at its next checkpoint
COMPACT_JOURNAL_BYTES = 4 << 20
#: how many finished exports are remembered in memory (the disk is the truth)
EXPORT_CACHE = 4096

Key = tuple[str, str]


class Transfer:
    """One unfinished transfer, open in this process."""

    __slots__ = (
        "_checkpointing",
        "asm",
        "client_id",
        "close_after_export",
        "dir",
        "file_id",
        "floor",
        "journal",
        "last_activity",
        "lock_fd",
        "meta",
        "paused_since",
        "unflushed",
    )

    def __init__(
        self,
        client_id: str,
        file_id: str,
        directory: Path,
        asm: ftcore.Assembler,
        journal: jr.Journal,
        meta: FileMeta | None,
        lock_fd: int,
    ) -> None:
        self.client_id = client_id
        self.file_id = file_id
        self.dir = directory
        self.asm = asm
        self.journal = journal
        self.meta = meta
        self.last_activity = time.time()
        #: bytes written since the last flush (fast durability)
        self.unflushed = 0
        self._checkpointing: asyncio.Future[None] | None = None
        #: a lock descriptor besides the assembler's (whose data-file descriptor holds the
        #: transfer's lock): the journal's during an export, which moves the data file away
        self.lock_fd = lock_fd
        #: the client went to another worker: close this transfer once its export ends
        self.close_after_export = False
        #: paused (its client left, or it was reopened from disk by a later connection): the
        #: time of its last activity before; 0.0 when not paused
        self.paused_since = 0.0
        #: adopted from another node (docs/cluster.md): bytes below this are in uploaded
        #: parts, not in the data file; segments resent over them are acknowledged, ignored
        self.floor = 0

    @property
    def key(self) -> Key:
        return (self.client_id, self.file_id)

    @property
    def data_path(self) -> Path:
        return self.dir / staging.DATA

    def close(self, *, unlock: bool = True) -> None:
        with contextlib.suppress(OSError):
            self.journal.write()
        self.journal.close()
        self.asm.close()
        with contextlib.suppress(OSError):
            os.utime(self.journal.path, (self.last_activity, self.last_activity))
        if unlock:
            self.unlock()

    def unlock(self) -> None:
        fd, self.lock_fd = self.lock_fd, -1
        if fd >= 0:
            os.close(fd)


class StoreHooks:
    """What the store reports (to metrics); the defaults do nothing."""

    def started(self) -> None:
        """A transfer's init metadata was stored for the first time."""

    def aborted(self) -> None:
        """A staged transfer was discarded by abort."""

    def exported(self, info: ExportInfo, seconds: float) -> None:
        """A file was exported."""

    def evicted(self) -> None:
        """An open transfer was closed to make room for another (the cache was full)."""


class TransferStore:
    """Every transfer of this process, keyed by (clientId, fileId)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        durability: Durability = "fast",
        flush_bytes: int = 64 << 20,
        ttl_min: float = 300.0,
        ttl_max: float = 86400.0,
        idle_close: float = 60.0,
        exporter: Exporter | None = None,
        hooks: StoreHooks | None = None,
        max_transfers_per_client: int = 0,
        max_open: int = 0,
        recycle: bool = True,
        boot_id: Callable[[], str] = jr.current_boot_id,
    ) -> None:
        self.staging = staging.staging_root(data_dir)
        self.staging.mkdir(parents=True, exist_ok=True)
        self.exporter: Exporter = exporter or LocalExporter(data_dir / "exports")
        self.exporter.root.mkdir(parents=True, exist_ok=True)
        #: the exporter, when it uploads files while they arrive (S3)
        self._stream = self.exporter if isinstance(self.exporter, Streaming) else None
        if self._stream is not None:
            self._stream.stream_ttl = self.ttl_of  # expired checkpoints: the same TTL
        self.durability: Durability = durability
        self.flush_bytes = flush_bytes
        self.ttl_min = ttl_min
        self.ttl_max = ttl_max
        self.idle_close = idle_close
        self.hooks = hooks or StoreHooks()
        self.max_transfers_per_client = max_transfers_per_client
        #: page-cache recycling behind each transfer's hashed prefix (ftcore.Assembler)
        self.recycle = recycle
        #: reads the current boot id: recovery trusts the journal of this boot as it stands
        self.boot_id = boot_id
        #: transfers open at once in this process (0: no bound); each holds one descriptor
        self.max_open = max_open
        #: how many were closed to make room, and how many commands found no room at all
        self.evicted = 0
        self.busy = 0
        #: the open transfers, least recently used first
        self._open: dict[Key, Transfer] = {}
        self._exported: OrderedDict[Key, ExportInfo] = OrderedDict()
        self._exports: dict[Key, asyncio.Future[ExportInfo]] = {}
        self._dirty: dict[Key, Transfer] = {}
        #: one group commit at a time (see :meth:`commit_sync`)
        self._commit_lock = asyncio.Lock()
        self._tasks: set[asyncio.Future[None]] = set()
        #: recoveries running in a thread (and failed ones, until a command hears of it)
        self._recovering: dict[Key, asyncio.Future[Recovered]] = {}
        #: transfers whose client moved to another worker while they were being recovered
        self._release_on_recovery: set[Key] = set()
        #: the native segment path of each connected client (see :meth:`segment_path`), and
        #: when that connection began: the store learns connections and departures from them
        self._paths: dict[str, ftcore.SegmentPath] = {}
        self._connected_at: dict[str, float] = {}

    # -- lookup ------------------------------------------------------------------------------

    def staging_dir(self, client_id: str, file_id: str) -> Path:
        return staging.transfer_dir(self.staging, client_id, file_id)

    def get(
        self, client_id: str, file_id: str, meta: FileMeta | None = None
    ) -> Transfer | ExportInfo | None:
        """The open transfer, its finished export, or None when nothing is known of it.

        Raises ``TransferBusy`` when the transfer is open in another process, or staged on
        disk and not open here: then its recovery starts in a thread, ``ready`` is that
        recovery, and the command is to be run again once it is done. The command that runs
        first after a failed recovery gets its error. With a streaming exporter, a transfer
        not known here at all is looked for in the bucket (``meta``: the init's, when an init
        asks): taking it over is a recovery too (docs/cluster.md, "Adoption").
        """
        key = (client_id, file_id)
        t = self._open.pop(key, None)
        if t is not None:
            self._open[key] = t  # the most recently used now
            return t
        recovering = self._recovering.get(key)
        if recovering is not None:
            if not recovering.done():
                raise TransferBusy(ready=recovering)
            del self._recovering[key]  # a failed one (a successful one installed itself)
            if not recovering.cancelled():
                exc = recovering.exception()
                if exc is not None:
                    raise exc
        info = self._exported.get(key)
        if info is not None:
            if info.path.exists():
                self._exported.move_to_end(key)
                return info
            del self._exported[key]  # deleted (HTTP API, expire_at) since: look again
        d = self.staging_dir(client_id, file_id)
        if d.is_dir():
            self._make_room()
            try:
                with storage_errors():
                    lock = staging.lock_dir(d)
            except staging.Gone:
                pass  # exported or aborted by the process that had it: look again
            else:
                raise TransferBusy(ready=self._start_recovery(key, d, lock))
        info = self.exporter.lookup(client_id, file_id)
        if info is not None:
            self._remember_export(info)
        elif self._stream is not None:
            lookup = self._stream.stream_adopt(client_id, file_id, meta)
            if lookup is not None:
                fut = asyncio.ensure_future(self._adopt(key, lookup))
                self._recovering[key] = fut
                fut.add_done_callback(functools.partial(self._recovered, key))
                raise TransferBusy(ready=fut)
        return info

    async def _adopt(self, key: Key, lookup: asyncio.Future[Adoption | None]) -> Recovered:
        """Stage a transfer taken over from the bucket (None: there was nothing to take)."""
        adoption = await lookup
        if adoption is None:
            return None
        return await asyncio.get_running_loop().run_in_executor(
            None, self._stage_adopted, key, adoption
        )

    def _stage_adopted(self, key: Key, adoption: Adoption) -> Transfer:
        """A staging directory whose ``[0, hashed)`` is marked received without its bytes,
        the hash adopted there (executor thread)."""
        client_id, file_id = key
        d = self.staging_dir(client_id, file_id)
        sync = self.durability == "sync"
        asm, journal = staging.create(
            d, sync=sync, boot_id=self.boot_id(), meta=adoption.meta.to_json_bytes()
        )
        try:
            with storage_errors():
                (d / ADOPTED).write_text(f"{adoption.hashed}\n")
                if adoption.hashed:
                    asm.mark(0, adoption.hashed, absorb=False)
                    asm.adopt_hash(adoption.hash_state)
                    journal.add_run(0, adoption.hashed, state=asm.hash_state, synced=sync)
                journal.write()
        except BaseException:
            asm.close()
            journal.close()
            staging.remove(d)
            raise
        asm.recycle = self.recycle
        t = Transfer(client_id, file_id, d, asm, journal, adoption.meta, -1)
        t.floor = adoption.hashed
        return t

    def _remember_export(self, info: ExportInfo) -> None:
        key = (info.client_id, info.file_id)
        self._exported[key] = info
        self._exported.move_to_end(key)
        while len(self._exported) > EXPORT_CACHE:
            self._exported.popitem(last=False)

    def _create(self, client_id: str, file_id: str, meta: FileMeta | None = None) -> Transfer:
        """Stage a new transfer (born with its metadata when an init creates it)."""
        limit = self.max_transfers_per_client
        if limit and staging.staged_count(self.staging, client_id) >= limit:
            raise TooManyTransfers()
        d = self.staging_dir(client_id, file_id)
        self._make_room()
        asm, journal = staging.create(
            d,
            sync=self.durability == "sync",
            boot_id=self.boot_id(),
            meta=None if meta is None else meta.to_json_bytes(),
        )
        asm.recycle = self.recycle
        t = Transfer(client_id, file_id, d, asm, journal, meta, -1)
        self._open[t.key] = t
        return t

    def _make_room(self) -> None:
        """Make room in the cache of open transfers for one more: close the least recently
        used one with nothing in flight, or raise ``ServerBusy`` when none can be closed."""
        if not self.max_open:
            return
        pending = sum(1 for f in self._recovering.values() if not f.done())
        if len(self._open) + pending < self.max_open:
            return
        for t in self._open.values():
            if t.key in self._exports or t._checkpointing is not None or t.key in self._dirty:
                continue
            self._evict(t)
            return
        self.busy += 1
        raise ServerBusy()

    def _evict(self, t: Transfer) -> None:
        """Close an open transfer to free its descriptor. No flush: its journal is written
        and recovery reopens it from there (checking unflushed ranges as after a crash)."""
        self._leave_segment_path(t)
        if self._stream is not None:
            self._stream.stream_close(t.client_id, t.file_id)
        self._open.pop(t.key, None)
        self.evicted += 1
        self.hooks.evicted()
        t.close()

    # -- recovery ----------------------------------------------------------------------------

    def _start_recovery(self, key: Key, d: Path, lock: int) -> asyncio.Future[Recovered]:
        """Recover the transfer staged in ``d`` (locked by ``lock``) in an executor thread;
        the future completes once the result is installed here."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(
            None, _recover, self.exporter, key, d, lock, self.boot_id, self.recycle
        )
        self._recovering[key] = fut
        # added first, so it runs before any waiter wakes up: they find the result installed
        fut.add_done_callback(functools.partial(self._recovered, key))
        return fut

    def _recovered(self, key: Key, fut: asyncio.Future[Recovered]) -> None:
        """Install a recovery's result (on the event loop, which alone touches the store)."""
        release = key in self._release_on_recovery
        self._release_on_recovery.discard(key)
        if fut.cancelled():
            self._recovering.pop(key, None)
            return
        if fut.exception() is not None:
            return  # kept in _recovering for the next command of this transfer
        self._recovering.pop(key, None)
        result = fut.result()
        if isinstance(result, Transfer):
            # reopened for a later connection than the one that last touched it: paused
            # until that command runs (it logs "resumed")
            connected = self._connected_at.get(key[0])
            if connected is not None and result.last_activity < connected:
                result.paused_since = result.last_activity
            # a command asked for it: that is activity, and neither close_idle nor the
            # collector may take it back before that command runs again
            result.last_activity = time.time()
            self._open[key] = result
            if release:
                self._close_one(result)  # its client lives in another worker now
            else:
                self._stream_open(result)
        elif isinstance(result, ExportInfo):
            self._remember_export(result)

    # -- commands ----------------------------------------------------------------------------

    def export_running(self, client_id: str, file_id: str) -> asyncio.Future[ExportInfo] | None:
        """The export in progress for this transfer, if any: commands for it wait for it."""
        return self._exports.get((client_id, file_id))

    def init(self, client_id: str, file_id: str, meta: FileMeta) -> None:
        got = self.get(client_id, file_id, meta)
        if isinstance(got, ExportInfo):
            if got.meta != meta:
                raise FileMetaConflict()
            return
        if got is None:
            t = self._create(client_id, file_id, meta)  # born with its metadata
            self._stream_open(t)
        else:
            t = got
            t.last_activity = time.time()
            if t.paused_since:
                self._resumed(t)
            if t.meta is not None:
                if t.meta != meta:
                    raise FileMetaConflict()
                return
            staging.write_meta(t.dir, meta, sync=self.durability == "sync")
            t.meta = meta
            self._stream_open(t)
        self.hooks.started()
        log.info(
            "transfer started",
            extra={
                "event": "init",
                "clientId": client_id,
                "fileId": file_id,
                "fileName": meta.name,
                "size": meta.size,
            },
        )
        path = self._paths.get(client_id)
        if path is not None and t.key not in self._exports and file_id not in path:
            path.open(file_id, t.asm)

    def segment(self, client_id: str, file_id: str, offset: int, data: memoryview) -> None:
        """Store a segment. The journal record is buffered: call :meth:`commit` before the
        acknowledgement goes out."""
        got = self.get(client_id, file_id)
        if isinstance(got, ExportInfo):
            return  # a retransmission after the export: its bytes are discarded
        t = got if got is not None else self._create(client_id, file_id)
        t.last_activity = time.time()
        if t.paused_since:
            self._resumed(t)
        if offset < t.floor:
            # resent over bytes already in uploaded parts (adopted): acknowledged, ignored;
            # comparing them with the data file, which lacks them, would reset the hash
            cut = min(t.floor - offset, len(data))
            offset += cut
            data = data[cut:]
        n = len(data)
        if n == 0:
            return
        asm = t.asm
        before = asm.hashed
        try:
            asm.place(offset, data)
        except OSError as exc:  # storage_errors() costs ~1 µs per segment: same rule, inline
            raise StorageError.from_oserror(exc) from exc
        after = asm.hashed
        # one RUN record per contiguous run of a batch. A run that moved the hash carries
        # the hash state (a restart resumes from it without reading; after a machine crash
        # it is checked by re-hashing from the checkpoint); one that did not move it forward
        # carries its BLAKE3 in fast mode, for that check
        sync = self.durability == "sync"
        t.journal.add_run(
            offset,
            offset + n,
            data=None if sync or after > before else data,
            state=asm.hash_state if after != before else None,
            synced=sync,
        )
        self._dirty[t.key] = t
        self._wrote(t, n)
        if self._stream is not None:
            end = offset + n
            self._stream.stream_wrote(
                client_id, file_id, offset, end, end <= before <= after, after < before
            )
        path = self._paths.get(client_id)
        if path is not None and t.key not in self._exports and file_id not in path:
            path.open(file_id, t.asm)  # its next segments may take the native path

    def placed_run(self, client_id: str, file_id: str, start: int, end: int) -> None:
        """Journal a run the native segment path (``ftcore.SegmentPath``) placed: it
        continued the transfer's contiguous prefix, and its assembler hashed it already. One
        record with the hash state, no digest; call :meth:`commit` before the
        acknowledgements go out, as for :meth:`segment`. The transfer must be open here (the
        path holds its assembler); KeyError otherwise."""
        t = self._open[(client_id, file_id)]
        if end <= start:
            return
        t.last_activity = time.time()
        if t.paused_since:
            self._resumed(t)
        t.journal.add_run(start, end, state=t.asm.hash_state, synced=self.durability == "sync")
        t.asm.recycle_behind()  # the native path moved the hash without calling back
        self._dirty[t.key] = t
        self._wrote(t, end - start)
        if self._stream is not None:
            self._stream.stream_wrote(client_id, file_id, start, end, False, False)

    def _wrote(self, t: Transfer, n: int) -> None:
        # a checkpoint every flush_bytes (both modes): recovery then starts from the saved
        # rolling hash, and fast mode bounds what a machine crash makes it re-verify (and
        # what a fin must flush)
        t.unflushed += n
        if t.unflushed >= self.flush_bytes and t._checkpointing is None:
            # marked in flight now, not when the task first runs: the segments that
            # follow in the same batch must not spawn checkpoints of their own
            t._checkpointing = asyncio.get_running_loop().create_future()
            self._spawn(self._checkpoint(t))

    # -- the native segment path -------------------------------------------------------------

    def segment_path(
        self, client_id: str, protocol_level: int, max_file_size: int, max_packet_size: int
    ) -> ftcore.SegmentPath:
        """A new native segment path for the connection that is now ``client_id``'s, with the
        client's open transfers registered (a transfer joins when its first segment or init
        has taken the Python path, and leaves when it is exported, aborted or closed)."""
        path = ftcore.SegmentPath(protocol_level, max_file_size, max_packet_size)
        self._paths[client_id] = path
        self._connected_at[client_id] = time.time()
        for t in self._open.values():
            if t.client_id == client_id and t.key not in self._exports:
                path.open(t.file_id, t.asm)
        return path

    def drop_segment_path(self, client_id: str, path: ftcore.SegmentPath) -> None:
        """The connection of ``path`` is gone (a newer one may have replaced it already):
        the client's unfinished transfers here are paused."""
        if self._paths.get(client_id) is path:
            del self._paths[client_id]
            self._connected_at.pop(client_id, None)
            for t in self._open.values():
                if t.client_id == client_id and t.key not in self._exports and not t.paused_since:
                    self._paused(t)

    def _paused(self, t: Transfer) -> None:
        t.paused_since = t.last_activity
        log.info(
            "transfer paused: its client left",
            extra={
                "event": "paused",
                "clientId": t.client_id,
                "fileId": t.file_id,
                "received": t.asm.ranges.covered,
                "size": None if t.meta is None else t.meta.size,
            },
        )

    def _resumed(self, t: Transfer) -> None:
        log.info(
            "transfer resumed",
            extra={
                "event": "resumed",
                "clientId": t.client_id,
                "fileId": t.file_id,
                "received": t.asm.ranges.covered,
                "idle": round(t.last_activity - t.paused_since, 3),
            },
        )
        t.paused_since = 0.0

    def _leave_segment_path(self, t: Transfer) -> None:
        path = self._paths.get(t.client_id)
        if path is not None:
            path.close(t.file_id)

    def abort(self, client_id: str, file_id: str) -> None:
        got = self.get(client_id, file_id)
        if got is None or isinstance(got, ExportInfo):
            return  # nothing staged; an export is deleted through the HTTP API only
        received = got.asm.ranges.covered
        self._discard(got)
        self.hooks.aborted()
        log.info(
            "transfer aborted",
            extra={
                "event": "aborted",
                "clientId": client_id,
                "fileId": file_id,
                "received": received,
            },
        )

    def _stream_open(self, t: Transfer) -> None:
        if self._stream is not None and t.meta is not None:
            self._stream.stream_open(t.client_id, t.file_id, t.meta, t.data_path, t.asm)

    def _discard(self, t: Transfer) -> None:
        if self._stream is not None:
            self._stream.stream_discard(t.client_id, t.file_id)
        self._leave_segment_path(t)
        self._open.pop(t.key, None)
        self._dirty.pop(t.key, None)
        t.journal.take()
        staging.remove(t.dir)  # while the lock is held: nobody locks a half-removed directory
        t.close()

    def fin_prepare(
        self, client_id: str, file_id: str, size: int, checksum: bytes | None
    ) -> Transfer | ExportInfo:
        """Everything about a fin that is known without starting an export.

        Returns the export when the transfer was already exported with this size and checksum
        (the fin succeeds at once), or the transfer, ready to be exported by :meth:`fin_export`.
        Raises ``incomplete`` (with ``missing``) or ``filemeta_conflict``.
        """
        got = self.get(client_id, file_id)
        if got is None:
            raise Incomplete()
        if isinstance(got, ExportInfo):
            if got.size != size or (
                checksum is not None and checksum.hex().upper() != got.checksum
            ):
                raise FileMetaConflict()
            return got
        got.last_activity = time.time()
        if got.paused_since:
            self._resumed(got)
        gaps = got.asm.gaps(size, MAX_MISSING)
        if gaps:
            raise Incomplete(missing=[list(g) for g in gaps])
        if got.meta is None:
            raise Incomplete()
        return got

    def fin_export(
        self, t: Transfer, size: int, checksum: bytes | None
    ) -> asyncio.Future[ExportInfo]:
        """Start (or join) the export of a complete transfer; the future gives its result."""
        fut = self._exports.get(t.key)
        if fut is None:
            self._leave_segment_path(t)  # its segments wait for the export now
            fut = asyncio.ensure_future(self._export(t, size, checksum))
            self._exports[t.key] = fut
            key = t.key

            def forget(_f: asyncio.Future[ExportInfo]) -> None:
                self._exports.pop(key, None)

            fut.add_done_callback(forget)
        return fut

    async def _export(self, t: Transfer, size: int, checksum: bytes | None) -> ExportInfo:
        try:
            return await self._export_steps(t, size, checksum)
        except StorageError as exc:
            if exc.description != "s3_transfer_taken_over":
                self._log_failed(t, size, exc)
                raise
            # another node holds the transfer now: ours must neither complete nor upload it
            # whole. Dropped here (nothing in S3 is touched): a fin sent again finds nothing
            # here, so this node takes the transfer back from the bucket (generation + 1) and
            # answers what is missing beyond its uploaded parts
            log.warning(
                "transfer %r/%r is held by another node: local copy dropped",
                t.client_id,
                t.file_id,
            )
            self._log_failed(t, size, exc)
            if self._open.get(t.key) is t:
                self._discard(t)
            raise
        except Exception as exc:
            self._log_failed(t, size, exc)
            raise
        finally:
            if t.close_after_export and self._open.get(t.key) is t:
                self._close_one(t)  # the client lives in another worker now

    def _log_failed(self, t: Transfer, size: int, exc: Exception) -> None:
        log.info(
            "transfer failed",
            extra={
                "event": "failed",
                "clientId": t.client_id,
                "fileId": t.file_id,
                "size": size,
                "reason": exc.description if isinstance(exc, FtError) else "internal_error",
            },
        )

    async def _export_steps(self, t: Transfer, size: int, checksum: bytes | None) -> ExportInfo:
        assert t.meta is not None
        meta = t.meta
        loop = asyncio.get_running_loop()
        if t._checkpointing is not None:
            await asyncio.shield(t._checkpointing)
        want = checksum if checksum is not None else meta.checksum_bytes
        sync = self.durability == "sync"
        exporter = self.exporter
        started = time.perf_counter()
        init_at = _init_time(t)
        removed: Exception | None = None
        with storage_errors():
            if sync and t.journal.dirty:
                # segments not group-committed yet: their records claim flushed data
                await loop.run_in_executor(None, t.asm.flush)
            t.journal.write()
        if isinstance(exporter, LocalExporter):
            # the rest of the fin in one trip to a thread: each trip costs more than the work
            # of a small file, and only the flushes need a thread at all
            with storage_errors():
                info, removed = await loop.run_in_executor(
                    None, _fin_local, exporter, t, size, want, sync
                )
        else:
            with storage_errors():
                digest = await loop.run_in_executor(None, t.asm.digest, size)
            if want is not None and want != digest:
                raise ChecksumMismatch()
            with storage_errors():
                started = time.perf_counter()
                # the exporter copies the file elsewhere: its record is flushed in any mode
                await loop.run_in_executor(None, _prepare_export, t, size, True)
                info = await exporter.export(
                    t.client_id, t.file_id, meta, t.data_path, digest.hex().upper()
                )
        # exported: from here on the fin succeeds, whatever the clean-up meets. A staging
        # directory left behind is found again (its journal records the export) and removed
        # by the next command or collection that locks it.
        self._open.pop(t.key, None)
        self._dirty.pop(t.key, None)
        self._remember_export(info)
        if not isinstance(exporter, LocalExporter):
            # after the answer: unlinking a large file costs time with its cached pages
            self._spawn(self._remove_exported(t))
        elif removed is not None:
            _removal_failed(t, removed)
        seconds = time.perf_counter() - started
        self.hooks.exported(info, seconds)
        log.info(
            "transfer exported",
            extra={
                "event": "exported",
                "clientId": t.client_id,
                "fileId": t.file_id,
                "size": info.size,
                "duration": None if init_at is None else round(time.time() - init_at, 3),
                "export_seconds": round(seconds, 3),
                "destination": info.destination or str(info.path),
                "checksum": info.checksum,
            },
        )
        return info

    async def _remove_exported(self, t: Transfer) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, _remove_staging, t)
        except Exception as exc:
            _removal_failed(t, exc)

    # -- durability --------------------------------------------------------------------------

    def commit(self) -> None:
        """Write the buffered journal records (fast durability): before acknowledging."""
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        failed: BaseException | None = None
        for t in dirty.values():
            try:
                with storage_errors():
                    t.journal.write()
            except FtError as exc:  # the others are written all the same
                failed = failed or exc
        if failed is not None:
            raise failed

    async def commit_sync(self) -> None:
        """Group commit (sync durability): flush the data, then the journal records.

        One group commit runs at a time. A caller whose records another one took (every
        connection's records share the store's batch) must not acknowledge before that one
        finished: it waits for the lock, and whatever is dirty then goes in the next batch.
        """
        async with self._commit_lock:
            if not self._dirty:
                return
            dirty, self._dirty = self._dirty, {}
            batches = [(t, t.journal.take()) for t in dirty.values()]

            def work() -> None:
                for t, records in batches:
                    if t.asm.file.closed:
                        continue
                    try:
                        t.asm.flush()
                        # only this batch's records: those buffered meanwhile by the event
                        # loop name data this flush may have missed (and the buffer is the
                        # loop thread's)
                        t.journal.write_records(records, sync=True)
                    except (FileNotFoundError, ValueError):
                        # exported or discarded meanwhile (a fin in the same read as its
                        # last segments runs beside this commit): its staging is gone, and
                        # with it anything to make durable; anything else is an error
                        if not t.asm.file.closed and os.path.isdir(t.dir):
                            raise

            with storage_errors():
                await asyncio.get_running_loop().run_in_executor(None, work)

    @property
    def needs_commit(self) -> bool:
        return bool(self._dirty)

    async def _checkpoint(self, t: Transfer) -> None:
        """Flush the data, then record the assembler state: recovery starts from there."""
        loop = asyncio.get_running_loop()
        fut = t._checkpointing
        if fut is None:
            fut = t._checkpointing = loop.create_future()
        sync = self.durability == "sync"
        try:
            state = t.asm.dumps()  # everything it claims was written before the flush starts
            hash_state = t.asm.hash_state()
            t.unflushed = 0
            await loop.run_in_executor(None, t.asm.flush)
            if t.asm.file.closed:
                return
            # the buffered records stay buffered in sync mode: their data may have been
            # written after the flush started, and the group commit flushes it first
            if t.journal.size > COMPACT_JOURNAL_BYTES:
                t.journal.compact(state)
            elif sync:
                t.journal.write_records([jr.checkpoint_record(state)])
            else:
                t.journal.add(jr.checkpoint_record(state))
            if t.asm.hash_state() != hash_state:
                # segments hashed while the flush ran recorded newer states before the
                # checkpoint: the newest must follow it (recovery takes the last one)
                h = t.asm.hashed
                t.journal.add_run(h, h, state=t.asm.hash_state, synced=sync)
                self._dirty[t.key] = t
            if not sync:
                t.journal.write()
        except OSError as exc:
            log.error("checkpoint of %r/%r failed: %s", t.client_id, t.file_id, exc)
        except ValueError:
            if not t.asm.file.closed:  # discarded (abort, GC) meanwhile: nothing to save
                raise
        finally:
            t._checkpointing = None
            fut.set_result(None)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- housekeeping ------------------------------------------------------------------------

    def ttl_of(self, meta: FileMeta | None) -> float:
        ttl = meta.segments_ttl if meta is not None and meta.segments_ttl is not None else None
        if ttl is None:
            return self.ttl_max
        return min(max(float(ttl), self.ttl_min), self.ttl_max)

    def close_idle(self, now: float | None = None) -> int:
        """Close transfers nobody touched for ``idle_close`` seconds (their state stays on
        disk); returns how many were closed."""
        now = time.time() if now is None else now
        idle = [
            t
            for t in self._open.values()
            if now - t.last_activity > self.idle_close
            and t.key not in self._exports
            and t._checkpointing is None
        ]
        for t in idle:
            self._close_one(t)
        return len(idle)

    def release_client(self, client_id: str) -> int:
        """Close every open transfer of a client that moved to another worker process, so that
        it can open them there; an export in progress finishes here first. Returns how many
        were closed now."""
        for key, recovering in self._recovering.items():
            if key[0] == client_id and not recovering.done():
                self._release_on_recovery.add(key)
        mine = [t for t in self._open.values() if t.client_id == client_id]
        closed = 0
        for t in mine:
            if t.key in self._exports:
                t.close_after_export = True
            else:
                self._close_one(t)
                closed += 1
        return closed

    def _close_one(self, t: Transfer) -> None:
        if self._stream is not None:
            self._stream.stream_close(t.client_id, t.file_id)
        self._leave_segment_path(t)
        self._open.pop(t.key, None)
        self._dirty.pop(t.key, None)
        try:
            t.asm.flush()  # the data first: a record must never name bytes not yet on disk
            t.journal.write()
            t.journal.add(jr.checkpoint_record(t.asm.dumps()))
        except OSError as exc:
            log.error("closing %r/%r: %s", t.client_id, t.file_id, exc)
        t.close()

    def collect_garbage(self, now: float | None = None) -> int:
        """Delete unfinished transfers whose last activity is older than their TTL."""
        now = time.time() if now is None else now
        removed = 0
        for t in list(self._open.values()):
            if t.key in self._exports:
                continue
            ttl = self.ttl_of(t.meta)
            if now - t.last_activity > ttl:
                self._discard(t)
                removed += 1
                gc.log_expired(t.client_id, t.file_id, now - t.last_activity, ttl)
        open_dirs = {t.dir for t in self._open.values()}
        stream = self._stream
        on_removed = None if stream is None else (lambda cid, fid: stream.stream_discard(cid, fid))
        return removed + gc.collect_expired(
            self.staging, now, self.ttl_of, skip=open_dirs, on_removed=on_removed
        )

    async def close(self) -> None:
        """Persist everything (flush + checkpoint) and close every open transfer."""
        if self._recovering:
            await asyncio.gather(*self._recovering.values(), return_exceptions=True)
            self._recovering.clear()
        if self._exports:
            await asyncio.gather(*self._exports.values(), return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for t in list(self._open.values()):
            self._close_one(t)

    def open_transfers(self) -> list[Transfer]:
        return list(self._open.values())


def _init_time(t: Transfer) -> float | None:
    """When the transfer's init was stored: its meta file's modification time (written once,
    by the init; it survives restarts and moves between workers)."""
    try:
        return os.stat(t.dir / staging.META).st_mtime
    except OSError:
        return None


def _fin_local(
    exporter: LocalExporter,
    t: Transfer,
    size: int,
    want: bytes | None,
    sync: bool,
) -> tuple[ExportInfo, Exception | None]:
    """The fin of a transfer exported to a local directory, in one executor job: the digest
    and its check, the export's preparation, the export, and the removal of the staging
    directory. Returns the export and the error the removal met, if any (the export stands
    all the same).

    Raises ``ChecksumMismatch`` (the transfer is left as it was) and ``OSError``."""
    assert t.meta is not None
    digest = t.asm.digest(size)
    if want is not None and want != digest:
        raise ChecksumMismatch()
    _prepare_export(t, size, sync)
    # the export itself is flushed in both modes (manifest and directory): a fin answered
    # success means the file is there, power loss or not; fast mode saves flushes per
    # segment, never on an acknowledged export
    info = exporter.export_blocking(
        t.client_id, t.file_id, t.meta, t.data_path, digest.hex().upper(), sync=True
    )
    try:
        _remove_staging(t)
    except Exception as exc:
        return info, exc
    return info, None


def _removal_failed(t: Transfer, exc: Exception) -> None:
    log.warning(
        "transfer %r/%r exported; removing its staging directory failed (%s): "
        "left for the collector",
        t.client_id,
        t.file_id,
        exc,
    )
    t.close()


def _prepare_export(t: Transfer, size: int, sync: bool) -> None:
    """Cut the file at its size, flush it, and journal that the export starts.

    The data is flushed in both durability modes: an export must never be found whole
    after a power loss without its bytes. The ``EXPORTING`` record needs flushing only in
    ``sync``: written, it survives a crash of the process; lost to a power loss, recovery
    finds the data file still staged (the transfer resumes) or gone with its export beside
    its manifest (exported), and the flushed data makes either true."""
    if t.asm.file.size() != size:
        t.asm.truncate(size)
    t.asm.flush()
    if t.lock_fd < 0:
        # the export moves the data file (and its lock) away: the journal holds the
        # directory until it is removed
        t.lock_fd = staging.lock_journal(t.dir)
    t.journal.write_records([jr.exporting_record(size, str(t.data_path))], sync=sync)


def _remove_staging(t: Transfer) -> None:
    staging.remove(t.dir, exported=True)  # while both locks are held
    t.asm.close()
    t.journal.close()
    t.unlock()


#: what recovering a staged transfer gives: the transfer reopened, its export (finished
#: before the process that had it stopped), or None (nothing left to recover)
Recovered: TypeAlias = Transfer | ExportInfo | None


def _recover(
    exporter: Exporter,
    key: Key,
    d: Path,
    lock: int,
    boot_id: Callable[[], str] = jr.current_boot_id,
    recycle: bool = False,
) -> Recovered:
    """Recover the transfer staged in ``d``, which ``lock`` holds. Runs in an executor thread:
    it reads and writes only that directory and the exporter's records on disk, and builds
    the :class:`Transfer` without installing it (the event loop does). The transfer keeps
    the lock; otherwise it is released here, after the directory was removed if it was."""
    try:
        result = _recover_locked(exporter, key, d, lock, boot_id, recycle)
    except BaseException:
        os.close(lock)
        raise
    if not isinstance(result, Transfer):
        os.close(lock)
    elif result.lock_fd >= 0 and staging.adopt_lock(result.lock_fd, result.asm):
        result.lock_fd = -1  # the data file's descriptor holds the lock: one descriptor
    return result


def _recover_locked(
    exporter: Exporter,
    key: Key,
    d: Path,
    lock: int,
    boot_id: Callable[[], str] = jr.current_boot_id,
    recycle: bool = False,
) -> Recovered:
    client_id, file_id = key
    what = f"{client_id!r}/{file_id!r}"
    with storage_errors():
        try:
            replay = jr.replay(d / staging.JOURNAL)
        except FileNotFoundError:  # cut short between mkdir and its journal
            replay = jr.Replay(last_activity=time.time())
        if replay.damaged is not None:
            log.error("transfer %s: unreadable journal (%s): starting over", what, replay.damaged)
            staging.remove(d)
            return None
        meta: FileMeta | None = None
        try:
            meta = staging.read_meta(d)
        except FtError:
            log.error("transfer %s: unreadable meta file, ignoring it", what)
        if replay.exporting is not None:
            done = exporter.lookup(client_id, file_id)
            if done is not None:  # exported; only the staging clean-up was cut short
                staging.remove(d)
                return done
            if meta is not None and not (d / staging.DATA).exists():
                info = exporter.finish_interrupted(client_id, file_id, meta)
                if info is None:
                    log.error("transfer %s: export interrupted and its file is gone", what)
                staging.remove(d)
                return info
    asm, journal = reopen(d, replay, what, boot_id=boot_id, recycle=recycle)
    t = Transfer(client_id, file_id, d, asm, journal, meta, lock)
    t.last_activity = replay.last_activity  # what came before (the store updates it)
    with contextlib.suppress(FileNotFoundError, ValueError):
        t.floor = int((d / ADOPTED).read_text())
    return t


__all__ = ["Durability", "ExportInfo", "Transfer", "TransferStore"]

"""Transfers and the store of them: one file's state on disk and in memory (PROTOCOL.md §5).

A transfer is the pair (clientId, fileId). Its state lives in its staging directory
(ARCHITECTURE.md, "State on disk"): ``meta`` (the init metadata), ``data`` (the sparse file),
``journal`` (what ``data`` holds, hash checkpoints, export state). The store opens a transfer
lazily, the first time a command names it, recovering it from the journal; so a disconnect,
a reconnect to another worker and a restart after ``kill -9`` are one mechanism.

The store raises ``FtError`` subclasses; turning them into reason codes is the dispatcher's
business. Blocking work that can grow with the file (flushes, exports, re-reads) runs in an
executor thread; per-segment work (a ``pwrite`` into the page cache, BLAKE3 of the segment,
one buffered journal record) runs inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import struct
import time
from collections import OrderedDict
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Literal

import blake3

import ftcore
from ftserver.errors import (
    ChecksumMismatch,
    FileMetaConflict,
    FtError,
    Incomplete,
    StorageError,
    TooManyTransfers,
    TransferBusy,
)
from ftserver.export.base import Exporter, ExportInfo
from ftserver.export.layout import staging_bucket
from ftserver.export.local import LocalExporter
from ftserver.meta import FileMeta, parse_filemeta
from ftserver.names import esc
from ftserver.storage import journal as jr

log = logging.getLogger(__name__)

Durability = Literal["fast", "sync"]

#: at most this many gaps are reported in an ``incomplete`` fin's ``missing`` key
MAX_MISSING = 16
#: a journal larger than this is compacted at its next checkpoint
COMPACT_JOURNAL_BYTES = 4 << 20
#: bytes read per chunk when recovery re-checks unflushed ranges
VERIFY_CHUNK = 1 << 20
#: how many finished exports are remembered in memory (the disk is the truth)
EXPORT_CACHE = 4096

Key = tuple[str, str]


def _blake3_16(data: memoryview | bytes) -> bytes:
    return blake3.blake3(data).digest(length=16)


class Transfer:
    """One unfinished transfer, open in this process."""

    __slots__ = (
        "_checkpointing",
        "asm",
        "client_id",
        "close_after_export",
        "dir",
        "file_id",
        "journal",
        "last_activity",
        "lock_fd",
        "meta",
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
        #: the lock on the staging directory: the transfer is open in this process only
        self.lock_fd = lock_fd
        #: the client went to another worker: close this transfer once its export ends
        self.close_after_export = False

    @property
    def key(self) -> Key:
        return (self.client_id, self.file_id)

    @property
    def data_path(self) -> Path:
        return self.dir / "data"

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


class _Gone(Exception):
    """The staging directory was removed while we waited for its lock."""


def lock_dir(d: Path) -> int:
    """Lock a staging directory for this process (flock, released when the fd closes, also
    when the process dies). Raises TransferBusy or _Gone."""
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_nlink == 0:
            raise _Gone()
    except BlockingIOError:
        os.close(fd)
        raise TransferBusy() from None
    except BaseException:
        os.close(fd)
        raise
    return fd


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
    ) -> None:
        self.staging = data_dir / "staging"
        self.staging.mkdir(parents=True, exist_ok=True)
        self.exporter: Exporter = exporter or LocalExporter(data_dir / "exports")
        self.exporter.root.mkdir(parents=True, exist_ok=True)
        self.durability: Durability = durability
        self.flush_bytes = flush_bytes
        self.ttl_min = ttl_min
        self.ttl_max = ttl_max
        self.idle_close = idle_close
        self.hooks = hooks or StoreHooks()
        self.max_transfers_per_client = max_transfers_per_client
        self._open: dict[Key, Transfer] = {}
        self._exported: OrderedDict[Key, ExportInfo] = OrderedDict()
        self._exports: dict[Key, asyncio.Future[ExportInfo]] = {}
        self._dirty: dict[Key, Transfer] = {}
        self._tasks: set[asyncio.Future[None]] = set()

    # -- lookup ------------------------------------------------------------------------------

    def staging_dir(self, client_id: str, file_id: str) -> Path:
        return self.staging / staging_bucket(client_id) / esc(client_id) / esc(file_id)

    def get(self, client_id: str, file_id: str) -> Transfer | ExportInfo | None:
        """The open transfer, its finished export, or None when nothing is known of it."""
        key = (client_id, file_id)
        t = self._open.get(key)
        if t is not None:
            return t
        info = self._exported.get(key)
        if info is not None:
            if info.path.exists():
                self._exported.move_to_end(key)
                return info
            del self._exported[key]  # deleted (HTTP API, expire_at) since: look again
        d = self.staging_dir(client_id, file_id)
        if d.is_dir():
            try:
                return self._recover(client_id, file_id, d)
            except _Gone:
                pass  # exported or aborted by the process that had it: look again
        info = self.exporter.lookup(client_id, file_id)
        if info is not None:
            self._remember_export(info)
        return info

    def _remember_export(self, info: ExportInfo) -> None:
        key = (info.client_id, info.file_id)
        self._exported[key] = info
        self._exported.move_to_end(key)
        while len(self._exported) > EXPORT_CACHE:
            self._exported.popitem(last=False)

    def _create(self, client_id: str, file_id: str) -> Transfer:
        d = self.staging_dir(client_id, file_id)
        limit = self.max_transfers_per_client
        if limit:
            try:
                staged = len(os.listdir(d.parent))
            except FileNotFoundError:
                staged = 0
            if staged >= limit:
                raise TooManyTransfers()
        try:
            for _attempt in range(3):
                d.mkdir(parents=True, exist_ok=True)
                try:
                    lock = lock_dir(d)
                except _Gone:
                    continue  # removed between mkdir and lock: make it again
                break
            else:
                raise TransferBusy()
            try:
                asm = ftcore.Assembler(d / "data")
                try:
                    journal = jr.Journal(d / "journal")
                except BaseException:
                    asm.close()
                    raise
            except BaseException:
                os.close(lock)
                raise
            if self.durability == "sync":
                journal.sync()
                for p in (d, d.parent, d.parent.parent):
                    jr.fsync_dir(p)
        except OSError as exc:
            raise StorageError.from_oserror(exc) from exc
        t = Transfer(client_id, file_id, d, asm, journal, None, lock)
        self._open[t.key] = t
        return t

    def _recover(self, client_id: str, file_id: str, d: Path) -> Transfer | ExportInfo | None:
        """Open a transfer from its staging directory (after a restart, handover or close)."""
        lock = lock_dir(d)
        try:
            result = self._recover_locked(client_id, file_id, d, lock)
        except BaseException:
            os.close(lock)
            raise
        if not isinstance(result, Transfer):
            os.close(lock)
        return result

    def _recover_locked(
        self, client_id: str, file_id: str, d: Path, lock: int
    ) -> Transfer | ExportInfo | None:
        try:
            records, valid = jr.read_journal(d / "journal")
        except FileNotFoundError:
            records, valid = [], 0
        except (OSError, ValueError) as exc:
            log.error(
                "transfer %r/%r: unreadable journal (%s): starting it over", client_id, file_id, exc
            )
            shutil.rmtree(d, ignore_errors=True)
            return None
        meta: FileMeta | None = None
        with contextlib.suppress(FileNotFoundError):
            try:
                meta = parse_filemeta((d / "meta").read_bytes())
            except FtError:
                log.error("transfer %r/%r: unreadable meta file, ignoring it", client_id, file_id)
        exporting = [i for i, r in enumerate(records) if r.type is jr.Rec.EXPORTING]
        if exporting:
            done = self.exporter.lookup(client_id, file_id)
            if done is not None:  # exported; only the staging clean-up was cut short
                shutil.rmtree(d, ignore_errors=True)
                self._remember_export(done)
                return done
        if exporting and not (d / "data").exists() and meta is not None:
            return self._finish_interrupted_export(client_id, file_id, d, meta)
        exported_size = 0
        if exporting:
            # The export had cut the file at its size and flushed [0, size) before it wrote
            # this record (and did not finish): the records before it are superseded, and
            # the ranges they name beyond the size are no longer in the file.
            exported_size = records[exporting[-1]].exporting()[0]
            records = records[exporting[-1] + 1 :]
        checkpoint = next((r for r in reversed(records) if r.type is jr.Rec.CHECKPOINT), None)
        try:
            asm = ftcore.Assembler(d / "data", checkpoint.payload if checkpoint else None)
        except ValueError as exc:
            log.error("transfer %r/%r: bad checkpoint (%s), re-reading", client_id, file_id, exc)
            asm = ftcore.Assembler(d / "data")
            checkpoint = None
        dropped = 0
        try:
            if checkpoint is None and 0 < exported_size <= asm.file.size():
                asm.mark(0, exported_size)
            for offset, length, digest in jr.iter_ranges(records):
                if asm.ranges.contains(offset, offset + length):
                    continue
                if digest is not None and not self._verify(asm, offset, length, digest):
                    dropped += 1
                    continue
                asm.mark(offset, length)
            journal = jr.Journal(d / "journal", valid_length=valid)
        except OSError as exc:
            asm.close()
            raise StorageError.from_oserror(exc) from exc
        if dropped:
            log.warning(
                "transfer %r/%r: %d unflushed range(s) did not survive; the client "
                "will resend them",
                client_id,
                file_id,
                dropped,
            )
        t = Transfer(client_id, file_id, d, asm, journal, meta, lock)
        with contextlib.suppress(OSError):
            t.last_activity = os.stat(d / "journal").st_mtime
        self._open[t.key] = t
        return t

    @staticmethod
    def _verify(asm: ftcore.Assembler, offset: int, length: int, digest: bytes) -> bool:
        h = blake3.blake3()
        pos, end = offset, offset + length
        while pos < end:
            chunk = asm.file.read(pos, min(VERIFY_CHUNK, end - pos))
            if not chunk:
                return False
            h.update(chunk)
            pos += len(chunk)
        return bool(h.digest(length=16) == digest)

    def _finish_interrupted_export(
        self, client_id: str, file_id: str, d: Path, meta: FileMeta
    ) -> ExportInfo | None:
        info = self.exporter.finish_interrupted(client_id, file_id, meta)
        if info is None:
            log.error("transfer %r/%r: export interrupted and its file is gone", client_id, file_id)
        shutil.rmtree(d, ignore_errors=True)
        if info is not None:
            self._remember_export(info)
        return info

    # -- commands ----------------------------------------------------------------------------

    def export_running(self, client_id: str, file_id: str) -> asyncio.Future[ExportInfo] | None:
        """The export in progress for this transfer, if any: commands for it wait for it."""
        return self._exports.get((client_id, file_id))

    def init(self, client_id: str, file_id: str, meta: FileMeta) -> None:
        got = self.get(client_id, file_id)
        if isinstance(got, ExportInfo):
            if got.meta != meta:
                raise FileMetaConflict()
            return
        t = got if got is not None else self._create(client_id, file_id)
        t.last_activity = time.time()
        if t.meta is not None:
            if t.meta != meta:
                raise FileMetaConflict()
            return
        try:
            self._write_meta(t.dir, meta)
        except OSError as exc:
            raise StorageError.from_oserror(exc) from exc
        t.meta = meta
        self.hooks.started()

    def _write_meta(self, d: Path, meta: FileMeta) -> None:
        tmp = d / "meta.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, meta.to_json_bytes())
            if self.durability == "sync":
                os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, d / "meta")
        if self.durability == "sync":
            jr.fsync_dir(d)

    def segment(self, client_id: str, file_id: str, offset: int, data: memoryview) -> None:
        """Store a segment. The journal record is buffered: call :meth:`commit` before the
        acknowledgement goes out."""
        got = self.get(client_id, file_id)
        if isinstance(got, ExportInfo):
            return  # a retransmission after the export: its bytes are discarded
        t = got if got is not None else self._create(client_id, file_id)
        t.last_activity = time.time()
        n = len(data)
        if n == 0:
            return
        try:
            t.asm.place(offset, data)
        except OSError as exc:
            raise StorageError.from_oserror(exc) from exc
        if self.durability == "fast":
            t.journal.add(jr.range_record(offset, n, _blake3_16(data)))
        else:
            t.journal.add(jr.range_record(offset, n, None))
        self._dirty[t.key] = t
        # a checkpoint every flush_bytes (both modes): recovery then starts from the saved
        # rolling hash instead of re-reading the prefix, and fast mode bounds what it must
        # re-verify (and what a fin must flush)
        t.unflushed += n
        if t.unflushed >= self.flush_bytes and t._checkpointing is None:
            # marked in flight now, not when the task first runs: the segments that
            # follow in the same batch must not spawn checkpoints of their own
            t._checkpointing = asyncio.get_running_loop().create_future()
            self._spawn(self._checkpoint(t))

    def abort(self, client_id: str, file_id: str) -> None:
        got = self.get(client_id, file_id)
        if got is None or isinstance(got, ExportInfo):
            return  # nothing staged; an export is deleted through the HTTP API only
        self._discard(got)
        self.hooks.aborted()

    def _discard(self, t: Transfer) -> None:
        self._open.pop(t.key, None)
        self._dirty.pop(t.key, None)
        t.journal.take()
        t.close(unlock=False)
        shutil.rmtree(t.dir, ignore_errors=True)
        t.unlock()  # only now: nobody may lock a directory that is being removed

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
        finally:
            if t.close_after_export and self._open.get(t.key) is t:
                self._close_one(t)  # the client lives in another worker now

    async def _export_steps(self, t: Transfer, size: int, checksum: bytes | None) -> ExportInfo:
        assert t.meta is not None
        meta = t.meta
        loop = asyncio.get_running_loop()
        if t._checkpointing is not None:
            await asyncio.shield(t._checkpointing)
        try:
            if self.durability == "sync" and t.journal.dirty:
                # segments not group-committed yet: their records claim flushed data
                await loop.run_in_executor(None, t.asm.flush)
            self._commit_one(t)
            digest = await loop.run_in_executor(None, t.asm.digest, size)
        except OSError as exc:
            raise StorageError.from_oserror(exc) from exc
        want = checksum if checksum is not None else meta.checksum_bytes
        if want is not None and want != digest:
            raise ChecksumMismatch()
        hexdigest = digest.hex().upper()
        try:
            started = time.perf_counter()
            await loop.run_in_executor(None, self._prepare_export, t, size)
            info = await self.exporter.export(t.client_id, t.file_id, meta, t.data_path, hexdigest)
            await loop.run_in_executor(None, self._remove_staging, t)
            self.hooks.exported(info, time.perf_counter() - started)
        except OSError as exc:
            raise StorageError.from_oserror(exc) from exc
        self._open.pop(t.key, None)
        self._dirty.pop(t.key, None)
        self._remember_export(info)
        return info

    @staticmethod
    def _prepare_export(t: Transfer, size: int) -> None:
        """Cut the file at its size, flush it, and journal that the export starts."""
        if t.asm.file.size() != size:
            t.asm.truncate(size)
        t.asm.flush()
        t.journal.add(jr.exporting_record(size, str(t.data_path)))
        t.journal.write()
        t.journal.sync()

    @staticmethod
    def _remove_staging(t: Transfer) -> None:
        t.asm.close()
        t.journal.close()
        shutil.rmtree(t.dir, ignore_errors=True)
        t.unlock()  # only now: nobody may lock a directory that is being removed

    # -- durability --------------------------------------------------------------------------

    def commit(self) -> None:
        """Write the buffered journal records (fast durability): before acknowledging."""
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        for t in dirty.values():
            self._commit_one(t)

    @staticmethod
    def _commit_one(t: Transfer) -> None:
        try:
            t.journal.write()
        except OSError as exc:
            raise StorageError.from_oserror(exc) from exc

    async def commit_sync(self) -> None:
        """Group commit (sync durability): flush the data, then the journal records."""
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        batches = [(t, t.journal.take()) for t in dirty.values()]

        def work() -> None:
            for t, records in batches:
                if t.asm.file.closed:
                    continue
                t.asm.flush()
                # only this batch's records: those buffered meanwhile by the event loop name
                # data this flush may have missed (and the buffer is the loop thread's)
                t.journal.write_records(records)
                t.journal.sync()

        try:
            await asyncio.get_running_loop().run_in_executor(None, work)
        except OSError as exc:
            raise StorageError.from_oserror(exc) from exc

    @property
    def needs_commit(self) -> bool:
        return bool(self._dirty)

    async def _checkpoint(self, t: Transfer) -> None:
        """Flush the data, then record the assembler state: recovery starts from there."""
        loop = asyncio.get_running_loop()
        fut = t._checkpointing
        if fut is None:
            fut = t._checkpointing = loop.create_future()
        try:
            state = t.asm.dumps()  # everything it claims was written before the flush starts
            t.unflushed = 0
            await loop.run_in_executor(None, t.asm.flush)
            if t.asm.file.closed:
                return
            rec = jr.checkpoint_record(state)
            if t.journal.size > COMPACT_JOURNAL_BYTES:
                t.journal.write()
                records, _ = jr.read_journal(t.journal.path)
                ranges = ftcore.RangeSet.loads(_ranges_of(state))
                keep = [rec] + [
                    jr.range_record(o, n, d)
                    for o, n, d in jr.iter_ranges(records)
                    if not ranges.contains(o, o + n)
                ]
                t.journal.rewrite(keep)
            else:
                t.journal.add(rec)
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
            if now - t.last_activity > self.ttl_of(t.meta):
                self._discard(t)
                removed += 1
        open_dirs = {t.dir for t in self._open.values()}
        for journal in self.staging.glob("*/*/*/journal"):
            d = journal.parent
            if d in open_dirs:
                continue
            try:
                last = journal.stat().st_mtime
            except FileNotFoundError:
                continue
            meta = None
            with contextlib.suppress(OSError, FtError):
                meta = parse_filemeta((d / "meta").read_bytes())
            if now - last > self.ttl_of(meta):
                try:
                    lock = lock_dir(d)
                except (TransferBusy, _Gone, OSError):
                    continue  # open in another worker (it collects its own) or gone already
                try:
                    shutil.rmtree(d, ignore_errors=True)
                finally:
                    os.close(lock)
                removed += 1
        return removed

    async def close(self) -> None:
        """Persist everything (flush + checkpoint) and close every open transfer."""
        if self._exports:
            await asyncio.gather(*self._exports.values(), return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for t in list(self._open.values()):
            self._close_one(t)

    def open_transfers(self) -> list[Transfer]:
        return list(self._open.values())


def _ranges_of(state: bytes) -> bytes:
    """The serialised RangeSet inside a serialised Assembler state."""
    _magic, _hashed, hlen = struct.unpack_from("<4sQI", state, 0)
    return state[16 + hlen :]


__all__ = ["Durability", "ExportInfo", "Transfer", "TransferStore"]

"""Streaming S3 export: each part of a file is uploaded as soon as its bytes are on disk.

A transfer whose init gives a size of more than one part (``part_size_for``) opens its
multipart upload at once, in the background, and writes its checkpoint
(:mod:`ftserver.export.checkpoint`). From then on every write the store reports
(:meth:`PartStreamer.stream_wrote`) checks the parts it touches: a part whose byte range is
complete is read back from the staging file (``pread`` in a thread, while its pages are
still in the page cache) and uploaded, in whatever order the parts complete. Uploads of all
the transfers of a worker process share one semaphore of ``export.upload_concurrency``: at
most that many parts are in memory. Everything that talks to S3 runs on the exporter's own
loop (``S3Exporter``'s IO thread); the bookkeeping here runs on the store's loop and never
blocks it.

The fin (:meth:`TransferStream.finish`) waits for the parts in flight, uploads what is left
(normally the last part only), and completes the upload: its latency does not grow with the
file. Small files (one part or less), and transfers without a size at init, are exported at
fin as before (``S3Bucket.put_file``).

The whole-file SHA-256 is the store's rolling hash, as for every export. For the checkpoint
the stream also keeps the hash state at part boundaries without hashing the file twice: it
takes the store's state at the last write before the hash crossed a part's end (a
"snapshot", within one write of that end) and, when that part is uploaded, hashes only the
tail of the part's bytes beyond the snapshot; a part that has no snapshot (the hash jumped
over it: segments out of order) is hashed whole from the state at its start when that is
known, else it has no boundary state.

Segments sent again over a part already uploaded (or in flight)
    The bytes of a staged range may be written again (a device that resends). When the
    store's assembler has verified them identical (the range was already hashed and the
    hash did not reset) nothing happens. Otherwise the part counts as changed: it is
    dropped from the checkpoint and uploaded again (an upload in flight is repeated once it
    ends), so the object is always made of the bytes the whole-file SHA-256 was computed
    over, last write winning as with the local exporter. The one window left: a worker
    killed between acknowledging a different resend of an uploaded range and rewriting the
    checkpoint (milliseconds) leaves the old part recorded; the next owner trusts the
    checkpoint. Only a device sending two different contents for the same bytes of one file
    (which the protocol does not allow) can meet it.

How a stream ends
    Completed at fin; aborted (multipart upload aborted, checkpoint deleted) when the transfer
    is aborted or expires, when the fin fails (a re-sent fin then exports the whole file), or
    when its size at fin differs from its init. A transfer closed in this process (idle, moved
    to another worker, the server stopping) leaves its upload and checkpoint in the bucket:
    whoever opens it next continues from the checkpoint. A part that fails to upload is
    retried when the next part completes and at fin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import ftcore
from ftserver.config import ExportConfig
from ftserver.errors import BackendUnavailable, StorageError
from ftserver.export.checkpoint import Checkpoint, checkpoint_key
from ftserver.export.layout import s3_key
from ftserver.export.s3util import (
    is_gone,
    part_size_for,
    precondition_failed,
    remember_abort,
    s3_error,
)
from ftserver.export.streaming import Adoption
from ftserver.meta import FileMeta, filemeta_from_obj

__all__ = ["Fenced", "PartStreamer", "TransferStream", "part_bytes"]

T = TypeVar("T")

log = logging.getLogger(__name__)

#: a failed part is retried no sooner than this after its failure (until the fin)
RETRY_AFTER = 2.0
#: a transfer found without a checkpoint is not looked for again for this long
NEGATIVE_TTL = 2.0
#: how long an adoption waits for a checkpoint in state ``completing`` to go (the owner
#: completes the upload), then answers ``s3_unavailable`` (the device resends later)
COMPLETING_WAIT = 10.0


class Fenced(StorageError):
    """Another node (or a newer generation) owns the transfer's checkpoint now."""

    def __init__(self) -> None:
        super().__init__("s3_transfer_taken_over")


class Conflict(Exception):
    """A conditional checkpoint write or delete was refused (412): somebody else wrote."""


def part_bytes(
    path: Path, offset: int, length: int, hashing: tuple[int, bytes] | None
) -> tuple[bytes, bytes | None]:
    """The bytes of one part, read from the staging file, and (``hashing``: a hash state at
    ``h0`` in [offset, offset + length]) the hash state at the part's end. Blocking."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        got = 0
        while got < length:
            chunk = os.pread(fd, length - got, offset + got)
            if not chunk:
                raise OSError(5, "staging file shorter than the part", str(path))
            chunks.append(chunk)
            got += len(chunk)
        # not read again: on Linux this starts the writeback of its dirty pages and drops
        # the clean ones (those written back later stay cached until the kernel needs them)
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    state = None
    if hashing is not None:
        h0, start_state = hashing
        h = ftcore.RollingSha256.loads(start_state)
        h.update(memoryview(body)[h0 - offset :])
        state = h.dumps()
    return body, state


class TransferStream:
    """The streamed upload of one transfer (state on the store's loop)."""

    def __init__(
        self,
        owner: PartStreamer,
        client_id: str,
        file_id: str,
        meta: FileMeta,
        data_path: Path,
        asm: ftcore.Assembler,
        part: int,
    ) -> None:
        assert meta.size is not None
        self.owner = owner
        self.client_id = client_id
        self.file_id = file_id
        self.meta = meta
        self.data_path = data_path
        self.asm: ftcore.Assembler | None = asm
        self.size = meta.size
        self.part = part
        self.count = -(-self.size // part)
        self.key = s3_key(client_id, file_id, meta.name)
        self.ckpt_key = checkpoint_key(owner.cfg.checkpoint_prefix, client_id, file_id)
        self.upload_id: str | None = None
        self.generation = 1
        self.ckpt_etag: str | None = None
        #: parts uploaded with the bytes now staged: index -> ETag
        self.etags: dict[int, str] = {}
        #: bumped by every unverified write over a part uploaded or in flight
        self.version: dict[int, int] = {}
        self.running: dict[int, asyncio.Task[None]] = {}
        self.failed: dict[int, float] = {}
        self.last_error: BaseException | None = None
        #: part index -> (h0, the rolling hash state at h0), h0 within that part
        self.snaps: dict[int, tuple[int, bytes]] = {}
        #: boundary index b -> the hash state at b × part
        self.bstates: dict[int, bytes] = {0: ftcore.RollingSha256().dumps()}
        self.hash_epoch = 0
        self.closed = False
        self.fenced = False
        self.opened: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._ckpt_dirty = False
        self._ckpt_task: asyncio.Task[None] | None = None

    # -- the store's writes ------------------------------------------------------------------

    def _range(self, i: int) -> tuple[int, int]:
        start = i * self.part
        return start, min(start + self.part, self.size)

    def wrote(self, start: int, end: int, verified: bool, reset: bool) -> None:
        asm = self.asm
        if self.closed or asm is None or start >= self.size:
            return
        if reset:  # bytes differ from what the hash absorbed: states past them are stale
            self.hash_epoch += 1
            self.snaps.clear()
            for b in [b for b in self.bstates if b * self.part > start]:
                del self.bstates[b]
        part = self.part
        first, last = start // part, min((end - 1) // part, self.count - 1)
        for i in range(first, last + 1):
            if i in self.etags or i in self.running:
                if not verified:
                    self.version[i] = self.version.get(i, 0) + 1
                    if self.etags.pop(i, None) is not None:
                        self._checkpoint_soon()
                    if i not in self.running:
                        self._schedule(i)
                continue
            s, e = self._range(i)
            if asm.ranges.contains(s, e):
                self._schedule(i)
        h = asm.hashed
        i = h // part
        if i < self.count and i not in self.etags and i not in self.running:
            state = asm.hash_state()
            self.snaps[i] = (h, state)
            if h == i * part:
                self.bstates[i] = state
        if self.failed:
            self._retry_failed()

    def schedule_complete(self) -> None:
        """Upload the parts already complete and not done (segments that came before the
        init, a reopened transfer)."""
        asm = self.asm
        if asm is None or self.closed:
            return
        for i in range(self.count):
            if i not in self.etags and i not in self.running:
                s, e = self._range(i)
                if asm.ranges.contains(s, e):
                    self._schedule(i)

    def _retry_failed(self) -> None:
        now = time.monotonic()
        for i, when in list(self.failed.items()):
            if now - when >= RETRY_AFTER and i not in self.running:
                self._schedule(i)

    def _schedule(self, i: int) -> None:
        self.failed.pop(i, None)
        self.running[i] = asyncio.ensure_future(self._run_part(i))

    async def _run_part(self, i: int) -> None:
        try:
            if not await asyncio.shield(self.opened):
                return
            if i in self.etags:
                return  # the checkpoint this stream continues has it
            while not self.closed:
                version = self.version.get(i, 0)
                epoch = self.hash_epoch
                offset, end = self._range(i)
                snap = self.snaps.get(i)
                hashing = snap if snap is not None and snap[0] >= offset else None
                if hashing is None and i in self.bstates:
                    hashing = (offset, self.bstates[i])
                assert self.upload_id is not None
                etag, state = await self.owner.run(
                    self.owner.upload_part(
                        self.key, self.upload_id, i + 1, self.data_path, offset, end, hashing
                    )
                )
                if self.closed or self.version.get(i, 0) != version:
                    continue  # closed meanwhile (the loop ends), or written again while sent
                self.etags[i] = etag
                self.snaps.pop(i, None)
                if state is not None and epoch == self.hash_epoch:
                    self.bstates[i + 1] = state
                self._checkpoint_soon()
                return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed[i] = time.monotonic()
            if self.last_error is None or type(exc) is not type(self.last_error):
                log.warning(
                    "s3: part %d of %r/%r not uploaded (%s): retried later",
                    i + 1,
                    self.client_id,
                    self.file_id,
                    _describe(exc),
                )
            self.last_error = exc
        finally:
            if self.running.get(i) is asyncio.current_task():
                del self.running[i]

    # -- the checkpoint ----------------------------------------------------------------------

    def checkpoint(self, state: str = "streaming") -> Checkpoint:
        """The checkpoint of what is done now."""
        hashed, hash_state = 0, self.bstates[0]
        b = 0
        while b < self.count and b in self.etags:
            b += 1
            if b in self.bstates:
                hashed, hash_state = min(b * self.part, self.size), self.bstates[b]
        assert self.upload_id is not None
        return Checkpoint(
            client_id=self.client_id,
            file_id=self.file_id,
            meta=dict(self.meta.to_json_obj()),
            key=self.key,
            size=self.size,
            part_size=self.part,
            upload_id=self.upload_id,
            node=self.owner.node,
            generation=self.generation,
            parts={i + 1: etag for i, etag in self.etags.items()},
            hashed=hashed,
            hash_state=hash_state,
            state=state,
        )

    def _checkpoint_soon(self) -> None:
        self._ckpt_dirty = True
        if self._ckpt_task is None and not self.closed:
            self._ckpt_task = asyncio.ensure_future(self._write_checkpoints())

    async def _write_checkpoints(self) -> None:
        try:
            while self._ckpt_dirty and not self.closed and not self.fenced:
                self._ckpt_dirty = False
                try:
                    await self.write_checkpoint()
                except Fenced:
                    self.fence()
                except Exception as exc:
                    log.warning(
                        "s3: checkpoint of %r/%r not written (%s)",
                        self.client_id,
                        self.file_id,
                        _describe(exc),
                    )
                    return  # the next part writes it again
        finally:
            self._ckpt_task = None

    async def write_checkpoint(self, state: str = "streaming") -> None:
        """Write the checkpoint, conditional on our previous write; ``Fenced`` when another
        node or generation wrote it meanwhile."""
        body = self.checkpoint(state).to_bytes()
        for _ in range(3):
            try:
                self.ckpt_etag = await self.owner.run(
                    self.owner.put_checkpoint(self.ckpt_key, body, self.ckpt_etag)
                )
                return
            except Conflict:
                if self.closed:
                    return  # closed here: whoever wrote it holds the transfer now
                found = await self.owner.run(self.owner.get_checkpoint(self.ckpt_key))
                if found is None or not self.owner.ours(found[0], self.generation):
                    raise Fenced() from None
                self.ckpt_etag = found[1]  # our own node's other process: ours is newer
        raise Fenced()

    def fence(self) -> None:
        """Stop: the transfer belongs to somebody else now (nothing in S3 is touched)."""
        if not self.fenced:
            log.warning(
                "s3: %r/%r was taken over by another node: its upload is left to it",
                self.client_id,
                self.file_id,
            )
        self.fenced = True
        self.stop()

    def stop(self) -> None:
        """Cancel the parts in flight and forget the assembler (the transfer is closed)."""
        self.closed = True
        self.asm = None
        for task in self.running.values():
            task.cancel()
        if self._ckpt_task is not None:
            self._ckpt_task.cancel()
        if not self.opened.done():
            self.opened.set_result(False)

    # -- fin ---------------------------------------------------------------------------------

    async def usable(self) -> bool:
        """Whether the fin can complete this stream (once its opening is over): False when
        the upload could not be started (the fin exports the whole file instead). A fenced
        stream counts as usable: its fin must fail, not upload the file again."""
        opened = await asyncio.shield(self.opened)
        return opened or self.fenced

    async def finish(self, metadata: dict[str, str]) -> None:
        """Upload what is left and complete the upload (the caller aborts on failure)."""
        if not await asyncio.shield(self.opened) or self.fenced:
            raise Fenced() if self.fenced else BackendUnavailable()
        for _attempt in range(2):
            if self.running:
                await asyncio.gather(*self.running.values(), return_exceptions=True)
            for i in range(self.count):
                if i not in self.etags and i not in self.running:
                    self._schedule(i)
            if self.running:
                await asyncio.gather(*self.running.values(), return_exceptions=True)
            if len(self.etags) == self.count:
                break
        if self.fenced:
            raise Fenced()
        if len(self.etags) != self.count:
            raise self.last_error or StorageError("s3_error")
        if self._ckpt_task is not None:
            await asyncio.gather(self._ckpt_task, return_exceptions=True)
        await self.write_checkpoint("completing")
        assert self.upload_id is not None
        parts = [{"PartNumber": i + 1, "ETag": self.etags[i]} for i in range(self.count)]
        await self.owner.run(self.owner.complete(self.key, self.upload_id, parts))
        self.closed = True
        await self.owner.run(self.owner.delete_checkpoint(self.ckpt_key, self.ckpt_etag))


def _describe(exc: BaseException) -> str:
    desc = getattr(exc, "description", None)
    if isinstance(desc, str):
        return desc
    return s3_error(exc).description


class PartStreamer:
    """The streams of one exporter (one worker process), keyed by (clientId, fileId)."""

    def __init__(
        self,
        cfg: ExportConfig,
        node: str,
        run: Callable[[Coroutine[Any, Any, Any]], Coroutine[Any, Any, Any]],
        bucket: Callable[[], Any],
    ) -> None:
        self.cfg = cfg
        self.node = node
        self._run = run
        self._bucket = bucket
        self.streams: dict[tuple[str, str], TransferStream] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        #: transfers looked for in the bucket and not found: when (monotonic)
        self._absent: dict[tuple[str, str], float] = {}
        #: where the next pass of :meth:`collect_stale` lists from
        self._stale_marker = ""

    def run(self, coro: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
        return self._run(coro)

    @property
    def client(self) -> Any:
        return self._bucket().client

    def ours(self, ckpt: Checkpoint, generation: int) -> bool:
        """Whether a checkpoint found in the bucket is still ours to continue."""
        return ckpt.node == self.node and ckpt.generation <= generation

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- on the S3 loop ----------------------------------------------------------------------

    async def upload_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        path: Path,
        offset: int,
        end: int,
        hashing: tuple[int, bytes] | None,
    ) -> tuple[str, bytes | None]:
        loop = asyncio.get_running_loop()
        async with self._bucket().slots:
            body, state = await loop.run_in_executor(
                None, part_bytes, path, offset, end - offset, hashing
            )
            answer = await self.client.upload_part(
                Bucket=self.cfg.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            )
            del body
        return str(answer["ETag"]), state

    async def create(self, key: str, metadata: dict[str, str]) -> str:
        extra: dict[str, Any] = {"Metadata": metadata, "ContentType": "application/octet-stream"}
        if self.cfg.acl != "none":
            extra["ACL"] = self.cfg.acl
        answer = await self.client.create_multipart_upload(Bucket=self.cfg.bucket, Key=key, **extra)
        return str(answer["UploadId"])

    async def complete(self, key: str, upload_id: str, parts: list[dict[str, Any]]) -> None:
        await self.client.complete_multipart_upload(
            Bucket=self.cfg.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )

    async def abort(self, key: str, upload_id: str) -> None:
        try:
            await self.client.abort_multipart_upload(
                Bucket=self.cfg.bucket, Key=key, UploadId=upload_id
            )
        except Exception as exc:
            if not is_gone(exc, "NoSuchUpload", "NoSuchKey"):
                raise

    async def get_checkpoint(self, key: str) -> tuple[Checkpoint, str] | None:
        """The checkpoint at ``key`` and its ETag; None when there is none (or it is not one
        of ours: an unreadable object is reported and treated as absent)."""
        try:
            answer = await self.client.get_object(Bucket=self.cfg.bucket, Key=key)
            async with answer["Body"] as body:
                data = await body.read()
        except Exception as exc:
            if is_gone(exc, "NoSuchKey", "NotFound"):
                return None
            raise
        try:
            return Checkpoint.from_bytes(data), str(answer["ETag"])
        except ValueError as exc:
            log.warning("s3: unreadable checkpoint %r (%s): replaced", key, exc)
            return None

    async def put_checkpoint(self, key: str, body: bytes, etag: str | None) -> str:
        """Write a checkpoint: created (``If-None-Match: *``) or replacing ``etag``
        (``If-Match``); ``Conflict`` on 412. Returns the new ETag."""
        cond = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            answer = await self.client.put_object(
                Bucket=self.cfg.bucket,
                Key=key,
                Body=body,
                ContentType="application/json",
                **cond,
            )
        except Exception as exc:
            if precondition_failed(exc):
                raise Conflict() from exc
            raise
        return str(answer["ETag"])

    async def delete_checkpoint(self, key: str, etag: str | None) -> None:
        """Delete a checkpoint (``If-Match`` ``etag`` when known); one that is gone or was
        rewritten by somebody else is left alone."""
        kwargs: dict[str, Any] = {"IfMatch": etag} if etag else {}
        try:
            await self.client.delete_object(Bucket=self.cfg.bucket, Key=key, **kwargs)
        except Exception as exc:
            if not (precondition_failed(exc) or is_gone(exc, "NoSuchKey", "NotFound")):
                raise

    # -- adoption ----------------------------------------------------------------------------

    def adopt(
        self, client_id: str, file_id: str, meta: FileMeta | None
    ) -> asyncio.Future[Adoption | None] | None:
        """Look for a transfer's checkpoint and take it over (store loop; see
        :meth:`ftserver.export.streaming.Streaming.stream_adopt`)."""
        if meta is not None and (meta.size is None or meta.size <= self.cfg.part_size):
            return None  # an init of a file that is never streamed
        now = time.monotonic()
        if len(self._absent) > 4096:
            self._absent = {k: t for k, t in self._absent.items() if now - t < NEGATIVE_TTL}
        key = (client_id, file_id)
        when = self._absent.get(key)
        if when is not None and now - when < NEGATIVE_TTL:
            return None
        fut = asyncio.ensure_future(self._adopt_or_not(client_id, file_id, meta))

        def found(f: asyncio.Future[Adoption | None]) -> None:
            if not f.cancelled() and f.exception() is None and f.result() is None:
                self._absent[key] = time.monotonic()

        fut.add_done_callback(found)
        return fut

    async def _adopt_or_not(
        self, client_id: str, file_id: str, meta: FileMeta | None
    ) -> Adoption | None:
        """:meth:`_adopt`; when S3 cannot answer, the transfer is handled as unknown here, as
        without a cluster (the device resends what this node lacks)."""
        try:
            return await self.run(self._adopt(client_id, file_id, meta))
        except Exception as exc:
            log.warning(
                "s3: no checkpoint lookup for %r/%r (%s): handled as a new transfer",
                client_id,
                file_id,
                _describe(exc),
            )
            return None

    async def _adopt(self, client_id: str, file_id: str, meta: FileMeta | None) -> Adoption | None:
        """On the S3 loop: read the checkpoint; when it is streaming, write it back as ours
        (generation + 1, the parts beyond its hashed prefix dropped) on condition that nobody
        wrote it since we read it; a 412 means somebody else did: look again."""
        key = checkpoint_key(self.cfg.checkpoint_prefix, client_id, file_id)
        deadline = time.monotonic() + COMPLETING_WAIT
        while True:
            found = await self.get_checkpoint(key)
            if found is None:
                return None
            ckpt, etag = found
            if meta is not None and ckpt.meta != meta.to_json_obj():
                return None  # another transfer under these ids: the init replaces it
            if ckpt.state == "completing":
                # the owner completes the upload: wait for the checkpoint to go
                if time.monotonic() > deadline:
                    raise BackendUnavailable()
                await asyncio.sleep(0.25)
                continue
            try:
                adopted_meta = filemeta_from_obj(ckpt.meta)
            except Exception as exc:
                log.warning("s3: checkpoint %r has unusable metadata (%s)", key, exc)
                return None
            part = ckpt.part_size
            hashed = ckpt.hashed
            if hashed != ckpt.size and hashed % part:
                hashed = 0  # not at a part boundary: not a state we can continue from
            hash_state = ftcore.RollingSha256().dumps() if hashed == 0 else ckpt.hash_state
            kept = -(-hashed // part)
            ckpt.parts = {n: e for n, e in ckpt.parts.items() if n <= kept}
            ckpt.hashed, ckpt.hash_state = hashed, hash_state
            previous = (ckpt.node, ckpt.generation)
            ckpt.node = self.node
            ckpt.generation += 1
            try:
                await self.put_checkpoint(key, ckpt.to_bytes(), etag)
            except Conflict:
                continue  # somebody else wrote it meanwhile: look again
            log.info(
                "s3: took over %r/%r from node %r (generation %d): %d of %d bytes in parts",
                client_id,
                file_id,
                previous[0],
                ckpt.generation,
                hashed,
                ckpt.size,
            )
            return Adoption(adopted_meta, hashed, hash_state)

    # -- expired checkpoints ----------------------------------------------------------------

    async def collect_stale(
        self, now: float, ttl_of: Callable[[FileMeta | None], float], pending: Path
    ) -> int:
        """On the S3 loop: one page of checkpoints (the pages rotate over the passes); each
        one not written for longer than its transfer's TTL is deleted, on condition
        ``If-Match`` of the ETag just read, and only the node whose delete succeeded aborts
        its multipart upload: two collectors never both act on one (a transfer abandoned by
        a node that died and whose devices never came back). Returns how many went."""
        prefix = self.cfg.checkpoint_prefix
        kwargs: dict[str, Any] = {"Bucket": self.cfg.bucket, "Prefix": prefix, "MaxKeys": 1000}
        if self._stale_marker:
            kwargs["Marker"] = self._stale_marker
        answer = await self.client.list_objects(**kwargs)
        contents = answer.get("Contents") or []
        self._stale_marker = (
            str(contents[-1]["Key"]) if answer.get("IsTruncated") and contents else ""
        )
        open_here = {stream.ckpt_key for stream in self.streams.values()}
        removed = 0
        for obj in contents:
            key = str(obj["Key"])
            if key.startswith(prefix + "%") or key in open_here:
                continue  # expiry markers; a transfer open here (the store expires it)
            found = await self.get_checkpoint(key)
            if found is None:
                continue
            ckpt, etag = found
            try:
                meta: FileMeta | None = filemeta_from_obj(ckpt.meta)
            except Exception:
                meta = None
            if ckpt.updated_at + ttl_of(meta) > now:
                continue
            try:
                await self.put_checkpoint_delete(key, etag)
            except Conflict:
                continue  # written or collected by somebody else meanwhile
            removed += 1
            log.info(
                "s3: checkpoint of %r/%r expired (node %r, idle %.0fs): upload aborted",
                ckpt.client_id,
                ckpt.file_id,
                ckpt.node,
                now - ckpt.updated_at,
            )
            try:
                await self.abort(ckpt.key, ckpt.upload_id)
            except Exception as exc:
                log.warning("s3: cannot abort the upload of %r (%s)", ckpt.key, _describe(exc))
                await asyncio.get_running_loop().run_in_executor(
                    None, remember_abort, pending, self.cfg.bucket, ckpt.key, ckpt.upload_id
                )
        return removed

    async def put_checkpoint_delete(self, key: str, etag: str) -> None:
        """Delete a checkpoint on condition ``If-Match``; ``Conflict`` on 412 (or when it is
        gone already: somebody else collected it)."""
        try:
            await self.client.delete_object(Bucket=self.cfg.bucket, Key=key, IfMatch=etag)
        except Exception as exc:
            if precondition_failed(exc) or is_gone(exc, "NoSuchKey", "NotFound"):
                raise Conflict() from exc
            raise

    # -- the store's hooks (store loop) ------------------------------------------------------

    def open(
        self,
        client_id: str,
        file_id: str,
        meta: FileMeta,
        data_path: Path,
        asm: ftcore.Assembler,
        metadata: Callable[[], dict[str, str]],
    ) -> None:
        key = (client_id, file_id)
        if key in self.streams or meta.size is None or meta.size <= self.cfg.part_size:
            return
        part = part_size_for(meta.size, self.cfg.part_size)
        stream = TransferStream(self, client_id, file_id, meta, data_path, asm, part)
        self.streams[key] = stream
        # the assembler drops the pages behind its hash a chunk later; the parts are read
        # back after they complete: they are dropped once uploaded instead (part_bytes)
        asm.recycle = False
        self.spawn(self._open(stream, metadata()))

    async def _open(self, stream: TransferStream, metadata: dict[str, str]) -> None:
        """Continue the checkpoint of this transfer, or start a new upload and checkpoint."""
        try:
            for _attempt in range(3):
                if await self._continue_or_start(stream, metadata):
                    if not stream.opened.done():
                        stream.opened.set_result(True)
                    stream.schedule_complete()
                    return
            raise StorageError("s3_checkpoint_conflict")
        except Exception as exc:
            if isinstance(exc, Fenced):
                stream.fenced = True
            stream.last_error = exc
            log.warning(
                "s3: cannot start streaming %r/%r (%s): exported at fin",
                stream.client_id,
                stream.file_id,
                _describe(exc),
            )
            if not stream.opened.done():
                stream.opened.set_result(False)
            if stream.upload_id is not None and not stream.fenced:
                self.spawn(self._drop(stream))

    async def _continue_or_start(self, stream: TransferStream, metadata: dict[str, str]) -> bool:
        """One attempt of :meth:`_open`; False when another process wrote the checkpoint
        between our reading and our writing it (the caller looks again)."""
        found = await self.run(self.get_checkpoint(stream.ckpt_key))
        expect = None
        if found is not None:
            ckpt, etag = found
            if (
                ckpt.key == stream.key
                and ckpt.size == stream.size
                and ckpt.part_size == stream.part
                and ckpt.meta == stream.meta.to_json_obj()
                and ckpt.state == "streaming"
            ):
                stream.upload_id = ckpt.upload_id
                stream.ckpt_etag = etag
                stream.generation = ckpt.generation
                if ckpt.node != self.node:
                    stream.generation += 1  # taken over from another node
                for number, part_etag in ckpt.parts.items():
                    i = number - 1
                    if i not in stream.version and 0 <= i < stream.count:
                        stream.etags[i] = part_etag
                if ckpt.hashed and ckpt.hashed % stream.part == 0:
                    stream.bstates[ckpt.hashed // stream.part] = ckpt.hash_state
                await stream.write_checkpoint()
                log.info(
                    "s3: %r/%r continues its upload (%d of %d parts done, generation %d)",
                    stream.client_id,
                    stream.file_id,
                    len(stream.etags),
                    stream.count,
                    stream.generation,
                )
                return True
            # another transfer under the same ids (an older one, or one with other
            # metadata): its checkpoint is replaced, so its upload goes
            with contextlib.suppress(Exception):
                await self.run(self.abort(ckpt.key, ckpt.upload_id))
            expect = etag
        stream.upload_id = await self.run(self.create(stream.key, metadata))
        body = stream.checkpoint().to_bytes()
        try:
            stream.ckpt_etag = await self.run(self.put_checkpoint(stream.ckpt_key, body, expect))
        except Conflict:
            # another process of this node started it meanwhile: ours goes, theirs is used
            upload_id, stream.upload_id = stream.upload_id, None
            await self._abort_or_remember(stream.key, upload_id, None)
            return False
        return True

    def wrote(
        self, client_id: str, file_id: str, start: int, end: int, verified: bool, reset: bool
    ) -> None:
        stream = self.streams.get((client_id, file_id))
        if stream is not None:
            stream.wrote(start, end, verified, reset)

    def close(self, client_id: str, file_id: str) -> None:
        stream = self.streams.pop((client_id, file_id), None)
        if stream is not None:
            dirty = stream._ckpt_dirty or bool(stream.running)
            stream.stop()
            if dirty and stream.upload_id is not None and not stream.fenced:
                self.spawn(self._last_checkpoint(stream))

    async def _last_checkpoint(self, stream: TransferStream) -> None:
        with contextlib.suppress(Exception):
            await stream.write_checkpoint()

    def discard(self, client_id: str, file_id: str, pending: Path) -> None:
        stream = self.streams.pop((client_id, file_id), None)
        if stream is not None:
            stream.stop()
            if stream.fenced:
                return
            self.spawn(self._drop(stream, pending))
        else:
            self.spawn(self.drop_stored(client_id, file_id, pending))

    async def _drop(self, stream: TransferStream, pending: Path | None = None) -> None:
        """Abort a stream's upload and delete its checkpoint (nothing is left behind)."""
        await asyncio.gather(*stream.running.values(), return_exceptions=True)
        if stream.upload_id is not None:
            await self._abort_or_remember(stream.key, stream.upload_id, pending)
        with contextlib.suppress(Exception):
            await self.run(self.delete_checkpoint(stream.ckpt_key, stream.ckpt_etag))

    async def drop_stored(self, client_id: str, file_id: str, pending: Path) -> None:
        """Abort the upload of a transfer's checkpoint and delete it, when it is this node's
        (a transfer not open here that was aborted or expired, or one exported whole)."""
        key = checkpoint_key(self.cfg.checkpoint_prefix, client_id, file_id)
        try:
            found = await self.run(self.get_checkpoint(key))
        except Exception as exc:
            log.warning("s3: checkpoint %r not read (%s)", key, _describe(exc))
            return
        if found is None:
            return
        ckpt, etag = found
        if ckpt.node != self.node:
            return  # another node's (it collects its own)
        await self._abort_or_remember(ckpt.key, ckpt.upload_id, pending)
        with contextlib.suppress(Exception):
            await self.run(self.delete_checkpoint(key, etag))

    async def _abort_or_remember(self, key: str, upload_id: str, pending: Path | None) -> None:
        try:
            await self.run(self.abort(key, upload_id))
            log.info("s3: aborted the streamed upload of %r", key)
        except Exception as exc:
            log.warning("s3: cannot abort the upload of %r (%s)", key, _describe(exc))
            if pending is not None:
                await asyncio.get_running_loop().run_in_executor(
                    None, remember_abort, pending, self.cfg.bucket, key, upload_id
                )

    async def end(self, stream: TransferStream, pending: Path) -> None:
        """Forget a stream whose fin failed or could not use it: abort and delete."""
        self.streams.pop((stream.client_id, stream.file_id), None)
        stream.stop()
        if not stream.fenced:
            await self._drop(stream, pending)

    async def close_all(self) -> None:
        """The server stops: streams stay in the bucket; wait for the last writes."""
        for key in list(self.streams):
            self.close(*key)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

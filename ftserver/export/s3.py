"""The S3 exporter: finished files go to an S3-compatible bucket (docs/protocol.md §6).

Object key ``<esc(clientId)>/<esc(fileId)>/<name>`` and user metadata
``x-amz-meta-clientid``, ``-fileid``, ``-filemeta``, ``-filemeta-vsn`` exactly as EMQX writes
them (:func:`ftserver.export.layout.s3_key`, :func:`~ftserver.export.layout.s3_metadata`),
plus ``x-amz-meta-checksum``: the verified SHA-256 of the file, uppercase hex, so that a
listing can show it as a local export's manifest does. A streamed upload's metadata is fixed
before the file is complete: it has ``checksum`` only when the init gave one (the fin checks
the file against it), else the verified SHA-256 is its tag ``sha256``, set at fin.

How a file is uploaded
    A file whose init gives a size of more than one part is streamed: its parts are uploaded
    while it arrives and the fin completes the upload (:mod:`ftserver.export.s3stream`; its
    state in the bucket: :mod:`ftserver.export.checkpoint`). Any other file is uploaded at
    fin: the staging file (verified, truncated and flushed by the store) is read in place;
    it is never loaded whole. A file of at most ``export.part_size`` bytes goes in one PUT; a
    larger one in a multipart upload whose parts (``part_size`` each, raised when the file
    would need more than 10 000 parts) are read with ``pread`` in a thread and uploaded in
    parallel. Either way a process uploads at most ``export.upload_concurrency`` parts at a
    time (:attr:`S3Bucket.slots`), so at most that many are in memory. All S3 traffic runs on
    an event loop of its own in one thread per process (:class:`_IoLoop`): request signing
    hashes every part (SigV4 over plain HTTP signs the payload) and that work must not stall
    the MQTT loop.

Expiry
    An export with ``expire_at`` leaves a marker in the bucket that the collector finds
    (:mod:`ftserver.export.s3expiry`).

How failures end
    Any failure (an S3 error, a lost connection, a local read error, cancellation) aborts
    the multipart upload before the error is raised. When the abort itself cannot reach S3
    (the server is down), the upload is written down under ``<index>/.pending-aborts/`` and
    aborted at the start of the next export; a multipart export also aborts any upload still
    open for its own key (left by a crash). The error becomes a
    :class:`~ftserver.errors.StorageError` whose description says what happened
    (``s3_no_such_bucket``, ``s3_access_denied``, ``s3_signature_does_not_match``,
    ``s3_unavailable``, ``s3_no_credentials``, ...): the fin's PUBACK and response document
    carry it, and the transfer stays staged so that a re-sent fin retries.

The local index
    :meth:`S3Exporter.lookup` runs on the per-command path and must not wait for the
    network, so every finished export is also recorded on local disk under
    ``<data_dir>/exports-s3/``, in the local exporter's layout
    (``<B1>/<B2>/<B3>/<esc(clientId)>/<esc(fileId)>/<name>.MANIFEST.json``) but without the
    data: the manifest (``["filemeta", 1, {...}]``) carries the metadata, the checksum, the
    size and where the object went. It is written after the object is complete, so a crash
    in between leaves the transfer staged and a re-sent fin uploads it again (the same key,
    so the object is simply replaced). Deleting a transfer's files through the HTTP API
    removes the objects and the index entry together.

What the HTTP API sees
    Listings come from the bucket itself (ListObjects, then a HEAD per object for its
    metadata), downloads are redirects to presigned URLs. A failed request becomes a
    :class:`~ftserver.export.base.BackendError` (HTTP 502) with the same descriptions.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.header
import errno
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar

import ftcore
from ftserver.config import ExportConfig
from ftserver.errors import FtError, StorageError
from ftserver.export import tree
from ftserver.export.base import (
    INIT_CHECKSUM_KEY,
    BackendError,
    ExportedFile,
    ExportInfo,
    FilePage,
    Key,
    Redirect,
)
from ftserver.export.checkpoint import Checkpoint, expiry_key
from ftserver.export.collector import delete_export
from ftserver.export.layout import (
    MANIFEST_SUFFIX,
    manifest_bytes,
    parse_manifest,
    s3_key,
    s3_metadata,
)
from ftserver.export.s3expiry import collect_expired_s3
from ftserver.export.s3stream import Fenced, PartStreamer, TransferStream
from ftserver.export.s3util import (
    is_gone,
    part_size_for,
    remember_abort,
    s3_error,
)
from ftserver.export.streaming import ADOPTED, Adoption
from ftserver.meta import FileMeta, JsonValue, check_name, filemeta_from_obj
from ftserver.names import esc, unesc
from ftserver.storage.journal import fsync_dir

__all__ = [
    "INDEX_DIR",
    "S3Bucket",
    "S3Exporter",
    "S3Object",
    "decode_header_value",
    "encode_header_value",
    "index_root",
    "parse_key",
    "part_size_for",
    "s3_error",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

#: the local index of S3 exports, below the data directory
INDEX_DIR: Final = "exports-s3"
#: uploads whose abort could not reach S3, retried at the next export (below the index)
PENDING_ABORTS: Final = ".pending-aborts"
#: S3's largest page of ListObjects
LIST_PAGE: Final = 1000
#: HEAD requests in flight while a listing reads the objects' metadata
HEAD_CONCURRENCY: Final = 16
#: the verified SHA-256 (uppercase hex), ftserver's own key beside EMQX's four
CHECKSUM_META: Final = "checksum"
#: the same, as the object tag of a streamed upload (known only after its metadata was set)
CHECKSUM_TAG: Final = "sha256"
#: manifest keys of the local index (beside the local exporter's extras)
_BUCKET_KEY, _KEY_KEY, _SIZE_KEY = "s3_bucket", "s3_key", "s3_size"


def index_root(data_dir: Path) -> Path:
    """The local index of S3 exports of a data directory."""
    return data_dir / INDEX_DIR


# --------------------------------------------------------------------------------------------
# errors


# --------------------------------------------------------------------------------------------
# metadata header values

_ENCODED_WORD = "=?"


def encode_header_value(value: str) -> str:
    """A metadata value as it can travel in an HTTP header.

    Printable ASCII without surrounding spaces goes as it is (so ``x-amz-meta-clientid`` is
    the raw clientId, as EMQX sends it, in the common case). Anything else (non-ASCII,
    control characters, leading or trailing spaces that HTTP would strip, or text that looks
    like an encoded word) becomes one RFC 2047 encoded word, ``=?UTF-8?B?<base64>?=``: the
    form S3 documents for non-ASCII metadata (AWS decodes it on the way in and stores the
    text); botocore refuses raw non-ASCII metadata.
    """
    if (
        value.isascii()
        and value.isprintable()
        and value == value.strip(" ")
        and _ENCODED_WORD not in value
    ):
        return value
    raw = value.encode("utf-8", "surrogatepass")
    return f"=?UTF-8?B?{base64.b64encode(raw).decode('ascii')}?="


def decode_header_value(value: str) -> str:
    """The text of a metadata value written by :func:`encode_header_value` (or returned by
    AWS in RFC 2047 form); any other value is returned as it is."""
    if _ENCODED_WORD not in value:
        return value
    try:
        parts = email.header.decode_header(value)
    except (ValueError, LookupError):
        return value
    out: list[str] = []
    for chunk, charset in parts:
        if isinstance(chunk, bytes):
            try:
                out.append(chunk.decode(charset or "ascii", "surrogatepass"))
            except (UnicodeDecodeError, LookupError):
                return value
        else:
            out.append(chunk)
    return "".join(out)


def object_metadata(client_id: str, file_id: str, meta: FileMeta, checksum: str) -> dict[str, str]:
    """The user metadata of an export as botocore takes it (names without ``x-amz-meta-``)."""
    headers = s3_metadata(client_id, file_id, meta)
    out = {
        name.removeprefix("x-amz-meta-"): encode_header_value(value)
        for name, value in headers.items()
    }
    out[CHECKSUM_META] = checksum.upper()
    return out


# --------------------------------------------------------------------------------------------
# the client


def _read_range(fd: int, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` of an open file (pread, continued on short reads)."""
    chunks: list[bytes] = []
    got = 0
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            raise OSError(errno.EIO, "staging file shorter than the export")
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


@dataclass(frozen=True, slots=True)
class S3Object:
    """One exported object, as a listing shows it."""

    key: str
    client_id: str
    file_id: str
    name: str
    size: int
    last_modified: float
    #: the manifest-like object (init metadata, checksum, clientid, fileid, exported_at);
    #: empty when the object has no readable ``x-amz-meta-filemeta``
    metadata: dict[str, JsonValue]


def parse_key(key: str) -> tuple[str, str, str] | None:
    """(clientId, fileId, name) of an object key in the export layout, else None."""
    parts = key.split("/")
    if len(parts) != 3 or not all(parts):
        return None
    try:
        client_id, file_id = unesc(parts[0]), unesc(parts[1])
        check_name(parts[2])
    except (ValueError, FtError):
        return None
    return client_id, file_id, parts[2]


def _manifest_of(head: dict[str, Any], last_modified: float) -> dict[str, JsonValue]:
    """A local-manifest-shaped object from an object's user metadata."""
    md = {str(k).lower(): str(v) for k, v in (head.get("Metadata") or {}).items()}
    try:
        obj = json.loads(md["filemeta"])
    except (KeyError, ValueError, RecursionError):
        return {}
    if not isinstance(obj, dict):
        return {}
    manifest: dict[str, JsonValue] = obj
    checksum = md.get(CHECKSUM_META)
    if checksum:
        init = manifest.get("checksum")
        manifest["checksum"] = checksum.upper()
        if init is not None:
            manifest[INIT_CHECKSUM_KEY] = init
    for header, key in (("clientid", "clientid"), ("fileid", "fileid")):
        if header in md:
            manifest[key] = decode_header_value(md[header])
    manifest["exported_at"] = int(last_modified)
    return manifest


def _timestamp(value: object) -> float:
    return value.timestamp() if isinstance(value, datetime) else time.time()


class S3Bucket:
    """The configured bucket, through one aiobotocore client bound to one event loop.

    The exporter runs it on a loop of its own (:class:`_IoLoop`), for uploads and for the
    HTTP API alike. :meth:`open` must run on that loop before any other call; :meth:`close`
    releases the connections.
    """

    def __init__(self, cfg: ExportConfig) -> None:
        self.cfg = cfg
        self.bucket = cfg.bucket
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._slots: asyncio.Semaphore | None = None

    @property
    def slots(self) -> asyncio.Semaphore:
        """The part uploads of this process (``export.upload_concurrency`` at a time, each
        holding its part in memory): streamed parts and whole-file exports share them."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.cfg.upload_concurrency)
        return self._slots

    async def open(self) -> None:
        """Create the client (loads the service model; no request is sent)."""
        if self._client is not None:
            return
        from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
        from aiobotocore.session import get_session  # type: ignore[import-untyped]

        cfg = self.cfg
        session = get_session()
        region = cfg.region or session.get_config_variable("region") or "us-east-1"
        config = AioConfig(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": cfg.addressing_style},
            connect_timeout=cfg.request_timeout,
            read_timeout=cfg.request_timeout,
            retries={"total_max_attempts": cfg.retries + 1, "mode": "standard"},
            max_pool_connections=max(10, 2 * cfg.upload_concurrency),
            # plain checksums only: several S3-compatible servers refuse the newer defaults
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_extra="ftserver",
        )
        kwargs: dict[str, Any] = {"region_name": region, "config": config}
        if cfg.endpoint:
            kwargs["endpoint_url"] = cfg.endpoint
        if cfg.access_key_id:
            kwargs["aws_access_key_id"] = cfg.access_key_id
            kwargs["aws_secret_access_key"] = cfg.secret_access_key
        if not cfg.tls_verify:
            kwargs["verify"] = False
        elif cfg.ca_file:
            kwargs["verify"] = cfg.ca_file
        stack = contextlib.AsyncExitStack()
        self._client = await stack.enter_async_context(session.create_client("s3", **kwargs))
        self._stack = stack

    async def close(self) -> None:
        """Close the client and its connections."""
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    @property
    def client(self) -> Any:
        """The aiobotocore S3 client (:meth:`open` first)."""
        if self._client is None:
            raise RuntimeError("S3Bucket used before open()")
        return self._client

    # -- upload ------------------------------------------------------------------------------

    async def put_file(
        self, key: str, path: Path, size: int, metadata: dict[str, str], pending: Path
    ) -> None:
        """Upload ``size`` bytes of the file at ``path`` as object ``key``.

        One PUT up to ``part_size``, else a multipart upload with parts in parallel. A
        multipart upload that fails is aborted before the error propagates; when that abort
        cannot reach S3 it is recorded under ``pending`` for a later attempt.
        """
        extra: dict[str, Any] = {"Metadata": metadata, "ContentType": "application/octet-stream"}
        if self.cfg.acl != "none":
            extra["ACL"] = self.cfg.acl
        loop = asyncio.get_running_loop()
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if size <= self.cfg.part_size:
                async with self.slots:
                    body = await loop.run_in_executor(None, _read_range, fd, 0, size)
                    await self.client.put_object(Bucket=self.bucket, Key=key, Body=body, **extra)
                return
            await self.abort_stale(key)
            created = await self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, **extra
            )
            upload_id = str(created["UploadId"])
            try:
                parts = await self._upload_parts(key, upload_id, fd, size)
                await self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
            except BaseException:
                await asyncio.shield(self._abort_or_remember(key, upload_id, pending))
                raise
        finally:
            os.close(fd)

    async def _upload_parts(
        self, key: str, upload_id: str, fd: int, size: int
    ) -> list[dict[str, Any]]:
        part = part_size_for(size, self.cfg.part_size)
        count = -(-size // part)
        etags: list[str] = [""] * count
        numbers = iter(range(1, count + 1))  # shared: each uploader takes the next part
        loop = asyncio.get_running_loop()

        async def uploader() -> None:
            for number in numbers:
                offset = (number - 1) * part
                length = min(part, size - offset)
                async with self.slots:
                    body = await loop.run_in_executor(None, _read_range, fd, offset, length)
                    answer = await self.client.upload_part(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=body,
                    )
                    del body
                etags[number - 1] = str(answer["ETag"])

        tasks = [
            asyncio.ensure_future(uploader())
            for _ in range(min(self.cfg.upload_concurrency, count))
        ]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [{"PartNumber": i + 1, "ETag": etag} for i, etag in enumerate(etags)]

    async def abort(self, key: str, upload_id: str) -> None:
        """Abort one multipart upload (one that is already gone counts as aborted)."""
        try:
            await self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            )
        except Exception as exc:
            if not is_gone(exc, "NoSuchUpload", "NoSuchKey"):
                raise

    async def _abort_or_remember(self, key: str, upload_id: str, pending: Path) -> None:
        try:
            await self.abort(key, upload_id)
            log.info("s3: aborted multipart upload of %r", key)
        except Exception as exc:
            log.warning(
                "s3: cannot abort the multipart upload of %r (%s): retried at the next export",
                key,
                s3_error(exc).description,
            )
            await asyncio.get_running_loop().run_in_executor(
                None, remember_abort, pending, self.bucket, key, upload_id
            )

    async def abort_stale(self, key: str) -> None:
        """Abort every multipart upload still open for exactly ``key`` (left by a crash or
        an abort that failed); a server that does not allow listing them is skipped."""
        try:
            answer = await self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
        except Exception as exc:
            log.debug("s3: cannot list open uploads of %r: %s", key, exc)
            return
        for upload in answer.get("Uploads") or []:
            if upload.get("Key") == key:
                with contextlib.suppress(Exception):
                    await self.abort(key, str(upload["UploadId"]))
                    log.info("s3: aborted a stale multipart upload of %r", key)

    async def retry_pending_aborts(self, pending: Path) -> None:
        """Abort the uploads recorded by earlier failed aborts (of this bucket)."""
        loop = asyncio.get_running_loop()
        records = await loop.run_in_executor(None, _pending_records, pending)
        for path, (bucket, key, upload_id) in records:
            if bucket != self.bucket:
                continue
            try:
                await self.abort(key, upload_id)
            except Exception as exc:
                log.debug("s3: pending abort of %r still fails: %s", key, exc)
                continue
            log.info("s3: aborted the multipart upload of %r left open earlier", key)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def checksum_tag(self, key: str) -> str | None:
        """The verified SHA-256 of a streamed upload, kept in its tag ``sha256`` (the object's
        metadata was fixed when its multipart upload began, before the checksum was known)."""
        try:
            answer = await self.client.get_object_tagging(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if is_gone(exc, "NoSuchKey", "NotFound", "NoSuchTagSet"):
                return None
            raise
        for tag in answer.get("TagSet") or []:
            if tag.get("Key") == CHECKSUM_TAG:
                return str(tag.get("Value"))
        return None

    async def set_checksum_tag(self, key: str, checksum: str) -> None:
        await self.client.put_object_tagging(
            Bucket=self.bucket,
            Key=key,
            Tagging={"TagSet": [{"Key": CHECKSUM_TAG, "Value": checksum.upper()}]},
        )

    async def put_marker(self, key: str) -> None:
        """An empty object (an expiry marker)."""
        await self.client.put_object(Bucket=self.bucket, Key=key, Body=b"")

    async def head(self, key: str) -> dict[str, Any] | None:
        """The HEAD answer of an object, or None when there is no such object."""
        try:
            answer: dict[str, Any] = await self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if is_gone(exc, "NoSuchKey", "NotFound"):
                return None
            raise
        return answer

    # -- listing -----------------------------------------------------------------------------

    async def list_keys(self, after: str, limit: int, prefix: str = "") -> tuple[list[Any], bool]:
        """Up to ``limit`` objects in the export layout whose key sorts after ``after``, in
        key order, and whether more follow (one object is looked ahead).

        The S3 marker is ``after``; pages of up to 1000 keys are fetched until ``limit`` + 1
        objects in the layout are found or the bucket ends. Objects outside the layout
        (other tools' files) are skipped.
        """
        found: list[Any] = []
        marker = after
        while True:
            want = min(LIST_PAGE, limit + 1 - len(found))
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "MaxKeys": want}
            if marker:
                kwargs["Marker"] = marker
            if prefix:
                kwargs["Prefix"] = prefix
            answer = await self.client.list_objects(**kwargs)
            contents = answer.get("Contents") or []
            hidden = self.cfg.checkpoint_prefix
            for obj in contents:
                name = str(obj["Key"])
                if parse_key(name) is not None and not name.startswith(hidden):
                    found.append(obj)
            if len(found) > limit:
                return found[:limit], True
            if not answer.get("IsTruncated") or not contents:
                return found, False
            marker = str(contents[-1]["Key"])

    async def describe(self, objects: list[Any]) -> list[S3Object]:
        """The listing items of ``objects`` (ListObjects entries), reading each one's
        metadata with a HEAD (:data:`HEAD_CONCURRENCY` at a time). Objects deleted
        meanwhile are left out."""
        sem = asyncio.Semaphore(HEAD_CONCURRENCY)

        async def one(obj: Any) -> S3Object | None:
            key = str(obj["Key"])
            parsed = parse_key(key)
            if parsed is None:
                return None
            async with sem:
                head = await self.head(key)
                if head is not None and CHECKSUM_META not in (head.get("Metadata") or {}):
                    checksum = await self.checksum_tag(key)
                    if checksum:  # a streamed upload: its checksum came after its metadata
                        head.setdefault("Metadata", {})[CHECKSUM_META] = checksum
            if head is None:
                return None
            modified = _timestamp(head.get("LastModified") or obj.get("LastModified"))
            return S3Object(
                key=key,
                client_id=parsed[0],
                file_id=parsed[1],
                name=parsed[2],
                size=int(head.get("ContentLength", obj.get("Size", 0))),
                last_modified=modified,
                metadata=_manifest_of(head, modified),
            )

        items = await asyncio.gather(*(one(o) for o in objects))
        return [i for i in items if i is not None]

    async def transfer_objects(self, client_id: str, file_id: str) -> list[S3Object]:
        """The objects of one transfer: the exact prefix ``<esc(cid)>/<esc(fid)>/`` (so
        fileId ``f1`` never matches ``f10``), sorted by name."""
        prefix = f"{esc(client_id)}/{esc(file_id)}/"
        objects, _more = await self.list_keys("", 100, prefix)
        return await self.describe(objects)

    async def presign(self, key: str) -> str:
        """A presigned GET URL of ``key``, valid for ``export.presign_expiry``."""
        url = await self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=self.cfg.presign_expiry,
        )
        return str(url)

    async def delete_transfer(self, client_id: str, file_id: str) -> int:
        """Delete the objects of one transfer; returns how many there were."""
        prefix = f"{esc(client_id)}/{esc(file_id)}/"
        objects, _more = await self.list_keys("", 1000, prefix)
        for obj in objects:
            await self.client.delete_object(Bucket=self.bucket, Key=str(obj["Key"]))
        return len(objects)


def _pending_records(pending: Path) -> list[tuple[Path, tuple[str, str, str]]]:
    out: list[tuple[Path, tuple[str, str, str]]] = []
    try:
        names = sorted(os.listdir(pending))
    except FileNotFoundError:
        return out
    for name in names:
        if not name.endswith(".json"):
            continue
        path = pending / name
        try:
            doc = json.loads(path.read_text())
            out.append((path, (str(doc["bucket"]), str(doc["key"]), str(doc["upload_id"]))))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


# --------------------------------------------------------------------------------------------
# the exporter


def _orphan_write_failed(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The S3 loop's handler of errors nobody retrieved. aiohttp (3.14) writes a request
    body in a task of its own; with ``Expect: 100-continue`` (botocore's, for parts) a
    connection that closes as the headers go out makes that task fail outside its own error
    handling, and nobody awaits it: asyncio would log a traceback for a failure the request
    itself already reports (``s3_unavailable``). That one is logged at debug level; anything
    else goes to the default handler."""
    task = context.get("future")
    exc = context.get("exception")
    if isinstance(task, asyncio.Task) and isinstance(exc, ConnectionError):
        name = getattr(task.get_coro(), "__qualname__", "")
        if name == "ClientRequest.write_bytes":
            log.debug("s3: a request body was cut with its connection: %s", exc)
            return
    loop.default_exception_handler(context)


class _IoLoop:
    """An event loop in a thread of its own, with the bucket's client on it."""

    def __init__(self, cfg: ExportConfig) -> None:
        self.bucket = S3Bucket(cfg)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                import uvloop

                loop = uvloop.new_event_loop()
                loop.set_exception_handler(_orphan_write_failed)
                thread = threading.Thread(target=loop.run_forever, name="ftserver-s3", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the S3 loop (client opened first) and wait for it from the
        caller's loop; cancelling the caller cancels it there."""
        loop = self._start()

        async def with_client() -> T:
            await self.bucket.open()
            return await coro

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(with_client(), loop))

    def close(self) -> None:
        """Close the client, stop the loop and join its thread (blocking)."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self.bucket.close(), loop)
        with contextlib.suppress(Exception):
            fut.result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()


class S3Exporter:
    """Exports to an S3 bucket (:class:`~ftserver.export.base.Exporter`), with a local
    index of finished exports under ``root`` that answers :meth:`lookup`."""

    #: a listing position is an object key (the S3 marker)
    cursor_kind: ClassVar[str] = "s"
    cursor_length: ClassVar[int] = 1

    def __init__(self, cfg: ExportConfig, root: Path, node: str = "") -> None:
        self.cfg = cfg
        self.root = root
        self._io = _IoLoop(cfg)
        self.node = node or socket.gethostname()
        #: a transfer's TTL after its last activity (the store sets its own clamps here)
        self.stream_ttl: Callable[[FileMeta | None], float] = _default_ttl
        #: the files being uploaded while they arrive (:mod:`ftserver.export.s3stream`)
        self.streamer = PartStreamer(cfg, self.node, self._io.run, lambda: self._io.bucket)

    # -- streaming (:class:`ftserver.export.s3stream.Streaming`) -----------------------------

    def stream_open(
        self, client_id: str, file_id: str, meta: FileMeta, data_path: Path, asm: ftcore.Assembler
    ) -> None:
        def metadata() -> dict[str, str]:
            out = object_metadata(client_id, file_id, meta, "")
            del out[CHECKSUM_META]
            if meta.checksum is not None:  # the fin must match it: it is the verified one
                out[CHECKSUM_META] = meta.checksum.upper()
            return out

        self.streamer.open(client_id, file_id, meta, data_path, asm, metadata)

    def stream_wrote(
        self, client_id: str, file_id: str, start: int, end: int, verified: bool, reset: bool
    ) -> None:
        self.streamer.wrote(client_id, file_id, start, end, verified, reset)

    def stream_close(self, client_id: str, file_id: str) -> None:
        self.streamer.close(client_id, file_id)

    def stream_discard(self, client_id: str, file_id: str) -> None:
        self.streamer.discard(client_id, file_id, self.pending_dir)

    def stream_adopt(
        self, client_id: str, file_id: str, meta: FileMeta | None
    ) -> asyncio.Future[Adoption | None] | None:
        return self.streamer.adopt(client_id, file_id, meta)

    @property
    def pending_dir(self) -> Path:
        return self.root / PENDING_ABORTS

    def transfer_dir(self, client_id: str, file_id: str) -> Path:
        """The index directory of a transfer (the local exporter's layout)."""
        return tree.transfer_dir(self.root, client_id, file_id)

    def lookup(self, client_id: str, file_id: str) -> ExportInfo | None:
        """The recorded export of this transfer, from the local index only."""
        d = self.transfer_dir(client_id, file_id)
        try:
            names = sorted(os.listdir(d))
        except (FileNotFoundError, NotADirectoryError):
            return None
        for entry in names:
            if not entry.endswith(MANIFEST_SUFFIX) or len(entry) == len(MANIFEST_SUFFIX):
                continue
            try:
                obj = parse_manifest((d / entry).read_bytes())
                checksum = obj.pop("checksum")
                size = obj.pop(_SIZE_KEY)
                for key in ("clientid", "fileid", "exported_at", _BUCKET_KEY, _KEY_KEY):
                    obj.pop(key, None)
                init_checksum = obj.pop(INIT_CHECKSUM_KEY, None)
                if init_checksum is not None:
                    obj["checksum"] = init_checksum
                meta = filemeta_from_obj(obj)
            except (OSError, ValueError, KeyError, TypeError, FtError):
                continue
            if not isinstance(checksum, str) or type(size) is not int:
                continue
            return ExportInfo(client_id, file_id, meta, size, checksum.upper(), d / entry)
        return None

    async def export(
        self, client_id: str, file_id: str, meta: FileMeta, data_path: Path, checksum: str
    ) -> ExportInfo:
        """Upload the staging file, then record the export in the local index."""
        loop = asyncio.get_running_loop()
        size = (await loop.run_in_executor(None, os.stat, data_path)).st_size
        key = s3_key(client_id, file_id, meta.name)
        metadata = object_metadata(client_id, file_id, meta, checksum)
        started = time.perf_counter()
        stream = self.streamer.streams.get((client_id, file_id))
        # taken over from another node: the staging file lacks the bytes already in parts,
        # so only the stream can finish it (never a whole-file upload)
        adopted = await loop.run_in_executor(None, os.path.exists, data_path.parent / ADOPTED)
        try:
            if adopted and (stream is None or stream.size != size or not await stream.usable()):
                raise Fenced()
            if stream is not None and (
                stream.size != size or stream.key != key or not await stream.usable()
            ):
                # not the file it streamed, or streaming never started: the whole file now
                await self.streamer.end(stream, self.pending_dir)
                stream = None
            if stream is not None:
                await self._finish_stream(stream, metadata, checksum, keep=adopted)
            else:
                if size > self.cfg.part_size:  # what a stream that failed may have left
                    await self.streamer.drop_stored(client_id, file_id, self.pending_dir)
                await self._io.run(self._upload(key, data_path, size, metadata))
            if meta.expire_at is not None:
                marker = expiry_key(self.cfg.checkpoint_prefix, meta.expire_at, key)
                await self._io.run(self._io.bucket.put_marker(marker))
        except Exception as exc:
            err = s3_error(exc)
            log.warning(
                "s3: export of %r/%r to s3://%s/%s failed: %s (%s)",
                client_id,
                file_id,
                self.cfg.bucket,
                key,
                err.description,
                _brief(exc),
            )
            raise err from exc
        log.info(
            "s3: exported %r/%r to s3://%s/%s (%d bytes, %.3fs)",
            client_id,
            file_id,
            self.cfg.bucket,
            key,
            size,
            time.perf_counter() - started,
        )
        path = await loop.run_in_executor(
            None, self._record, client_id, file_id, meta, checksum, key, size
        )
        return ExportInfo(
            client_id, file_id, meta, size, checksum, path, f"s3://{self.cfg.bucket}/{key}"
        )

    async def _finish_stream(
        self, stream: TransferStream, metadata: dict[str, str], checksum: str, *, keep: bool
    ) -> None:
        """The fin of a streamed upload: the last part, the completion, the checksum. When
        it fails the upload is aborted (the fin sent again uploads the whole file), except
        with ``keep`` (an adopted transfer, which has no whole file here: the next fin tries
        the stream again) and when fenced (it is somebody else's)."""
        try:
            await stream.finish(metadata)
        except BaseException:
            if not keep or stream.fenced:
                await asyncio.shield(self.streamer.end(stream, self.pending_dir))
            raise
        self.streamer.streams.pop((stream.client_id, stream.file_id), None)
        bucket = self._io.bucket

        async def settle() -> None:
            if stream.meta.checksum is None:
                await bucket.set_checksum_tag(stream.key, checksum)
            head = await bucket.head(stream.key)
            got = None if head is None else head.get("ContentLength")
            if got != stream.size:
                raise StorageError("s3_size_mismatch")

        await self._io.run(settle())

    async def _upload(self, key: str, path: Path, size: int, metadata: dict[str, str]) -> None:
        bucket = self._io.bucket
        if self.pending_dir.exists():
            await bucket.retry_pending_aborts(self.pending_dir)
        await bucket.put_file(key, path, size, metadata, self.pending_dir)
        head = await bucket.head(key)
        got = None if head is None else head.get("ContentLength")
        if got != size:
            raise StorageError("s3_size_mismatch")

    def _record(
        self,
        client_id: str,
        file_id: str,
        meta: FileMeta,
        checksum: str,
        key: str,
        size: int,
    ) -> Path:
        d = self.transfer_dir(client_id, file_id)
        d.mkdir(parents=True, exist_ok=True)
        extra: dict[str, JsonValue] = {
            "clientid": client_id,
            "fileid": file_id,
            "exported_at": int(time.time()),
            _BUCKET_KEY: self.cfg.bucket,
            _KEY_KEY: key,
            _SIZE_KEY: size,
        }
        if meta.checksum is not None:
            extra[INIT_CHECKSUM_KEY] = meta.checksum
        body = manifest_bytes(meta, checksum, extra)
        final = d / (meta.name + MANIFEST_SUFFIX)
        tmp = d / f".ftserver-{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, body)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        fsync_dir(d)
        return final

    def finish_interrupted(self, client_id: str, file_id: str, meta: FileMeta) -> ExportInfo | None:
        """The staging data is only removed after the index entry is written, so an
        interrupted export either is in the index or still has its data staged."""
        return self.lookup(client_id, file_id)

    # -- what the HTTP API reads -------------------------------------------------------------

    async def _ask(self, what: str, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the S3 loop; a failure of S3 becomes a :class:`BackendError`
        that says what happened."""
        try:
            return await self._io.run(coro)
        except Exception as exc:
            err = s3_error(exc)
            log.warning("s3: %s failed: %s (%s)", what, err.description, _brief(exc))
            raise BackendError(err.description) from exc

    async def _listed(self, obj: S3Object) -> ExportedFile:
        return ExportedFile(
            client_id=obj.client_id,
            file_id=obj.file_id,
            name=obj.name,
            size=obj.size,
            timestamp=obj.last_modified,
            metadata=obj.metadata,
            fileref=obj.key,
            url=await self._io.bucket.presign(obj.key),
        )

    async def list_files(self, after: Key, limit: int) -> FilePage:
        async def listing() -> FilePage:
            bucket = self._io.bucket
            objects, more = await bucket.list_keys(after[0] if after else "", limit)
            files = [await self._listed(o) for o in await bucket.describe(objects)]
            # the S3 marker: the last key of this page, whether or not its HEAD still found it
            next_key = (str(objects[-1]["Key"]),) if more and objects else None
            return FilePage(files, next_key)

        return await self._ask("listing", listing())

    async def transfer_files(self, client_id: str, file_id: str) -> list[ExportedFile]:
        async def listing() -> list[ExportedFile]:
            objects = await self._io.bucket.transfer_objects(client_id, file_id)
            return [await self._listed(o) for o in objects]

        return await self._ask(f"listing of {client_id!r}/{file_id!r}", listing())

    async def delete_transfer(self, client_id: str, file_id: str) -> int:
        """Delete the objects, then the index entry (which answers retransmitted commands)."""
        what = f"deletion of {client_id!r}/{file_id!r}"
        removed = await self._ask(what, self._io.bucket.delete_transfer(client_id, file_id))
        loop = asyncio.get_running_loop()
        indexed = await loop.run_in_executor(
            None, tree.delete_transfer_exports, self.root, client_id, file_id
        )
        return max(removed, indexed)

    async def serve(self, fileref: str) -> Path | Redirect | None:
        """A redirect to a presigned URL of the object ``fileref`` (its key); None when
        there is no such object."""
        if parse_key(fileref) is None:
            return None

        async def locate() -> Redirect | None:
            bucket = self._io.bucket
            if await bucket.head(fileref) is None:
                return None
            return Redirect(await bucket.presign(fileref))

        return await self._ask(f"download of {fileref!r}", locate())

    async def cluster_transfers(
        self, after: str, limit: int
    ) -> tuple[list[tuple[str, Checkpoint]], bool]:
        """Transfers in progress across the cluster: up to ``limit`` checkpoints whose key
        sorts after ``after``, in key order, and whether more follow."""

        async def listing() -> tuple[list[tuple[str, Checkpoint]], bool]:
            bucket = self._io.bucket
            prefix = self.cfg.checkpoint_prefix
            keys: list[str] = []
            marker = after
            more = False
            while len(keys) <= limit:
                kwargs: dict[str, Any] = {"Bucket": bucket.bucket, "Prefix": prefix}
                kwargs["MaxKeys"] = min(1000, limit + 1 - len(keys))
                if marker:
                    kwargs["Marker"] = marker
                answer = await bucket.client.list_objects(**kwargs)
                contents = answer.get("Contents") or []
                keys += [
                    str(o["Key"]) for o in contents if not str(o["Key"]).startswith(prefix + "%")
                ]
                if not answer.get("IsTruncated") or not contents:
                    break
                marker = str(contents[-1]["Key"])
            if len(keys) > limit:
                keys, more = keys[:limit], True
            sem = asyncio.Semaphore(HEAD_CONCURRENCY)

            async def one(key: str) -> tuple[str, Checkpoint] | None:
                async with sem:
                    found = await self.streamer.get_checkpoint(key)
                return None if found is None else (key, found[0])

            got = await asyncio.gather(*(one(k) for k in keys))
            return [c for c in got if c is not None], more

        return await self._ask("listing the transfers in progress", listing())

    async def collect_expired(self, now: float) -> int:
        """Delete the exports whose ``expire_at`` is before ``now`` (one pass over the
        expiry markers: :mod:`ftserver.export.s3expiry`), with their local index entries
        (those of this node: another node's index forgets it when the object is gone)."""

        async def collect() -> list[str]:
            bucket = self._io.bucket
            return await collect_expired_s3(
                bucket.client, bucket.bucket, self.cfg.checkpoint_prefix, now
            )

        try:
            keys = await self._io.run(collect())
        except Exception as exc:  # S3 away: the next pass tries again
            log.warning("s3: expired exports not collected (%s)", _brief(exc))
            return 0
        loop = asyncio.get_running_loop()
        for key in keys:
            parsed = parse_key(key)
            if parsed is not None:
                cid, fid, name = parsed
                d = self.transfer_dir(cid, fid)
                await loop.run_in_executor(None, delete_export, d, name, self.root)
        stale = 0
        try:
            stale = await self._io.run(
                self.streamer.collect_stale(now, self.stream_ttl, self.pending_dir)
            )
        except Exception as exc:
            log.warning("s3: expired checkpoints not collected (%s)", _brief(exc))
        return len(keys) + stale

    async def close(self) -> None:
        """Close the S3 client and stop its thread (streams stay in the bucket)."""
        await self.streamer.close_all()
        await asyncio.get_running_loop().run_in_executor(None, self._io.close)


def _default_ttl(meta: FileMeta | None) -> float:
    """A transfer's TTL without the store's clamps: its ``segments_ttl``, else one day."""
    if meta is not None and meta.segments_ttl is not None:
        return float(meta.segments_ttl)
    return 86400.0


def _brief(exc: BaseException) -> str:
    """A one-line account of an S3 failure for the log (never the credentials)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]

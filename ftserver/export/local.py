"""The local-directory exporter, in EMQX's layout (docs/protocol.md §6).

``<exports>/<B1>/<B2>/<B3>/<esc(clientId)>/<esc(fileId)>/<name>`` plus the sidecar
``<name>.MANIFEST.json``. When the exports directory is on the staging filesystem (the
default: both live under the data directory) an export is a rename plus the manifest: its
cost does not grow with the file. The manifest is written first, under its final name, and
the rename of the file beside it is the step that makes the export exist: a file with its
manifest is exported (a manifest alone is not; see :meth:`LocalExporter.export_blocking`).

The HTTP API reads the same tree (:mod:`ftserver.export.tree`) in a small thread pool the
exporter starts on first use, so that a slow disk or a large listing never blocks an event
loop nor the executor that exports run in.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar, Final, TypeVar

from ftserver.errors import FtError
from ftserver.export import tree
from ftserver.export.base import (
    INIT_CHECKSUM_KEY,
    ExportedFile,
    ExportInfo,
    FilePage,
    Key,
    Redirect,
)
from ftserver.export.layout import MANIFEST_SUFFIX, manifest_bytes, parse_manifest
from ftserver.meta import FileMeta, JsonValue, filemeta_from_obj
from ftserver.storage.journal import write_all

T = TypeVar("T")

#: threads reading the tree for the HTTP API (directory walks, stats, manifest reads)
READER_THREADS: Final = 4


class LocalExporter:
    """The local directory exporter (EMQX layout); an export is a rename plus a manifest."""

    #: a listing position is an export's path below the root (B1, B2, B3, cid, fid, name)
    cursor_kind: ClassVar[str] = "e"
    cursor_length: ClassVar[int] = 6

    def __init__(self, root: Path) -> None:
        self.root = root
        self._readers: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def transfer_dir(self, client_id: str, file_id: str) -> Path:
        return tree.transfer_dir(self.root, client_id, file_id)

    def lookup(self, client_id: str, file_id: str) -> ExportInfo | None:
        """The export of this transfer, if there is one (a manifest beside its file)."""
        d = self.transfer_dir(client_id, file_id)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return None
        for entry in names:
            if not entry.endswith(MANIFEST_SUFFIX):
                continue
            name = entry[: -len(MANIFEST_SUFFIX)]
            try:
                obj = parse_manifest((d / entry).read_bytes())
                checksum = obj.pop("checksum")
                for key in ("clientid", "fileid", "exported_at"):
                    obj.pop(key, None)
                # the manifest's checksum is the verified one; the init's (if any) is kept
                # apart so that a retransmitted init compares equal after a restart
                init_checksum = obj.pop(INIT_CHECKSUM_KEY, None)
                if init_checksum is not None:
                    obj["checksum"] = init_checksum
                meta = filemeta_from_obj(obj)
                size = os.stat(d / name).st_size
            except (OSError, ValueError, KeyError, TypeError, FtError):
                continue  # a damaged export does not count; a new upload may replace it
            if not isinstance(checksum, str):
                continue
            return ExportInfo(client_id, file_id, meta, size, checksum.upper(), d / name)
        return None

    async def export(
        self, client_id: str, file_id: str, meta: FileMeta, data_path: Path, checksum: str
    ) -> ExportInfo:
        """Move the (flushed, truncated) staging file into the exports beside its manifest,
        everything flushed (the store's own fin path calls :meth:`export_blocking`)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, self.export_blocking, client_id, file_id, meta, data_path, checksum
        )

    def finish_interrupted(self, client_id: str, file_id: str, meta: FileMeta) -> ExportInfo | None:
        target = self.transfer_dir(client_id, file_id) / meta.name
        if not target.exists():
            return None
        h = hashlib.sha256()
        with open(target, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        self.write_manifest(target.parent, client_id, file_id, meta, h.hexdigest().upper())
        return self.lookup(client_id, file_id)

    def export_blocking(
        self,
        client_id: str,
        file_id: str,
        meta: FileMeta,
        data_path: Path,
        checksum: str,
        *,
        sync: bool = True,
    ) -> ExportInfo:
        """:meth:`export`, blocking. The caller has flushed ``data_path`` (so that no power
        loss leaves a file beside its manifest that is not whole).

        An export is a file with its manifest beside it (:meth:`lookup`, the listings), so
        the manifest is written first, under its final name, and the rename of the file
        beside it is the one step that makes the export exist: no temporary file, no second
        rename. With ``sync`` (durability ``sync``) the manifest and the directory are
        flushed before it returns; without, nothing more is flushed: a power loss may then
        lose the export or leave its manifest torn (which reads as no export, and recovery
        completes it from the staging journal), never pair a manifest with a file it does
        not describe. For that, an earlier export left at these names (one that does not
        count: a torn manifest, a file without one) is removed, durably, before the new one
        is written.

        Every descriptor it needs is opened before the rename. Run again after a failure, it
        finishes the job (the file already in place is kept)."""
        d = self._make_dir(client_id, file_id)
        target = d / meta.name
        manifest = d / (meta.name + MANIFEST_SUFFIX)
        body = _manifest(client_id, file_id, meta, checksum)
        if os.path.lexists(target):
            if not os.path.lexists(data_path):
                # moved by an earlier attempt whose last step failed: finish that one
                self.write_manifest(d, client_id, file_id, meta, checksum)
                size = os.stat(target).st_size
                return ExportInfo(client_id, file_id, meta, size, checksum, target)
            _remove_durably(d, target, manifest)
        dir_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if sync else -1
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            try:
                fd = os.open(manifest, flags, 0o644)
            except FileExistsError:  # a manifest without its file (a crash between the steps)
                _remove_durably(d, manifest)
                fd = os.open(manifest, flags, 0o644)
            try:
                write_all(fd, body)
                if sync:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
            self._move(data_path, target, d)
            size = os.stat(target).st_size
            if sync:
                os.fsync(dir_fd)
        finally:
            if dir_fd >= 0:
                os.close(dir_fd)
        return ExportInfo(client_id, file_id, meta, size, checksum, target)

    def _make_dir(self, client_id: str, file_id: str) -> Path:
        """Create the directory of a transfer's exports, from the top: a new transfer's is
        new from ``B2`` or ``B3`` down, and one ``mkdir`` per level costs half the calls of
        climbing up from the bottom until one exists."""
        parts = tree.transfer_dir_key(client_id, file_id)
        d = self.root.joinpath(*parts)
        path = str(self.root)
        try:
            for part in parts:
                path = f"{path}/{part}"
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path)
        except FileNotFoundError:  # the root itself is gone
            d.mkdir(parents=True, exist_ok=True)
        return d

    @staticmethod
    def _move(data_path: Path, target: Path, d: Path) -> None:
        """Move the staging file to ``target`` (a copy across filesystems)."""
        try:
            os.replace(data_path, target)
        except FileNotFoundError:
            if not target.exists():
                raise
            return  # moved by an earlier attempt whose manifest failed: finish that one
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # exports on another filesystem: copy, flush, then drop the staging file
            part = d / f".ftserver-{secrets.token_hex(8)}.part"  # names may be 240 bytes
            shutil.copyfile(data_path, part)
            with open(part, "rb+") as f:
                os.fdatasync(f.fileno())
            os.replace(part, target)
            os.unlink(data_path)

    def write_manifest(
        self, d: Path, client_id: str, file_id: str, meta: FileMeta, checksum: str
    ) -> None:
        """Write the manifest of a file already in place (finishing an interrupted export):
        a temporary file renamed over the manifest's name, everything flushed, since the
        file is visible as exported from the rename on."""
        dir_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            tmp = d / f".ftserver-{secrets.token_hex(8)}.tmp"  # names may be 240 bytes
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                write_all(fd, _manifest(client_id, file_id, meta, checksum))
                os.fdatasync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, d / (meta.name + MANIFEST_SUFFIX))
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # -- what the HTTP API reads -------------------------------------------------------------

    async def _read(self, fn: Callable[..., T], *args: object) -> T:
        """Run blocking ``fn(*args)`` in the exporter's reader threads."""
        with self._lock:
            if self._readers is None:
                self._readers = ThreadPoolExecutor(
                    max_workers=READER_THREADS, thread_name_prefix="ftserver-exports"
                )
            readers = self._readers
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(readers, functools.partial(fn, *args))

    async def list_files(self, after: Key, limit: int) -> FilePage:
        entries, more = await self._read(tree.page, self.root, after, limit)
        next_key = entries[-1].key if more and entries else None
        return FilePage([_listed(e) for e in entries], next_key)

    async def transfer_files(self, client_id: str, file_id: str) -> list[ExportedFile]:
        entries = await self._read(tree.exports_of_transfer, self.root, client_id, file_id)
        return [_listed(e) for e in entries]

    async def delete_transfer(self, client_id: str, file_id: str) -> int:
        return await self._read(tree.delete_transfer_exports, self.root, client_id, file_id)

    async def serve(self, fileref: str) -> Path | Redirect | None:
        """The file itself (``fileref`` is its path below the root, see
        :func:`~ftserver.export.tree.resolve_fileref`)."""
        return await self._read(tree.resolve_fileref, self.root, fileref)

    async def close(self) -> None:
        """Stop the reader threads (reads in progress are abandoned)."""
        with self._lock:
            readers, self._readers = self._readers, None
        if readers is not None:
            readers.shutdown(wait=False, cancel_futures=True)


def _manifest(client_id: str, file_id: str, meta: FileMeta, checksum: str) -> bytes:
    """The manifest of an export: the init metadata, the verified checksum and ftserver's
    own keys."""
    extra: dict[str, JsonValue] = {
        "clientid": client_id,
        "fileid": file_id,
        "exported_at": int(time.time()),
    }
    if meta.checksum is not None:
        extra[INIT_CHECKSUM_KEY] = meta.checksum
    return manifest_bytes(meta, checksum, extra)


def _remove_durably(d: Path, *paths: Path) -> None:
    """Remove what an earlier export left at ``paths`` in ``d``, and flush ``d``: no power
    loss afterwards brings them back beside the new export."""
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
    dir_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _representable(ts: float) -> bool:
    """Whether a timestamp can be rendered as a date (RFC 3339)."""
    try:
        datetime.fromtimestamp(int(ts), tz=UTC)
    except (OverflowError, OSError, ValueError):
        return False
    return True


def _listed(e: tree.ExportEntry) -> ExportedFile:
    """A listing item: stamped with the manifest's ``exported_at`` when it has a usable one,
    else with the file's mtime."""
    exported_at = e.manifest.get("exported_at")
    ts = e.mtime
    if (
        isinstance(exported_at, int | float)
        and not isinstance(exported_at, bool)
        and _representable(exported_at)
    ):
        ts = exported_at
    return ExportedFile(
        client_id=e.client_id,
        file_id=e.file_id,
        name=e.name,
        size=e.size,
        timestamp=ts,
        metadata=e.manifest,
        fileref=e.relpath,
    )

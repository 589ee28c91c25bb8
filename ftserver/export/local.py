"""The local-directory exporter, in EMQX's layout (PROTOCOL.md §6).

``<exports>/<B1>/<B2>/<B3>/<esc(clientId)>/<esc(fileId)>/<name>`` plus the sidecar
``<name>.MANIFEST.json``. When the exports directory is on the staging filesystem (the
default: both live under the data directory) an export is a rename plus the manifest: its
cost does not grow with the file. The manifest is written last and atomically, so its presence
is what marks a file as exported.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import secrets
import shutil
import time
from pathlib import Path

from ftserver.errors import FtError
from ftserver.export.base import INIT_CHECKSUM_KEY, ExportInfo
from ftserver.export.layout import (
    MANIFEST_SUFFIX,
    export_dir_parts,
    manifest_bytes,
    parse_manifest,
)
from ftserver.meta import FileMeta, JsonValue, filemeta_from_obj
from ftserver.names import esc
from ftserver.storage.journal import fsync_dir


class LocalExporter:
    """The local directory exporter (EMQX layout); an export is a rename plus a manifest."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def transfer_dir(self, client_id: str, file_id: str) -> Path:
        b1, b2, b3 = export_dir_parts(client_id, file_id)
        return self.root / b1 / b2 / b3 / esc(client_id) / esc(file_id)

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
        """Move the (flushed, truncated) staging file into the exports, write the manifest."""
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
        self, client_id: str, file_id: str, meta: FileMeta, data_path: Path, checksum: str
    ) -> ExportInfo:
        """:meth:`export`, blocking (renames and fsyncs)."""
        d = self.transfer_dir(client_id, file_id)
        d.mkdir(parents=True, exist_ok=True)
        target = d / meta.name
        try:
            os.replace(data_path, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # exports on another filesystem: copy, flush, then drop the staging file
            tmp = d / f".ftserver-{secrets.token_hex(8)}.part"  # names may be 240 bytes
            shutil.copyfile(data_path, tmp)
            with open(tmp, "rb+") as f:
                os.fdatasync(f.fileno())
            os.replace(tmp, target)
            os.unlink(data_path)
        size = os.stat(target).st_size
        self.write_manifest(d, client_id, file_id, meta, checksum)
        return ExportInfo(client_id, file_id, meta, size, checksum, target)

    def write_manifest(
        self, d: Path, client_id: str, file_id: str, meta: FileMeta, checksum: str
    ) -> None:
        extra: dict[str, JsonValue] = {
            "clientid": client_id,
            "fileid": file_id,
            "exported_at": int(time.time()),
        }
        if meta.checksum is not None:
            extra[INIT_CHECKSUM_KEY] = meta.checksum
        body = manifest_bytes(meta, checksum, extra)
        final = d / (meta.name + MANIFEST_SUFFIX)
        tmp = d / f".ftserver-{secrets.token_hex(8)}.tmp"  # names may be 240 bytes
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, body)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        fsync_dir(d)

"""The local exporter through the interface the HTTP API uses (list, locate, serve, delete),
on files it exported itself in a real directory."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

from ftserver.export.base import Exporter, ExportInfo
from ftserver.export.layout import MANIFEST_SUFFIX
from ftserver.export.local import LocalExporter
from ftserver.meta import FileMeta


def _export(exporter: LocalExporter, tmp: Path, cid: str, fid: str, data: bytes) -> ExportInfo:
    staged = tmp / f"staged-{fid}"
    staged.write_bytes(data)
    meta = FileMeta(name=f"{fid}.bin", size=len(data))
    checksum = hashlib.sha256(data).hexdigest().upper()
    return exporter.export_blocking(cid, fid, meta, staged, checksum)


def test_list_locate_serve_delete(tmp_path: Path) -> None:
    exporter = LocalExporter(tmp_path / "exports")
    api: Exporter = exporter  # the HTTP API sees nothing more than the protocol
    ids = [("dev/1", "a"), ("dev/1", "b"), ("dev 2", "c")]
    for i, (cid, fid) in enumerate(ids):
        _export(exporter, tmp_path, cid, fid, bytes([i]) * (i + 1))

    async def scenario() -> None:
        # pages of one, each after the position the previous one ended at
        seen, after = [], ()
        while True:
            page = await api.list_files(after, 1)
            seen += page.files
            if page.next_key is None:
                break
            assert len(page.next_key) == api.cursor_length
            after = page.next_key
        assert sorted((f.client_id, f.file_id) for f in seen) == sorted(ids)
        assert all(f.url is None and f.metadata["clientid"] == f.client_id for f in seen)

        [f] = await api.transfer_files("dev/1", "b")
        checksum = hashlib.sha256(b"\x01\x01").hexdigest().upper()
        assert (f.name, f.size, f.metadata["checksum"]) == ("b.bin", 2, checksum)
        served = await api.serve(f.fileref)
        assert isinstance(served, Path) and served.read_bytes() == b"\x01\x01"
        assert await api.serve(f.fileref + MANIFEST_SUFFIX) is not None  # as with EMQX
        assert await api.serve("../" + f.fileref) is None
        assert await api.serve(f.fileref.rsplit("/", 1)[0] + "/nope") is None

        assert await api.delete_transfer("dev/1", "b") == 1
        assert await api.delete_transfer("dev/1", "b") == 0
        assert await api.transfer_files("dev/1", "b") == []
        assert await api.serve(f.fileref) is None
        assert exporter.lookup("dev/1", "b") is None and exporter.lookup("dev/1", "a")
        await api.close()

    asyncio.run(scenario())


def test_timestamp_is_exported_at_else_mtime(tmp_path: Path) -> None:
    exporter = LocalExporter(tmp_path / "exports")
    info = _export(exporter, tmp_path, "c", "f", b"x")
    manifest = info.path.with_name(info.path.name + MANIFEST_SUFFIX)
    os.utime(info.path, (1_600_000_000, 1_600_000_000))

    def stamp(exported_at: object) -> float:
        prelude, vsn, obj = json.loads(manifest.read_bytes())
        obj["exported_at"] = exported_at
        manifest.write_text(json.dumps([prelude, vsn, obj]))
        [f] = asyncio.run(exporter.transfer_files("c", "f"))
        return f.timestamp

    try:
        assert stamp(1_700_000_000) == 1_700_000_000
        assert stamp(10**30) == 1_600_000_000  # not a date: the file's mtime
        assert stamp(True) == 1_600_000_000
        assert stamp("yesterday") == 1_600_000_000
    finally:
        asyncio.run(exporter.close())

"""The per-file path of small files on real files: an init-created staging directory is born
with its metadata, the fin of a local export runs as one job, the manifest is written before
the rename that completes an export, and every state a crash can leave between those steps
recovers to a correct export (issue 13, item 6).

Expected values come from the bytes the test sent (hashlib) and the layout rules written out
in :mod:`tests.storage.test_store`; a "crash" drops a store without ``close()``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from ftserver.export.local import LocalExporter
from ftserver.meta import FileMeta
from ftserver.storage import journal as jr
from ftserver.storage import staging
from ftserver.transfer.store import Durability, ExportInfo, Transfer, TransferStore

from .retry import settle
from .test_store import (
    CID,
    DURABILITIES,
    FID,
    check_export,
    commit,
    crash,
    export_dir,
    fin,
    meta_of,
    open_transfer,
    payload,
    run,
    send,
    sha,
    staging_dir,
)

MANIFEST = ".MANIFEST.json"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def manifest_of(path: Path) -> dict[str, Any]:
    doc = json.loads(path.with_name(path.name + MANIFEST).read_bytes())
    assert doc[:2] == ["filemeta", 1]
    obj: dict[str, Any] = doc[2]
    return obj


def leftovers(data_dir: Path) -> list[str]:
    """Transfer directories still staged, and what is being built under ``staging/.tmp``."""
    root = data_dir / "staging"
    staged = [str(p.relative_to(root)) for p in root.glob("*/*/*")]
    tmp = root / staging.TMP
    return staged + ([f".tmp/{n}" for n in os.listdir(tmp)] if tmp.exists() else [])


# -- init ----------------------------------------------------------------------------------


@pytest.mark.parametrize("durability", DURABILITIES)
def test_init_creates_the_directory_with_its_meta(data_dir: Path, durability: Durability) -> None:
    meta = {"name": "f.bin", "size": 3000, "user_data": "u"}

    async def main() -> None:
        s1 = TransferStore(data_dir, durability=durability)
        s1.init(CID, FID, meta_of(**meta))
        d = staging_dir(data_dir, CID, CID, FID)
        assert sorted(os.listdir(d)) == ["data", "journal", "meta"]  # no meta.tmp
        assert json.loads((d / "meta").read_bytes()) == meta
        send(s1, payload(3000), 0, 3000)
        await commit(s1)
        crash(s1)

        s2 = TransferStore(data_dir, durability=durability)
        t = await open_transfer(s2)
        assert t.meta == meta_of(**meta)
        assert list(t.asm.ranges) == [(0, 3000)]
        s2.init(CID, FID, meta_of(**meta))  # the same init again: accepted, nothing changes
        await fin(s2, 3000, sha(payload(3000)))
        check_export(data_dir, payload(3000), meta)
        await s2.close()

    run(main())


def test_segment_before_init_then_init_writes_meta(data_dir: Path) -> None:
    data = payload(2000)

    async def main() -> None:
        s1 = TransferStore(data_dir)
        send(s1, data, 0, 2000)  # a segment creates the transfer: no metadata yet
        s1.commit()
        d = staging_dir(data_dir, CID, CID, FID)
        assert sorted(os.listdir(d)) == ["data", "journal"]
        assert staging.read_meta(d) is None
        s1.init(CID, FID, meta_of(name="late"))
        assert staging.read_meta(d) == meta_of(name="late")
        crash(s1)

        s2 = TransferStore(data_dir)
        t = await open_transfer(s2)
        assert t.meta == meta_of(name="late")
        await fin(s2, 2000, sha(data))
        check_export(data_dir, data, {"name": "late"})
        await s2.close()

    run(main())


# -- fin -----------------------------------------------------------------------------------


@pytest.mark.parametrize("durability", DURABILITIES)
def test_fin_of_small_files_leaves_exports_only(data_dir: Path, durability: Durability) -> None:
    """Many small files at once: each export is its file and its manifest, nothing else; the
    staging area is empty afterwards; the answers are those of the protocol."""
    sizes = [1, 1000, 4096, 16384, 5000, 0, 777, 12345]

    async def main() -> None:
        s = TransferStore(data_dir, durability=durability)
        for i, n in enumerate(sizes):
            s.init(CID, f"f{i}", meta_of(name=f"n{i}", size=n))
            if n:
                send(s, payload(n, seed=i), 0, n, fid=f"f{i}")
        await commit(s)
        prepared = [
            await settle(lambda i=i, n=n: s.fin_prepare(CID, f"f{i}", n, sha(payload(n, seed=i))))
            for i, n in enumerate(sizes)
        ]
        assert all(isinstance(t, Transfer) for t in prepared)
        infos = [
            await s.fin_export(t, n, None)  # type: ignore[arg-type]
            for t, n in zip(prepared, sizes, strict=True)
        ]
        for i, (n, info) in enumerate(zip(sizes, infos, strict=True)):
            data = payload(n, seed=i)
            assert (info.size, info.checksum) == (n, hashlib.sha256(data).hexdigest().upper())
            path = check_export(
                data_dir, data, {"name": f"n{i}", "size": n}, fid=f"f{i}", esc_fid=f"f{i}"
            )
            assert info.path == path
            # a retransmitted fin answers from the export
            assert s.fin_prepare(CID, f"f{i}", n, sha(data)) == info
        assert leftovers(data_dir) == []
        assert s.open_transfers() == []
        await s.close()

    run(main())


def test_fin_answers_the_same_in_both_modes(data_dir: Path) -> None:
    data = payload(9000)
    got: dict[str, tuple[int, str, dict[str, Any]]] = {}

    async def one(durability: Durability) -> None:
        s = TransferStore(data_dir / durability, durability=durability)
        s.init(CID, FID, meta_of(name="f", checksum=hashlib.sha256(data).hexdigest()))
        send(s, data, 4096, 9000 - 4096)  # out of order: the fin reads the head back
        send(s, data, 0, 4096)
        await commit(s)
        info = await fin(s, 9000, None)
        manifest = manifest_of(info.path)
        manifest.pop("exported_at")
        got[durability] = (info.size, info.checksum, manifest)
        await s.close()

    for durability in DURABILITIES:
        run(one(durability))
    assert got["fast"] == got["sync"]
    assert got["fast"][1] == hashlib.sha256(data).hexdigest().upper()


def test_wrong_checksum_in_the_one_job_fin_keeps_the_transfer(data_dir: Path) -> None:
    data = payload(3000)

    async def main() -> None:
        s = TransferStore(data_dir)
        s.init(CID, FID, meta_of(name="f"))
        send(s, data, 0, 3000)  # not committed: the fin writes its record first
        with pytest.raises(Exception) as failed:
            await fin(s, 3000, sha(b"something else"))
        assert getattr(failed.value, "description", None) == "checksum_mismatch"
        t = await open_transfer(s)
        assert list(t.asm.ranges) == [(0, 3000)]
        assert not export_dir(data_dir, CID, FID, CID, FID).exists() or not any(
            export_dir(data_dir, CID, FID, CID, FID).iterdir()
        )
        crash(s)
        s2 = TransferStore(data_dir)
        t2 = await open_transfer(s2)  # its records were written: nothing to resend
        assert list(t2.asm.ranges) == [(0, 3000)]
        await fin(s2, 3000, sha(data))
        check_export(data_dir, data, {"name": "f"})
        await s2.close()

    run(main())


# -- a crash between the export's steps ----------------------------------------------------


def _steps_up_to_manifest(t: Transfer, data_dir: Path, size: int, manifest: bytes) -> Path:
    """The export's own steps by hand: the file flushed, EXPORTING journaled, the manifest
    written under its final name; the crash comes before the rename."""
    t.asm.flush()
    d = export_dir(data_dir, CID, FID, CID, FID)
    target = d / "f"
    t.journal.add(jr.exporting_record(size, str(target)))
    t.journal.write()
    d.mkdir(parents=True)
    (d / ("f" + MANIFEST)).write_bytes(manifest)
    return target


@pytest.mark.parametrize("durability", DURABILITIES)
def test_crash_after_the_manifest_before_the_rename(data_dir: Path, durability: Durability) -> None:
    """The manifest is there without its file: no export; the transfer resumes from its
    staged data and the next fin replaces the manifest."""
    data = payload(6000)

    async def main() -> None:
        s1 = TransferStore(data_dir, durability=durability)
        s1.init(CID, FID, meta_of(name="f"))
        send(s1, data, 0, 6000)
        await commit(s1)
        t = await open_transfer(s1)
        stale = b'["filemeta",1,{"name":"f","checksum":"' + b"AB" * 32 + b'","size":6000}]'
        _steps_up_to_manifest(t, data_dir, 6000, stale)
        crash(s1)

        s2 = TransferStore(data_dir, durability=durability)
        assert s2.exporter.lookup(CID, FID) is None  # a manifest without its file
        t2 = await open_transfer(s2)
        assert list(t2.asm.ranges) == [(0, 6000)]
        info = await fin(s2, 6000, sha(data))
        assert info.checksum == hashlib.sha256(data).hexdigest().upper()
        check_export(data_dir, data, {"name": "f"})
        await s2.close()

    run(main())


@pytest.mark.parametrize("durability", DURABILITIES)
def test_a_file_without_manifest_is_replaced(data_dir: Path, durability: Durability) -> None:
    """A file left at the export's name without a manifest (an earlier export that does not
    count) is replaced by the new one, never paired with the new manifest."""
    data = payload(4000)

    async def main() -> None:
        d = export_dir(data_dir, CID, FID, CID, FID)
        d.mkdir(parents=True)
        (d / "f").write_bytes(b"an older file")
        s = TransferStore(data_dir, durability=durability)
        assert s.get(CID, FID) is None
        s.init(CID, FID, meta_of(name="f"))
        send(s, data, 0, 4000)
        await commit(s)
        await fin(s, 4000, sha(data))
        check_export(data_dir, data, {"name": "f"})
        await s.close()

    run(main())


def test_crash_after_the_rename_is_exported(data_dir: Path) -> None:
    """The rename done (the manifest was written before it): the export exists; the
    transfer's recovery finds it and only removes the staging directory."""
    data = payload(5000)

    async def main() -> None:
        s1 = TransferStore(data_dir)
        s1.init(CID, FID, meta_of(name="f"))
        send(s1, data, 0, 5000)
        s1.commit()
        t = await open_transfer(s1)
        body = json.dumps(
            ["filemeta", 1, {"name": "f", "checksum": hashlib.sha256(data).hexdigest().upper()}]
        ).encode()
        target = _steps_up_to_manifest(t, data_dir, 5000, body)
        os.rename(t.data_path, target)
        crash(s1)

        s2 = TransferStore(data_dir)
        got = await settle(lambda: s2.get(CID, FID))
        assert isinstance(got, ExportInfo)
        assert (got.size, got.path) == (5000, target)
        assert got.checksum == hashlib.sha256(data).hexdigest().upper()
        check_export(data_dir, data, {"name": "f"})
        assert leftovers(data_dir) == []
        await s2.close()

    run(main())


@pytest.mark.parametrize("sync", [False, True])
def test_export_run_again_finishes_an_earlier_attempt(tmp_path: Path, sync: bool) -> None:
    """An attempt moved the file and failed before its manifest was complete: run again,
    the export keeps the file in place and writes its manifest."""
    exporter = LocalExporter(tmp_path / "exports")
    data = b"moved already"
    meta = FileMeta(name="f.bin", size=len(data))
    checksum = hashlib.sha256(data).hexdigest().upper()
    d = exporter.transfer_dir("c", "f")
    d.mkdir(parents=True, exist_ok=True)
    (d / "f.bin").write_bytes(data)
    gone = tmp_path / "staged-data"  # the staging file, moved by the earlier attempt
    info = exporter.export_blocking("c", "f", meta, gone, checksum, sync=sync)
    assert (info.size, info.checksum, info.path) == (len(data), checksum, d / "f.bin")
    assert exporter.lookup("c", "f") == info
    assert sorted(os.listdir(d)) == ["f.bin", "f.bin" + MANIFEST]


def test_remove_takes_unknown_files_too(tmp_path: Path) -> None:
    d = tmp_path / "t"
    d.mkdir()
    for name in ("journal", "meta", "data", "journal.tmp"):
        (d / name).write_bytes(b"x")
    staging.remove(d)
    assert not d.exists()
    staging.remove(d)  # already gone: fine

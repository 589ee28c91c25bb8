"""TransferStore on real files: upload, fin, export, restart, power loss, checkpoints, GC.

Every expected value is computed here from the bytes the test sent (hashlib, blake3, the
EMQX layout rules written out by hand), never read back from the code under test. A "crash"
is simulated by dropping a store without ``close()``: its file descriptors are closed by hand
and nothing it buffered is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import blake3
import pytest
import uvloop

import ftcore
import ftcore._pure
from ftserver.errors import ChecksumMismatch, FileMetaConflict, Incomplete
from ftserver.meta import FileMeta, parse_filemeta
from ftserver.storage import journal as jr
from ftserver.transfer import store as store_mod
from ftserver.transfer.store import (
    Durability,
    ExportInfo,
    StoreHooks,
    Transfer,
    TransferStore,
)

from .retry import settle

T = TypeVar("T")

CID = "client-1"
FID = "file-id-1"
#: EMQX's published vector for client-1/file-id-1 (docs/protocol.md §6)
CID_FID_BUCKETS = ("8E", "B5", "7023DA998C12F0B2A6CA586027E48BEC6271")
DURABILITIES: list[Durability] = ["fast", "sync"]


# -- harness -------------------------------------------------------------------------------


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
_loop_factory: list[Callable[[], asyncio.AbstractEventLoop]] = [asyncio.new_event_loop]
# uvloop opens a process-wide pipe with its first loop, kept for good: open it before any
# test takes its file-descriptor snapshot
uvloop.new_event_loop().close()


@pytest.fixture(autouse=True, params=sorted(LOOPS))
def loop_flavour(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test body runs on both event loops (``run`` picks the one in effect)."""
    _loop_factory[0] = LOOPS[request.param]
    yield
    _loop_factory[0] = asyncio.new_event_loop


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one test body on a fresh loop; any exception the loop reports fails the test."""
    errors: list[dict[str, Any]] = []
    with asyncio.Runner(loop_factory=_loop_factory[0]) as runner:
        runner.get_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        result = runner.run(asyncio.wait_for(coro, 20))
    assert errors == []
    return result


def _fds() -> dict[str, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    return out


@pytest.fixture(autouse=True)
def no_fd_leak() -> Iterator[None]:
    before = _fds()
    yield
    leaked = {fd: target for fd, target in _fds().items() if before.get(fd) != target}
    assert leaked == {}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def payload(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def meta_of(**fields: Any) -> FileMeta:
    return parse_filemeta(json.dumps(fields).encode())


def emqx_buckets(cid: str, fid: str) -> tuple[str, str, str]:
    """docs/protocol.md §6: SHA-1 of 83 68 02, then 6D, u32 BE length, bytes for each id."""
    h = hashlib.sha1(b"\x83\x68\x02")
    for part in (cid, fid):
        raw = part.encode()
        h.update(b"\x6d" + len(raw).to_bytes(4, "big") + raw)
    d = h.hexdigest().upper()
    return d[:2], d[2:4], d[4:]


def export_dir(data_dir: Path, cid: str, fid: str, esc_cid: str, esc_fid: str) -> Path:
    return data_dir.joinpath("exports", *emqx_buckets(cid, fid), esc_cid, esc_fid)


def staging_dir(data_dir: Path, cid: str, esc_cid: str, esc_fid: str) -> Path:
    bucket = hashlib.sha1(cid.encode()).hexdigest()[:2].upper()
    return data_dir / "staging" / bucket / esc_cid / esc_fid


def send(
    store: TransferStore, data: bytes, offset: int, length: int, cid: str = CID, fid: str = FID
) -> None:
    store.segment(cid, fid, offset, memoryview(data)[offset : offset + length])


async def commit(store: TransferStore) -> None:
    if store.durability == "sync":
        await store.commit_sync()
    else:
        store.commit()


async def fin(
    store: TransferStore, size: int, checksum: bytes | None, cid: str = CID, fid: str = FID
) -> ExportInfo:
    got = await settle(lambda: store.fin_prepare(cid, fid, size, checksum))
    if isinstance(got, ExportInfo):
        return got
    return await store.fin_export(got, size, checksum)


def needs_commit(store: TransferStore) -> bool:
    return store.needs_commit  # read afresh (mypy keeps properties narrowed across calls)


class Recorder(StoreHooks):
    """Store hooks that record every export."""

    def __init__(self, seen: list[ExportInfo]) -> None:
        self.seen = seen

    def exported(self, info: ExportInfo, seconds: float) -> None:
        self.seen.append(info)


def crash(store: TransferStore) -> None:
    """kill -9: the store is never used again; nothing buffered reaches the disk."""
    for t in store.open_transfers():
        t.journal.close()
        t.asm.close()
        t.unlock()  # the kernel drops a dead process's locks


async def open_transfer(store: TransferStore, cid: str = CID, fid: str = FID) -> Transfer:
    got = await settle(lambda: store.get(cid, fid))
    assert isinstance(got, Transfer)
    return got


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def journal_records(path: Path) -> list[jr.Record]:
    """The journal's records but the OPENED ones (bookkeeping of who wrote it, in which boot)."""
    records, valid = jr.read_journal(path)
    assert valid == os.path.getsize(path)
    return [r for r in records if r.type is not jr.Rec.OPENED]


def spans(records: list[jr.Record]) -> list[tuple[int, int]]:
    return [(r.run().start, r.run().end) for r in records]


def hashed_by(state: bytes | None) -> int:
    """How far a recorded hash state reaches."""
    assert state is not None
    return ftcore.RollingSha256.loads(state).length


def check_export(
    data_dir: Path,
    content: bytes,
    meta: dict[str, Any],
    cid: str = CID,
    fid: str = FID,
    esc_cid: str = CID,
    esc_fid: str = FID,
) -> Path:
    """The export is byte-identical, in EMQX's layout, with a correct manifest."""
    d = export_dir(data_dir, cid, fid, esc_cid, esc_fid)
    name: str = meta["name"]
    assert sorted(os.listdir(d)) == sorted([name, name + ".MANIFEST.json"])
    assert (d / name).read_bytes() == content
    doc = json.loads((d / (name + ".MANIFEST.json")).read_bytes().decode("utf-8"))
    assert isinstance(doc, list) and doc[:2] == ["filemeta", 1] and len(doc) == 3
    obj = doc[2]
    assert obj["checksum"] == hashlib.sha256(content).hexdigest().upper()
    for key, value in meta.items():
        if key != "checksum":
            assert obj[key] == value, key
    assert obj.get("clientid", cid) == cid and obj.get("fileid", fid) == fid
    assert not staging_dir(data_dir, cid, esc_cid, esc_fid).exists()
    return d / name


# -- commit and the journal ----------------------------------------------------------------


def test_commit_writes_range_records_fast(data_dir: Path) -> None:
    data = payload(3000)

    async def main() -> None:
        s = TransferStore(data_dir, durability="fast")
        send(s, data, 1000, 2000)
        send(s, data, 0, 1000)
        journal = staging_dir(data_dir, CID, CID, FID) / "journal"
        assert journal_records(journal) == []  # buffered until commit
        assert needs_commit(s)
        s.commit()
        assert not needs_commit(s)
        got = [r.run() for r in journal_records(journal)]
        # beyond the prefix: its BLAKE3 (checked after a machine crash)
        assert got[0] == jr.RangeRec(1000, 3000, blake3.blake3(data[1000:]).digest(length=16))
        # extends the prefix (and joins the rest): the hash state instead
        assert (got[1].start, got[1].end, got[1].digest) == (0, 1000, None)
        assert hashed_by(got[1].state) == 3000
        send(s, data, 0, 0)  # a zero-length segment is a no-op
        s.commit()
        assert len(journal_records(journal)) == 2
        await s.close()

    run(main())


def test_commit_sync_writes_synced_records(data_dir: Path) -> None:
    data = payload(3000)

    async def main() -> None:
        s = TransferStore(data_dir, durability="sync")
        send(s, data, 0, 1000)
        send(s, data, 1000, 2000)
        journal = staging_dir(data_dir, CID, CID, FID) / "journal"
        assert journal_records(journal) == []
        await s.commit_sync()
        [got] = [r.run() for r in journal_records(journal)]  # one run for the batch
        assert (got.start, got.end, got.synced, got.digest) == (0, 3000, True, None)
        assert hashed_by(got.state) == 3000
        assert (staging_dir(data_dir, CID, CID, FID) / "data").read_bytes() == data
        await s.close()

    run(main())


# -- upload, fin, export -------------------------------------------------------------------


@pytest.mark.parametrize("durability", DURABILITIES)
def test_any_order_upload_exports_identical_file(data_dir: Path, durability: Durability) -> None:
    data = payload(10_000)
    garbage = payload(500, seed=99)
    meta = {"name": "report.bin", "size": len(data), "user_data": {"k": [1, "é"]}}
    exported: list[ExportInfo] = []

    async def main() -> None:
        s = TransferStore(data_dir, durability=durability, hooks=Recorder(exported))
        s.segment(CID, FID, 2000, memoryview(garbage))  # wrong bytes, overwritten later
        await commit(s)
        s.init(CID, FID, meta_of(**meta))  # init after the first segment
        for off, n in [(5000, 2000), (0, 1000), (0, 1000), (900, 1600), (7000, 0)]:
            send(s, data, off, n)
        await commit(s)
        for off, n in [(4000, 1500), (2500, 1500), (6500, 3500), (6500, 3500)]:
            send(s, data, off, n)
        await commit(s)
        t = await open_transfer(s)
        assert list(t.asm.ranges) == [(0, 10_000)]
        info = await fin(s, len(data), sha(data))
        path = check_export(data_dir, data, meta)
        assert (info.client_id, info.file_id, info.size, info.path) == (CID, FID, 10_000, path)
        assert info.checksum == hashlib.sha256(data).hexdigest().upper()
        assert info.meta == meta_of(**meta)
        assert exported == [info]
        assert s.open_transfers() == []
        await s.close()

    run(main())


def test_spec_layout_vector(data_dir: Path) -> None:
    async def main() -> None:
        s = TransferStore(data_dir)
        s.init(CID, FID, meta_of(name="x"))
        send(s, b"abc", 0, 3)
        s.commit()
        info = await fin(s, 3, None)
        assert info.path == data_dir.joinpath("exports", *CID_FID_BUCKETS, CID, FID, "x")
        await s.close()

    run(main())


def test_empty_file(data_dir: Path) -> None:
    async def main() -> None:
        s = TransferStore(data_dir)
        s.init(CID, FID, meta_of(name="empty"))
        info = await fin(s, 0, sha(b""))
        check_export(data_dir, b"", {"name": "empty"})
        assert info.size == 0
        await s.close()

    run(main())


def test_fin_without_init_is_incomplete_without_missing(data_dir: Path) -> None:
    data = payload(1000)

    async def main() -> None:
        s = TransferStore(data_dir)
        with pytest.raises(Incomplete) as exc:  # nothing known at all
            s.fin_prepare(CID, FID, 1000, None)
        assert exc.value.extra == {} and exc.value.description == "incomplete"
        send(s, data, 0, 1000)
        s.commit()
        with pytest.raises(Incomplete) as exc:  # every byte, but no init
            s.fin_prepare(CID, FID, 1000, None)
        assert "missing" not in exc.value.extra
        with pytest.raises(Incomplete) as exc:  # no init and bytes missing: says which
            s.fin_prepare(CID, FID, 1500, None)
        assert exc.value.extra == {"missing": [[1000, 1500]]}
        s.init(CID, FID, meta_of(name="f"))
        await fin(s, 1000, None)
        check_export(data_dir, data, {"name": "f"})
        await s.close()

    run(main())


def test_fin_with_gaps_reports_first_sixteen(data_dir: Path) -> None:
    data = payload(4000)

    async def main() -> None:
        s = TransferStore(data_dir)
        s.init(CID, FID, meta_of(name="f"))
        for i in range(40):
            send(s, data, i * 100, 50)
        s.commit()
        with pytest.raises(Incomplete) as exc:
            s.fin_prepare(CID, FID, 4000, None)
        assert exc.value.reason_code == 0x80
        assert exc.value.extra == {"missing": [[i * 100 + 50, i * 100 + 100] for i in range(16)]}
        for i in range(40):
            send(s, data, i * 100 + 50, 30)
        with pytest.raises(Incomplete) as exc:
            s.fin_prepare(CID, FID, 4100, None)
        want = [[i * 100 + 80, i * 100 + 100] for i in range(16)]
        assert exc.value.extra == {"missing": want}
        with pytest.raises(Incomplete) as exc:
            s.fin_prepare(CID, FID, 130, None)
        assert exc.value.extra == {"missing": [[80, 100]]}
        with pytest.raises(Incomplete) as exc:
            s.fin_prepare(CID, FID, 90, None)
        assert exc.value.extra == {"missing": [[80, 90]]}
        assert s.fin_prepare(CID, FID, 80, None) is await open_transfer(s)
        await s.close()

    run(main())


def test_wrong_fin_checksum_keeps_transfer_usable(data_dir: Path) -> None:
    data = payload(5000)

    async def main() -> None:
        s = TransferStore(data_dir)
        s.init(CID, FID, meta_of(name="f"))
        send(s, data, 0, 5000)
        s.commit()
        t = s.fin_prepare(CID, FID, 5000, sha(b"other"))
        assert isinstance(t, Transfer)
        with pytest.raises(ChecksumMismatch) as exc:
            await s.fin_export(t, 5000, sha(b"other"))
        assert exc.value.description == "checksum_mismatch"
        assert s.export_running(CID, FID) is None
        assert not (data_dir / "exports").joinpath(*emqx_buckets(CID, FID)).exists()
        stage = staging_dir(data_dir, CID, CID, FID)
        assert (stage / "data").read_bytes() == data
        assert await open_transfer(s) is t
        await fin(s, 5000, sha(data))  # the corrected fin
        check_export(data_dir, data, {"name": "f"})
        await s.close()

    run(main())


@pytest.mark.parametrize("durability", DURABILITIES)
def test_corrupt_segment_then_resend(data_dir: Path, durability: Durability) -> None:
    data = payload(5000)

    async def main() -> None:
        s = TransferStore(data_dir, durability=durability)
        s.init(CID, FID, meta_of(name="f", checksum=hashlib.sha256(data).hexdigest()))
        send(s, data, 0, 5000)
        s.segment(CID, FID, 1000, memoryview(b"\0" * 1000))  # a bad resend: last write wins
        await commit(s)
        with pytest.raises(ChecksumMismatch):
            await fin(s, 5000, None)
        send(s, data, 1000, 1000)
        await commit(s)
        await fin(s, 5000, None)
        check_export(data_dir, data, {"name": "f"})
        await s.close()

    run(main())


@pytest.mark.parametrize(
    ("init_sum", "fin_sum", "ok"),
    [
        ("right", None, True),  # init checksum used when fin has none
        ("wrong", None, False),
        (None, None, True),  # no checksum at all: computed
        ("wrong", "right", True),  # fin's checksum wins over init's
        ("right", "wrong", False),
        (None, "wrong", False),
    ],
)
def test_which_checksum_is_used(
    data_dir: Path, init_sum: str | None, fin_sum: str | None, ok: bool
) -> None:
    data = payload(3000)
    sums = {"right": sha(data), "wrong": sha(data + b"!")}

    async def main() -> None:
        s = TransferStore(data_dir)
        fields: dict[str, Any] = {"name": "f"}
        if init_sum is not None:
            fields["checksum"] = sums[init_sum].hex()  # lowercase: compared without case
        s.init(CID, FID, meta_of(**fields))
        send(s, data, 0, 3000)
        s.commit()
        checksum = None if fin_sum is None else sums[fin_sum]
        if ok:
            info = await fin(s, 3000, checksum)
            assert info.checksum == sums["right"].hex().upper()
            check_export(data_dir, data, {"name": "f"})
        else:
            with pytest.raises(ChecksumMismatch):
                await fin(s, 3000, checksum)
            assert isinstance(s.get(CID, FID), Transfer)
        await s.close()

    run(main())


@pytest.mark.parametrize("durability", DURABILITIES)
def test_bytes_beyond_size_are_dropped(data_dir: Path, durability: Durability) -> None:
    data = payload(8000)

    async def main() -> None:
        s = TransferStore(data_dir, durability=durability)
        s.init(CID, FID, meta_of(name="f"))
        send(s, data, 0, 8000)
        send(s, data, 10_000, 100)
        await commit(s)
        info = await fin(s, 6000, sha(data[:6000]))
        check_export(data_dir, data[:6000], {"name": "f"})
        assert info.size == 6000
        await s.close()

    run(main())


# -- after the export ----------------------------------------------------------------------


@pytest.mark.parametrize("restart", [False, True], ids=["same-store", "new-store"])
@pytest.mark.parametrize("init_checksum", [False, True], ids=["no-init-sum", "init-sum"])
def test_commands_after_export(data_dir: Path, restart: bool, init_checksum: bool) -> None:
    data = payload(6000)
    fields: dict[str, Any] = {"name": "f.bin", "size": 6000, "user_data": {"a": 1}}
    if init_checksum:
        fields["checksum"] = hashlib.sha256(data).hexdigest()
    meta = meta_of(**fields)

    async def main() -> None:
        s = TransferStore(data_dir)
        s.init(CID, FID, meta)
        send(s, data, 0, 6000)
        s.commit()
        await fin(s, 6000, None)
        path = check_export(data_dir, data, fields)
        manifest = path.with_name("f.bin.MANIFEST.json")
        snapshot = (path.read_bytes(), manifest.read_bytes(), os.stat(path).st_ino)
        if restart:
            await s.close()
            s = TransferStore(data_dir)

        def untouched() -> None:
            assert (path.read_bytes(), manifest.read_bytes(), os.stat(path).st_ino) == snapshot
            assert not staging_dir(data_dir, CID, CID, FID).exists()

        s.init(CID, FID, meta)  # identical: success
        s.init(CID, FID, meta_of(**fields))
        for other in (
            {**fields, "name": "g.bin"},
            {**fields, "size": 6001},
            {**fields, "user_data": {"a": 2}},
            {**fields, "checksum": "AB" * 32},
            {k: v for k, v in fields.items() if k != "user_data"},
        ):
            with pytest.raises(FileMetaConflict):
                s.init(CID, FID, meta_of(**other))
        send(s, payload(6000, seed=5), 0, 6000)  # a late retransmission: discarded
        s.commit()
        untouched()
        s.abort(CID, FID)  # the export is not deleted by abort
        untouched()
        for checksum in (None, sha(data)):
            got = s.fin_prepare(CID, FID, 6000, checksum)
            assert isinstance(got, ExportInfo)
            assert (got.size, got.path) == (6000, path)
            assert got.checksum == hashlib.sha256(data).hexdigest().upper()
            assert got.meta == meta
            assert (await fin(s, 6000, checksum)) == got
        for size, checksum in ((6001, None), (5999, None), (6000, sha(b"x")), (0, None)):
            with pytest.raises(FileMetaConflict):
                s.fin_prepare(CID, FID, size, checksum)
        untouched()
        await s.close()

    run(main())


def test_two_fins_share_one_export(data_dir: Path) -> None:
    data = payload(20_000)
    exported: list[ExportInfo] = []

    async def main() -> None:
        s = TransferStore(data_dir, hooks=Recorder(exported))
        s.init(CID, FID, meta_of(name="f"))
        send(s, data, 0, 20_000)
        s.commit()
        t1 = s.fin_prepare(CID, FID, 20_000, sha(data))
        assert isinstance(t1, Transfer)
        f1 = s.fin_export(t1, 20_000, sha(data))
        assert s.export_running(CID, FID) is f1
        t2 = s.fin_prepare(CID, FID, 20_000, None)  # a second fin while the export runs
        assert t2 is t1
        f2 = s.fin_export(t2, 20_000, None)
        assert f2 is f1
        r1, r2 = await asyncio.gather(f1, f2)
        assert r1 is r2 and exported == [r1]
        assert s.export_running(CID, FID) is None
        check_export(data_dir, data, {"name": "f"})
        await s.close()

    run(main())


# -- abort ---------------------------------------------------------------------------------


@pytest.mark.parametrize("durability", DURABILITIES)
def test_abort_discards_and_file_id_is_reusable(data_dir: Path, durability: Durability) -> None:
    first = payload(5000, seed=1)
    second = payload(3000, seed=2)

    async def main() -> None:
        s = TransferStore(data_dir, durability=durability)
        s.abort(CID, FID)  # nothing known: success, nothing created
        assert not staging_dir(data_dir, CID, CID, FID).exists()
        s.init(CID, FID, meta_of(name="a.bin", size=5000))
        send(s, first, 0, 5000)
        await commit(s)
        s.abort(CID, FID)
        assert not staging_dir(data_dir, CID, CID, FID).exists()
        assert s.get(CID, FID) is None and s.open_transfers() == []
        s.init(CID, FID, meta_of(name="b.bin", size=3000))  # different metadata: no conflict
        send(s, second, 0, 1000)
        await commit(s)
        with pytest.raises(Incomplete) as exc:  # the aborted bytes do not count
            s.fin_prepare(CID, FID, 3000, None)
        assert exc.value.extra == {"missing": [[1000, 3000]]}
        send(s, second, 1000, 2000)
        await commit(s)
        await fin(s, 3000, sha(second))
        check_export(data_dir, second, {"name": "b.bin", "size": 3000})
        await s.close()

    run(main())


def test_abort_then_restart_finds_nothing(data_dir: Path) -> None:
    async def main() -> None:
        s = TransferStore(data_dir)
        s.init(CID, FID, meta_of(name="a"))
        send(s, b"hello", 0, 5)
        s.commit()
        s.abort(CID, FID)
        crash(s)
        s2 = TransferStore(data_dir)
        assert s2.get(CID, FID) is None
        with pytest.raises(Incomplete):
            s2.fin_prepare(CID, FID, 5, None)
        await s2.close()

    run(main())


# -- restart, crash, power loss --------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["cython", "python"])
@pytest.mark.parametrize("durability", DURABILITIES)
def test_restart_resumes_acknowledged_ranges(
    data_dir: Path, durability: Durability, kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kernel == "python":
        monkeypatch.setattr(ftcore, "Assembler", ftcore._pure.Assembler)
        monkeypatch.setattr(ftcore, "RangeSet", ftcore._pure.RangeSet)
    data = payload(60_000)
    prefix, hole = 24_000, 6_000
    meta = {"name": "resume.bin", "size": len(data)}

    async def main() -> None:
        s1 = TransferStore(data_dir, durability=durability, flush_bytes=prefix)
        s1.init(CID, FID, meta_of(**meta))
        for off in range(0, prefix, 4000):
            send(s1, data, off, 4000)
        await commit(s1)
        # the background checkpoint after flush_bytes (both durability modes)
        await asyncio.gather(*s1._tasks)
        s1.flush_bytes = 1 << 40
        records = journal_records(staging_dir(data_dir, CID, CID, FID) / "journal")
        # (in sync mode the group commit's records may land after the checkpoint record:
        # the checkpoint already covers them)
        assert any(r.type is jr.Rec.CHECKPOINT for r in records)
        # acknowledged after the checkpoint: everything but [prefix, prefix + hole)
        for off in reversed(range(prefix + hole, len(data), 5000)):
            send(s1, data, off, 5000)
        await commit(s1)
        send(s1, data, prefix, hole)  # placed but never committed (not acknowledged)
        crash(s1)

        s2 = TransferStore(data_dir, durability=durability)
        t = await open_transfer(s2)
        assert t.meta == meta_of(**meta)
        assert list(t.asm.ranges) == [(0, prefix), (prefix + hole, len(data))]
        assert t.asm.hashed == prefix  # from the checkpoint: nothing was read again
        with pytest.raises(Incomplete) as exc:
            s2.fin_prepare(CID, FID, len(data), None)
        assert exc.value.extra == {"missing": [[prefix, prefix + hole]]}
        send(s2, data, prefix, hole)
        await commit(s2)
        await fin(s2, len(data), sha(data))
        check_export(data_dir, data, meta)
        await s2.close()

    run(main())


@pytest.mark.parametrize("durability", DURABILITIES)
def test_restart_without_checkpoint(data_dir: Path, durability: Durability) -> None:
    data = payload(30_000)

    async def main() -> None:
        s1 = TransferStore(data_dir, durability=durability)
        s1.init(CID, FID, meta_of(name="f"))
        for off in (20_000, 0, 10_000):
            send(s1, data, off, 5000)
        await commit(s1)
        crash(s1)
        s2 = TransferStore(data_dir, durability=durability)
        t = await open_transfer(s2)
        assert list(t.asm.ranges) == [(0, 5000), (10_000, 15_000), (20_000, 25_000)]
        for off in (5000, 15_000, 25_000):
            send(s2, data, off, 5000)
        await commit(s2)
        crash(s2)
        s3 = TransferStore(data_dir, durability=durability)
        await fin(s3, 30_000, sha(data))
        check_export(data_dir, data, {"name": "f"})
        await s3.close()

    run(main())


def test_fast_power_loss_drops_unflushed_ranges(data_dir: Path) -> None:
    data = payload(40_000)
    p, seg = 20_000, 5_000  # [0, p) checkpointed, then A B C D of seg bytes each

    async def main() -> None:
        s1 = TransferStore(data_dir, durability="fast", flush_bytes=p)
        s1.init(CID, FID, meta_of(name="f"))
        for off in range(0, p, 5000):
            send(s1, data, off, 5000)
        s1.commit()
        await asyncio.gather(*s1._tasks)
        s1.flush_bytes = 1 << 40
        for off in range(p, len(data), seg):
            send(s1, data, off, seg)
            s1.commit()  # a batch each: one RUN record each, with its hash state
        crash(s1)
        # power loss: B's page never reached the disk, and the file lost D's tail
        stage = staging_dir(data_dir, CID, CID, FID)
        overwrite(stage / "data", p + seg + 100, b"\0" * 1000)
        os.truncate(stage / "data", p + 3 * seg + 2000)

        # the machine rebooted: the journal's boot is not the current one
        s2 = TransferStore(data_dir, durability="fast", boot_id=lambda: "after-power-loss")
        t = await open_transfer(s2)
        # A's state matches the file re-hashed from the checkpoint, B's does not: B and
        # everything hashed after it (C, D) go
        assert list(t.asm.ranges) == [(0, p + seg)]
        assert t.asm.hashed == p + seg
        with pytest.raises(Incomplete) as exc:
            s2.fin_prepare(CID, FID, len(data), None)
        missing = [[p + seg, len(data)]]
        assert exc.value.extra == {"missing": missing}
        for start, end in missing:
            send(s2, data, start, end - start)
        s2.commit()
        await fin(s2, len(data), sha(data))
        check_export(data_dir, data, {"name": "f"})
        await s2.close()

    run(main())


def test_checkpointed_ranges_are_not_verified_again(data_dir: Path) -> None:
    data = payload(30_000)
    p = 20_000

    async def main() -> None:
        s1 = TransferStore(data_dir, durability="fast", flush_bytes=p)
        s1.init(CID, FID, meta_of(name="f"))
        for off in range(0, p, 4000):
            send(s1, data, off, 4000)
        s1.commit()
        await asyncio.gather(*s1._tasks)
        crash(s1)
        stage = staging_dir(data_dir, CID, CID, FID)
        os.truncate(stage / "data", 0)  # were the checkpointed ranges read, they would fail
        s2 = TransferStore(data_dir, durability="fast")
        t = await open_transfer(s2)
        assert list(t.asm.ranges) == [(0, p)]
        assert t.asm.hashed == p
        t.asm.file.write(0, data[:p])  # put the bytes back for the export
        send(s2, data, p, len(data) - p)
        s2.commit()
        await fin(s2, len(data), sha(data))
        check_export(data_dir, data, {"name": "f"})
        await s2.close()

    run(main())


@pytest.mark.parametrize("durability", DURABILITIES)
def test_torn_journal_tail_after_crash(data_dir: Path, durability: Durability) -> None:
    data = payload(9000)

    async def main() -> None:
        s1 = TransferStore(data_dir, durability=durability)
        s1.init(CID, FID, meta_of(name="f"))
        send(s1, data, 0, 3000)
        await commit(s1)
        crash(s1)
        journal = staging_dir(data_dir, CID, CID, FID) / "journal"
        # a record the crash cut short
        overwrite(journal, os.stat(journal).st_size, jr.range_record(3000, 3000, b"x" * 16)[:-5])
        s2 = TransferStore(data_dir, durability=durability)
        assert list((await open_transfer(s2)).asm.ranges) == [(0, 3000)]
        send(s2, data, 3000, 3000)
        await commit(s2)
        crash(s2)
        s3 = TransferStore(data_dir, durability=durability)
        assert list((await open_transfer(s3)).asm.ranges) == [(0, 6000)]
        send(s3, data, 6000, 3000)
        await commit(s3)
        await fin(s3, 9000, sha(data))
        check_export(data_dir, data, {"name": "f"})
        await s3.close()

    run(main())


def test_unreadable_journal_starts_transfer_over(data_dir: Path) -> None:
    async def main() -> None:
        s1 = TransferStore(data_dir)
        s1.init(CID, FID, meta_of(name="f"))
        send(s1, b"abc", 0, 3)
        s1.commit()
        crash(s1)
        stage = staging_dir(data_dir, CID, CID, FID)
        (stage / "journal").write_bytes(b"not a journal")
        s2 = TransferStore(data_dir)
        assert await settle(lambda: s2.get(CID, FID)) is None
        assert not stage.exists()
        send(s2, b"xyz", 0, 3)
        s2.commit()
        s2.init(CID, FID, meta_of(name="g"))
        await fin(s2, 3, sha(b"xyz"))
        check_export(data_dir, b"xyz", {"name": "g"})
        await s2.close()

    run(main())


# -- checkpoints and compaction ------------------------------------------------------------


def test_background_checkpoint(data_dir: Path) -> None:
    data = payload(2000)

    async def main() -> None:
        s = TransferStore(data_dir, durability="fast", flush_bytes=1000)
        s.init(CID, FID, meta_of(name="f"))
        for off in range(0, 2000, 400):  # crosses flush_bytes at the third segment
            send(s, data, off, 400)
        s.commit()
        assert len(s._tasks) == 1  # one checkpoint in flight, not one per segment
        await asyncio.gather(*s._tasks)
        journal = staging_dir(data_dir, CID, CID, FID) / "journal"
        records = journal_records(journal)
        checkpoints = [r for r in records if r.type is jr.Rec.CHECKPOINT]
        assert len(checkpoints) == 1
        assert records[-1] is checkpoints[0]
        state = checkpoints[0].payload
        assert state[:4] == b"FTA1"
        assert int.from_bytes(state[4:12], "little") == 2000  # hashed prefix
        hlen = int.from_bytes(state[12:16], "little")
        assert list(ftcore.RangeSet.loads(state[16 + hlen :])) == [(0, 2000)]
        assert (await open_transfer(s)).unflushed == 0
        await s.close()

    run(main())


def test_journal_compaction(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "COMPACT_JOURNAL_BYTES", 300)
    data = payload(3000)
    before = [(off, 100) for off in [*range(0, 2000, 200), *range(100, 2000, 200)]]
    during = [(2500, 100), (2700, 100)]  # placed while the checkpoint flushes
    after = [(2900, 100)]

    async def main() -> None:
        s1 = TransferStore(data_dir, durability="fast", flush_bytes=2000)
        s1.init(CID, FID, meta_of(name="f"))
        journal = staging_dir(data_dir, CID, CID, FID) / "journal"
        for off, n in before:
            send(s1, data, off, n)
        s1.commit()
        size_before = os.stat(journal).st_size
        assert size_before > 300 and len(s1._tasks) == 1
        await asyncio.sleep(0)  # the checkpoint takes its state and starts flushing
        for off, n in during:
            send(s1, data, off, n)
        s1.commit()
        await asyncio.gather(*s1._tasks)
        records = journal_records(journal)
        assert records[0].type is jr.Rec.CHECKPOINT
        assert spans(records[1:]) == [(off, off + n) for off, n in during]
        assert os.stat(journal).st_size < size_before
        for off, n in after:
            send(s1, data, off, n)
        s1.commit()
        crash(s1)
        s2 = TransferStore(data_dir)
        t = await open_transfer(s2)
        assert list(t.asm.ranges) == [(0, 2000), (2500, 2600), (2700, 2800), (2900, 3000)]
        assert t.asm.hashed == 2000
        for off in (2000, 2600, 2800):
            send(s2, data, off, 100 if off != 2000 else 500)
        s2.commit()
        await fin(s2, 3000, sha(data))
        check_export(data_dir, data, {"name": "f"})
        await s2.close()

    run(main())


# -- interrupted exports -------------------------------------------------------------------


def test_interrupted_export_after_rename_is_finished_on_lookup(data_dir: Path) -> None:
    data = payload(7000)
    meta = {"name": "done.bin", "user_data": "u"}

    async def main() -> None:
        s1 = TransferStore(data_dir)
        s1.init(CID, FID, meta_of(**meta))
        send(s1, data, 0, 7000)
        s1.commit()
        t = await open_transfer(s1)
        # the export's own steps, up to a crash between the rename and the manifest
        t.asm.flush()
        target = export_dir(data_dir, CID, FID, CID, FID) / "done.bin"
        t.journal.add(jr.exporting_record(7000, str(target)))
        t.journal.write()
        t.journal.sync()
        crash(s1)
        target.parent.mkdir(parents=True)
        os.rename(staging_dir(data_dir, CID, CID, FID) / "data", target)
        assert sorted(os.listdir(target.parent)) == ["done.bin"]

        s2 = TransferStore(data_dir)
        got = await settle(lambda: s2.get(CID, FID))
        assert isinstance(got, ExportInfo)
        assert (got.size, got.path) == (7000, target)
        assert got.checksum == hashlib.sha256(data).hexdigest().upper()
        check_export(data_dir, data, meta)
        assert s2.fin_prepare(CID, FID, 7000, sha(data)) == got
        s2.init(CID, FID, meta_of(**meta))
        await s2.close()

    run(main())


@pytest.mark.parametrize("durability", DURABILITIES)
def test_interrupted_export_before_rename_resumes(data_dir: Path, durability: Durability) -> None:
    data = payload(7000)

    async def main() -> None:
        s1 = TransferStore(data_dir, durability=durability)
        s1.init(CID, FID, meta_of(name="f"))
        send(s1, data, 0, 7000)
        send(s1, data, 5000, 2000)
        s1.segment(CID, FID, 7000, memoryview(b"beyond the size" * 100))
        await commit(s1)
        t = await open_transfer(s1)
        # the export's own steps, up to a crash just before the rename
        t.asm.truncate(5000)
        t.asm.flush()
        target = export_dir(data_dir, CID, FID, CID, FID) / "f"
        t.journal.add(jr.exporting_record(5000, str(target)))
        t.journal.write()
        t.journal.sync()
        crash(s1)

        s2 = TransferStore(data_dir, durability=durability)
        t2 = await open_transfer(s2)
        assert list(t2.asm.ranges) == [(0, 5000)]
        await fin(s2, 5000, sha(data[:5000]))
        check_export(data_dir, data[:5000], {"name": "f"})
        await s2.close()

    run(main())


# -- idle close and garbage collection -----------------------------------------------------


@pytest.mark.parametrize("durability", DURABILITIES)
def test_close_idle_then_reopen(data_dir: Path, durability: Durability) -> None:
    data = payload(12_000)

    async def main() -> None:
        s = TransferStore(data_dir, durability=durability, idle_close=60)
        s.init(CID, FID, meta_of(name="f"))
        before = time.time()
        send(s, data, 0, 6000)
        send(s, data, 9000, 3000)
        await commit(s)
        after = time.time()
        assert s.close_idle(now=before + 59) == 0
        assert len(s.open_transfers()) == 1
        assert s.close_idle(now=after + 61) == 1
        assert s.open_transfers() == []
        records = journal_records(staging_dir(data_dir, CID, CID, FID) / "journal")
        assert records[-1].type is jr.Rec.CHECKPOINT
        await settle(lambda: send(s, data, 6000, 3000))  # reopens from disk
        t = await open_transfer(s)
        assert t.meta == meta_of(name="f")
        assert list(t.asm.ranges) == [(0, 12_000)]
        await commit(s)
        await fin(s, 12_000, sha(data))
        check_export(data_dir, data, {"name": "f"})
        await s.close()

    run(main())


TTL_CASES = [  # (segments_ttl, effective ttl with min 300 and max 86400)
    (1, 300),
    (1000, 1000),
    (None, 86400),
    (10**9, 86400),
]


@pytest.mark.parametrize("on_disk_only", [False, True], ids=["open", "on-disk"])
def test_collect_garbage_clamps_ttl(data_dir: Path, on_disk_only: bool) -> None:
    async def main() -> None:
        s = TransferStore(data_dir, ttl_min=300, ttl_max=86400)
        before = time.time() - 1  # file times may lag time.time() by a clock tick
        for i, (ttl, _) in enumerate(TTL_CASES):
            fields: dict[str, Any] = {"name": "f"}
            if ttl is not None:
                fields["segments_ttl"] = ttl
            s.init(CID, f"file-{i}", meta_of(**fields))
            send(s, b"abc", 0, 3, fid=f"file-{i}")
        s.commit()
        after = time.time() + 1
        if on_disk_only:
            crash(s)
            s = TransferStore(data_dir, ttl_min=300, ttl_max=86400)

        def present() -> list[bool]:
            return [
                staging_dir(data_dir, CID, CID, f"file-{i}").is_dir() for i in range(len(TTL_CASES))
            ]

        assert present() == [True] * 4
        assert s.collect_garbage(now=before + 299) == 0
        assert s.collect_garbage(now=after + 301) == 1
        assert present() == [False, True, True, True]
        assert s.collect_garbage(now=before + 999) == 0
        assert s.collect_garbage(now=after + 1001) == 1
        assert present() == [False, False, True, True]
        assert s.collect_garbage(now=before + 86399) == 0
        assert s.collect_garbage(now=after + 86401) == 2
        assert present() == [False] * 4
        assert s.open_transfers() == []
        assert s.get(CID, "file-2") is None
        await s.close()

    run(main())


def test_collect_garbage_counts_any_command_as_activity(data_dir: Path) -> None:
    """A transfer last touched 1000 s ago (its journal's time on disk, after a restart) is
    collected, unless a command, whatever its result, touches it first; exports stay."""
    names = ["idle", "segment", "init-conflict", "fin-incomplete", "fresh"]

    async def main() -> None:
        s1 = TransferStore(data_dir, ttl_min=300, ttl_max=300)
        for fid in names:
            s1.init(CID, fid, meta_of(name="f"))
            send(s1, b"abc", 0, 3, fid=fid)
        s1.init(CID, "done", meta_of(name="f"))
        send(s1, b"abc", 0, 3, fid="done")
        s1.commit()
        await fin(s1, 3, None, fid="done")
        await s1.close()
        long_ago = time.time() - 1000
        for fid in names[:-1]:
            os.utime(staging_dir(data_dir, CID, CID, fid) / "journal", (long_ago, long_ago))

        s2 = TransferStore(data_dir, ttl_min=300, ttl_max=300)
        await settle(lambda: send(s2, b"abc", 0, 3, fid="segment"))
        s2.commit()
        with pytest.raises(FileMetaConflict):
            await settle(lambda: s2.init(CID, "init-conflict", meta_of(name="other")))
        with pytest.raises(Incomplete):
            await settle(lambda: s2.fin_prepare(CID, "fin-incomplete", 10, None))
        assert s2.collect_garbage(now=time.time()) == 1
        assert [staging_dir(data_dir, CID, CID, fid).is_dir() for fid in names] == [
            False,
            True,
            True,
            True,
            True,
        ]
        check_export(data_dir, b"abc", {"name": "f"}, fid="done", esc_fid="done")
        assert s2.collect_garbage(now=time.time() + 301) == 4
        check_export(data_dir, b"abc", {"name": "f"}, fid="done", esc_fid="done")
        await s2.close()

    run(main())


# -- identifiers that are not path friendly ------------------------------------------------

NASTY = [  # (clientId, fileId, esc(clientId), esc(fileId)) escaped by hand (docs/protocol.md §6)
    ("a/b", "../../etc", "a%2Fb", "..%2F..%2Fetc"),
    ("..", ".", "%2E%2E", "%2E"),
    (".", "..", "%2E", "%2E%2E"),
    ("100%", "%2F", "100%25", "%252F"),
    ("😀 client", "файл 1", "😀 client", "файл 1"),
    ("x:y\\z", "tab\there", "x%3Ay%5Cz", "tab%09here"),
    ("\x7f\u00a0\x85", "nul\x00", "%7F\u00a0%C2%85", "nul%00"),
    (".hidden", "...", ".hidden", "..."),
    ("/" * 85, "😀" * 63 + "abc", "%2F" * 85, "😀" * 63 + "abc"),  # 255 bytes escaped
    ("c" * 255, "%" * 85, "c" * 255, "%25" * 85),
]


@pytest.mark.parametrize(("cid", "fid", "esc_cid", "esc_fid"), NASTY)
def test_nasty_ids_stay_inside_data_dir(
    tmp_path: Path, cid: str, fid: str, esc_cid: str, esc_fid: str
) -> None:
    data_dir = tmp_path / "inner" / "data"
    data = payload(5000)
    meta = {"name": "%2E.. name ✓"}
    assert len(esc_cid.encode()) <= 255 and len(esc_fid.encode()) <= 255

    async def main() -> None:
        s1 = TransferStore(data_dir)
        s1.init(cid, fid, meta_of(**meta))
        send(s1, data, 0, 2000, cid=cid, fid=fid)
        s1.commit()
        stage = staging_dir(data_dir, cid, esc_cid, esc_fid)
        assert sorted(os.listdir(stage)) == ["data", "journal", "meta"]
        crash(s1)
        s2 = TransferStore(data_dir)
        t = await open_transfer(s2, cid, fid)
        assert (t.client_id, t.file_id, t.dir) == (cid, fid, stage)
        assert list(t.asm.ranges) == [(0, 2000)]
        send(s2, data, 2000, 3000, cid=cid, fid=fid)
        s2.commit()
        await fin(s2, 5000, sha(data), cid=cid, fid=fid)
        check_export(data_dir, data, meta, cid, fid, esc_cid, esc_fid)
        await s2.close()
        s3 = TransferStore(data_dir)  # found again from disk
        got = s3.fin_prepare(cid, fid, 5000, sha(data))
        assert isinstance(got, ExportInfo) and got.path.read_bytes() == data
        await s3.close()

    run(main())
    assert os.listdir(tmp_path) == ["inner"]
    assert os.listdir(tmp_path / "inner") == ["data"]
    for root, dirs, files in os.walk(data_dir):
        for name in dirs + files:
            assert Path(root, name).resolve().is_relative_to(data_dir.resolve())


def test_ids_that_escape_alike_do_not_collide(data_dir: Path) -> None:
    pairs = [("a/b", "f"), ("a%2Fb", "f"), ("a", "b/f"), ("a", "b%2Ff"), ("a/b", "f/")]

    async def main() -> None:
        s = TransferStore(data_dir)
        for i, (cid, fid) in enumerate(pairs):
            s.init(cid, fid, meta_of(name="same"))
            send(s, payload(1000, seed=i), 0, 1000, cid=cid, fid=fid)
        s.commit()
        assert len({t.dir for t in s.open_transfers()}) == len(pairs)
        for i, (cid, fid) in enumerate(pairs):
            info = await fin(s, 1000, sha(payload(1000, seed=i)), cid=cid, fid=fid)
            assert info.path.read_bytes() == payload(1000, seed=i)
        await s.close()

    run(main())


def test_gc_finds_dot_named_transfers(data_dir: Path) -> None:
    async def main() -> None:
        s = TransferStore(data_dir)
        s.init(".hidden", "...", meta_of(name="f"))
        s.commit()
        crash(s)
        s2 = TransferStore(data_dir)
        assert s2.collect_garbage(now=time.time() + 10**6) == 1
        assert not staging_dir(data_dir, ".hidden", ".hidden", "...").exists()
        await s2.close()

    run(main())


def test_longest_name_exports_with_manifest(data_dir: Path) -> None:
    name = "é" * 118 + "abcd"  # 240 bytes: the longest name docs/protocol.md §3 allows
    assert len(name.encode()) == 240
    data = payload(100)

    async def main() -> None:
        s = TransferStore(data_dir)
        s.init(CID, FID, meta_of(name=name))
        send(s, data, 0, 100)
        s.commit()
        await fin(s, 100, sha(data))
        check_export(data_dir, data, {"name": name})
        await s.close()
        s2 = TransferStore(data_dir)
        got = s2.get(CID, FID)
        assert isinstance(got, ExportInfo) and got.meta == meta_of(name=name)
        await s2.close()

    run(main())


# -- exports found on disk -----------------------------------------------------------------


def test_init_checksum_survives_restart_when_fin_checksum_won(data_dir: Path) -> None:
    data = payload(2000)
    fields = {"name": "f", "checksum": hashlib.sha256(b"stale").hexdigest()}

    async def main() -> None:
        s = TransferStore(data_dir)
        s.init(CID, FID, meta_of(**fields))
        send(s, data, 0, 2000)
        s.commit()
        await fin(s, 2000, sha(data))  # fin's checksum wins over the stale init one
        check_export(data_dir, data, {"name": "f"})
        await s.close()
        s2 = TransferStore(data_dir)
        s2.init(CID, FID, meta_of(**fields))  # the very same init: identical metadata
        with pytest.raises(FileMetaConflict):
            s2.init(CID, FID, meta_of(name="f", checksum=hashlib.sha256(data).hexdigest()))
        with pytest.raises(FileMetaConflict):
            s2.init(CID, FID, meta_of(name="f"))
        got = s2.fin_prepare(CID, FID, 2000, None)
        assert isinstance(got, ExportInfo)
        assert got.checksum == hashlib.sha256(data).hexdigest().upper()
        await s2.close()

    run(main())


@pytest.mark.parametrize(
    "manifest",
    [
        b"not json",
        b'["filemeta", 1, {"checksum": "' + b"AB" * 32 + b'"}]',  # no name
        b'["filemeta", 1, {"name": "f", "checksum": "' + b"AB" * 32 + b'", "size": -1}]',
        b'["filemeta", 1, {"name": "f"}]',  # no checksum
    ],
)
def test_damaged_export_does_not_block_a_new_upload(data_dir: Path, manifest: bytes) -> None:
    data = payload(1000)

    async def main() -> None:
        d = export_dir(data_dir, CID, FID, CID, FID)
        d.mkdir(parents=True)
        (d / "f").write_bytes(b"old")
        (d / "f.MANIFEST.json").write_bytes(manifest)
        s = TransferStore(data_dir)
        assert s.get(CID, FID) is None
        s.init(CID, FID, meta_of(name="f"))
        send(s, data, 0, 1000)
        s.commit()
        await fin(s, 1000, sha(data))
        check_export(data_dir, data, {"name": "f"})
        await s.close()

    run(main())


# -- races with the worker threads ---------------------------------------------------------


@contextlib.contextmanager
def held_executor(loop: asyncio.AbstractEventLoop) -> Iterator[threading.Event]:
    """A one-thread default executor kept busy until the yielded event is set, so that the
    store's blocking work queues up behind it at a point the test chooses."""
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    release = threading.Event()
    busy = loop.run_in_executor(None, release.wait)
    try:
        yield release
    finally:
        release.set()
        del busy


def test_group_commit_writes_only_its_batch(data_dir: Path) -> None:
    data = payload(3000)

    async def main() -> None:
        s = TransferStore(data_dir, durability="sync")
        journal = staging_dir(data_dir, CID, CID, FID) / "journal"
        with held_executor(asyncio.get_running_loop()) as release:
            send(s, data, 0, 1000)
            first = asyncio.ensure_future(s.commit_sync())
            await asyncio.sleep(0)  # it took its batch; its flush waits for the thread
            send(s, data, 1000, 1000)  # placed after that batch was taken
            assert needs_commit(s)
            release.set()
            await first
        assert spans(journal_records(journal)) == [(0, 1000)]
        await s.commit_sync()
        assert spans(journal_records(journal)) == [(0, 1000), (1000, 2000)]
        await s.close()

    run(main())


def test_group_commit_waits_for_the_one_holding_its_records(data_dir: Path) -> None:
    """Connections share the store's batch: a commit that finds its records taken by a
    commit still running must not return (its caller would acknowledge data not yet on
    disk) until that one finished."""
    data = payload(1000)

    async def main() -> None:
        s = TransferStore(data_dir, durability="sync")
        journal = staging_dir(data_dir, CID, CID, FID) / "journal"
        with held_executor(asyncio.get_running_loop()) as release:
            send(s, data, 0, 1000)
            first = asyncio.ensure_future(s.commit_sync())  # another connection's commit
            await asyncio.sleep(0)  # it took the batch, these records with it
            assert not needs_commit(s)
            second = asyncio.ensure_future(s.commit_sync())  # this connection's
            for _ in range(5):
                await asyncio.sleep(0)
            assert not second.done()  # the records are not durable yet
            assert journal_records(journal) == []
            release.set()
            await second
            assert first.done()
            assert spans(journal_records(journal)) == [(0, 1000)]
        await s.close()

    run(main())


@pytest.mark.parametrize("how", ["abort", "collect_garbage"])
def test_transfer_discarded_while_checkpoint_flush_queued(data_dir: Path, how: str) -> None:
    data = payload(2000)

    async def main() -> None:
        s = TransferStore(data_dir, durability="fast", flush_bytes=1000)
        s.init(CID, FID, meta_of(name="f"))
        with held_executor(asyncio.get_running_loop()) as release:
            send(s, data, 0, 1000)  # starts a checkpoint
            s.commit()
            await asyncio.sleep(0)  # its flush is queued behind the held thread
            if how == "abort":
                s.abort(CID, FID)
            else:
                assert s.collect_garbage(now=time.time() + 10**6) == 1
            release.set()
            await asyncio.gather(*s._tasks)
        assert not staging_dir(data_dir, CID, CID, FID).exists()
        s.init(CID, FID, meta_of(name="g"))  # the fileId is free again
        send(s, data, 0, 2000)
        s.commit()
        await asyncio.gather(*s._tasks)
        await fin(s, 2000, sha(data))
        check_export(data_dir, data, {"name": "g"})
        await s.close()

    run(main())


# -- the cost of fin ---------------------------------------------------------------------------


@pytest.mark.parametrize("durability", DURABILITIES)
def test_in_order_upload_needs_no_reread_and_export_is_a_rename(
    data_dir: Path, durability: Durability
) -> None:
    data = payload(64_000)

    async def main() -> None:
        s = TransferStore(data_dir, durability=durability)
        s.init(CID, FID, meta_of(name="f"))
        for off in range(0, len(data), 4096):
            send(s, data, off, 4096)
            await commit(s)
        t = await open_transfer(s)
        assert t.asm.hashed == len(data)  # hashed as it arrived: fin reads nothing back
        inode = os.stat(staging_dir(data_dir, CID, CID, FID) / "data").st_ino
        info = await fin(s, len(data), sha(data))
        assert os.stat(info.path).st_ino == inode  # moved, not copied
        check_export(data_dir, data, {"name": "f"})
        await s.close()

    run(main())


@pytest.mark.parametrize("durability", DURABILITIES)
def test_fin_right_after_uncommitted_segments(data_dir: Path, durability: Durability) -> None:
    """A pipelining client: its fin is handled before the last segments were committed."""
    data = payload(9000)

    async def main() -> None:
        s = TransferStore(data_dir, durability=durability)
        s.init(CID, FID, meta_of(name="f"))
        send(s, data, 0, 3000)
        await commit(s)
        send(s, data, 6000, 3000)
        send(s, data, 3000, 3000)
        info = await fin(s, 9000, sha(data))
        await commit(s)  # the late group commit of those segments finds nothing to do
        assert info.path.read_bytes() == data
        check_export(data_dir, data, {"name": "f"})
        await s.close()

    run(main())


@pytest.mark.parametrize("durability", DURABILITIES)
def test_close_persists_and_checkpoints(data_dir: Path, durability: Durability) -> None:
    data = payload(20_000)

    async def main() -> None:
        s1 = TransferStore(data_dir, durability=durability)
        s1.init(CID, FID, meta_of(name="f"))
        send(s1, data, 0, 8000)
        send(s1, data, 12_000, 8000)
        await commit(s1)
        send(s1, data, 8000, 1000)  # not committed yet: close() persists it too
        await s1.close()
        assert s1.open_transfers() == []
        records = journal_records(staging_dir(data_dir, CID, CID, FID) / "journal")
        assert records[-1].type is jr.Rec.CHECKPOINT
        s2 = TransferStore(data_dir, durability=durability)
        t = await open_transfer(s2)
        assert list(t.asm.ranges) == [(0, 9000), (12_000, 20_000)]
        assert t.asm.hashed == 9000
        send(s2, data, 9000, 3000)
        await commit(s2)
        await fin(s2, 20_000, sha(data))
        check_export(data_dir, data, {"name": "f"})
        await s2.close()

    run(main())

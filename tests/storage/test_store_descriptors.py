"""The descriptors of open transfers: one each, a bounded cache of them, and the truth of a
fin when the process has no descriptor left (issue 13: a fleet uploading at once).

Descriptors are counted in ``/proc/self/fd``; the limit is the real ``RLIMIT_NOFILE`` of this
process, lowered for one step and restored.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftserver.errors import ServerBusy
from ftserver.export.base import ExportInfo
from ftserver.meta import parse_filemeta
from ftserver.transfer.store import Transfer, TransferStore

from .retry import settle

CID = "fleet-1"


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def meta(name: str = "f.bin") -> object:
    return parse_filemeta(json.dumps({"name": name}).encode())


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(autouse=True)
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def test_each_open_transfer_holds_one_descriptor(
    data_dir: Path, loop: asyncio.AbstractEventLoop
) -> None:
    async def body() -> None:
        store = TransferStore(data_dir)
        before = fds()
        for i in range(50):
            store.init(CID, f"f{i}", meta())  # type: ignore[arg-type]
            store.segment(CID, f"f{i}", 0, memoryview(b"x" * 100))
        store.commit()
        assert fds() - before == 50  # the data file's descriptor, which holds the lock
        await store.close()
        assert fds() == before

    loop.run_until_complete(body())


def test_many_transfers_share_a_bounded_budget(
    data_dir: Path, loop: asyncio.AbstractEventLoop
) -> None:
    """300 transfers through a cache of 20: never more than 20 descriptors, every file
    exported whole; closed ones are reopened from disk when a command names them again."""

    async def body() -> None:
        store = TransferStore(data_dir, max_open=20)
        before = fds()
        peak = 0
        files = {f"f{i}": os.urandom(1000 + i) for i in range(300)}
        for fid, data in files.items():
            await settle(lambda fid=fid: store.init(CID, fid, meta(fid)))  # type: ignore[misc]
            await settle(
                lambda fid=fid, data=data: store.segment(CID, fid, 0, memoryview(data[:500]))
            )  # type: ignore[misc]
            store.commit()
            peak = max(peak, fds() - before)
        for fid, data in files.items():  # the second halves: most transfers were closed
            await settle(
                lambda fid=fid, data=data: store.segment(CID, fid, 500, memoryview(data[500:]))
            )  # type: ignore[misc]
            store.commit()
            peak = max(peak, fds() - before)
        assert store.evicted >= 280
        for fid, data in files.items():
            got = await settle(
                lambda fid=fid, data=data: store.fin_prepare(CID, fid, len(data), None)
            )  # type: ignore[misc]
            if not isinstance(got, ExportInfo):
                got = await store.fin_export(got, len(data), None)
            assert got.path.read_bytes() == data
            assert got.checksum == hashlib.sha256(data).hexdigest().upper()
            peak = max(peak, fds() - before)
        assert peak <= 20 + 2  # the cache, plus a recovery's lock while its thread runs
        await store.close()
        assert fds() == before

    loop.run_until_complete(body())


def test_a_full_cache_of_busy_transfers_is_server_busy(
    data_dir: Path, loop: asyncio.AbstractEventLoop
) -> None:
    async def body() -> None:
        store = TransferStore(data_dir, max_open=3)
        for i in range(3):
            store.init(CID, f"f{i}", meta())  # type: ignore[arg-type]
            store.segment(CID, f"f{i}", 0, memoryview(b"abc"))  # dirty until committed
        with pytest.raises(ServerBusy) as busy:
            store.init(CID, "f3", meta())  # type: ignore[arg-type]
        assert (busy.value.reason_code, busy.value.description) == (0x97, "server_busy")
        assert store.busy == 1
        store.commit()
        store.init(CID, "f3", meta())  # type: ignore[arg-type]  # now one can be closed
        assert store.evicted == 1
        await store.close()

    loop.run_until_complete(body())


def test_fin_without_a_descriptor_is_busy_and_exports_nothing(
    data_dir: Path, loop: asyncio.AbstractEventLoop
) -> None:
    """The false failure of issue 13: a fin that ran out of descriptors after the file was
    moved into the exports answered 0x80. Now every descriptor the export needs is taken
    before anything irreversible: out of descriptors, the fin is 0x97 ``server_busy`` and
    nothing is exported; with descriptors again, the same fin exports the file."""
    data = os.urandom(5000)

    async def body() -> None:
        store = TransferStore(data_dir)
        store.init(CID, "f", meta())  # type: ignore[arg-type]
        store.segment(CID, "f", 0, memoryview(data))
        store.commit()
        got = store.fin_prepare(CID, "f", len(data), None)
        assert isinstance(got, Transfer)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: None)  # the executor's thread exists
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        free = os.dup(0)  # the lowest free descriptor: not one more can be opened below it
        os.close(free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (free, hard))
        try:
            with pytest.raises(ServerBusy):
                await store.fin_export(got, len(data), None)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert store.exporter.lookup(CID, "f") is None
        assert not list((data_dir / "exports").rglob("f.bin"))
        got = store.fin_prepare(CID, "f", len(data), None)
        assert isinstance(got, Transfer)
        info = await store.fin_export(got, len(data), None)
        assert info.path.read_bytes() == data
        assert store.open_transfers() == []
        await store.close()

    loop.run_until_complete(body())

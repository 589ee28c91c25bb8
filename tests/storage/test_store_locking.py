"""Two stores on one data directory, as two worker processes have: a transfer is open in one
of them at a time (a flock on its staging directory), a client's transfers move when the
client does, a fin waits for an export running in the other store, and the collector never
deletes what the other store holds open. flock locks belong to open file descriptions, so
two stores in one process contend exactly as two processes do."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from ftserver.errors import Outcome, TransferBusy
from ftserver.meta import parse_filemeta
from ftserver.mqtt.session import SessionRegistry
from ftserver.transfer.dispatch import Deferred, Dispatcher
from ftserver.transfer.store import ExportInfo, Transfer, TransferStore

from .retry import settle

META = parse_filemeta(json.dumps({"name": "f.bin"}).encode())


def two_stores(tmp_path: Path) -> tuple[TransferStore, TransferStore]:
    return TransferStore(tmp_path), TransferStore(tmp_path)


def test_open_in_one_store_at_a_time(tmp_path: Path) -> None:
    async def body() -> None:
        a, b = two_stores(tmp_path)
        a.init("c", "f", META)
        a.segment("c", "f", 0, memoryview(b"hello"))
        a.commit()
        with pytest.raises(TransferBusy):
            b.get("c", "f")
        with pytest.raises(TransferBusy):
            b.segment("c", "f", 5, memoryview(b"world"))
        assert a.release_client("c") == 1
        got = await settle(lambda: b.get("c", "f"))
        assert isinstance(got, Transfer) and list(got.asm.ranges) == [(0, 5)]
        with pytest.raises(TransferBusy):
            a.get("c", "f")
        b.segment("c", "f", 5, memoryview(b"world"))
        t = b.fin_prepare("c", "f", 10, None)
        assert isinstance(t, Transfer)
        info = await b.fin_export(t, 10, None)
        assert info.path.read_bytes() == b"helloworld"
        # the export is visible from the other store once it is done
        assert isinstance(a.get("c", "f"), ExportInfo)
        await a.close()
        await b.close()

    asyncio.run(body())


def test_other_clients_are_not_released(tmp_path: Path) -> None:
    async def body() -> None:
        a, b = two_stores(tmp_path)
        a.init("c1", "f", META)
        a.init("c2", "f", META)
        assert a.release_client("c1") == 1
        assert isinstance(await settle(lambda: b.get("c1", "f")), Transfer)
        with pytest.raises(TransferBusy):
            b.get("c2", "f")
        await a.close()
        await b.close()

    asyncio.run(body())


def test_collector_skips_transfers_open_elsewhere(tmp_path: Path) -> None:
    async def body() -> None:
        a, b = two_stores(tmp_path)
        a.init("c", "f", META)
        a.commit()
        far_future = 10**10
        assert b.collect_garbage(now=far_future) == 0  # open in a: not b's to delete
        assert a.staging_dir("c", "f").is_dir()
        assert a.collect_garbage(now=far_future) == 1  # its owner collects it
        assert not a.staging_dir("c", "f").exists()
        await a.close()
        await b.close()

    asyncio.run(body())


def test_fin_in_other_store_waits_for_export(tmp_path: Path) -> None:
    """A client moved to worker B while worker A exports its file: B's fin waits for A's
    export and answers from its result; a segment waits too, then is discarded."""

    async def body() -> None:
        a, b = two_stores(tmp_path)
        data = b"x" * 100_000
        a.init("c", "f", META)
        a.segment("c", "f", 0, memoryview(data))
        t = a.fin_prepare("c", "f", len(data), None)
        assert isinstance(t, Transfer)
        export = a.fin_export(t, len(data), None)
        a.release_client("c")  # the client left; the export finishes here first
        disp = Dispatcher(b, SessionRegistry(), max_file_size=1 << 30, assemble_timeout=10)
        fin = disp.process("c", f"$file/f/fin/{len(data)}", b"", 1)
        seg = disp.process("c", "$file/f/0", b"y" * 10, 1)
        assert isinstance(fin, Deferred) and fin.ack is None
        assert isinstance(seg, Deferred) and seg.ack is None
        await export
        fin_result = await fin.final
        seg_result = await seg.final
        assert isinstance(fin_result, Outcome) and fin_result.reason_code == 0
        assert seg_result.reason_code == 0
        got = b.get("c", "f")
        assert isinstance(got, ExportInfo) and got.path.read_bytes() == data
        await a.close()
        await b.close()

    asyncio.run(body())

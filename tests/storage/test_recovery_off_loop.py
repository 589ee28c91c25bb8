"""Recovery runs off the event loop: while one transfer is reopened from disk (which can read
its whole data file), the other transfers of the same worker keep being served.

A command for a transfer staged on disk but not open gets ``TransferBusy(ready=...)``; the
dispatcher waits for ``ready`` and runs the command again. To show the overlap without
measuring time, the staged transfer's ``meta`` is a FIFO: its recovery blocks reading it
until the test writes the metadata, after it has served the other transfer's segments. A
recovery on the event loop would block the test itself (and fail on its timeout).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import blake3
import pytest
import uvloop

from ftserver.errors import SUCCESS, Outcome, TransferBusy
from ftserver.mqtt.session import SessionRegistry
from ftserver.storage import journal as jr
from ftserver.storage import staging
from ftserver.transfer.dispatch import Deferred, Dispatcher
from ftserver.transfer.store import Transfer, TransferStore

from .retry import settle

T = TypeVar("T")

CID = "client-1"
BIG = "big"
SEG = 1 << 16
#: the staged transfer: large enough that reopening it reads a good deal (every range is
#: re-hashed with BLAKE3, and the whole file with SHA-256)
BIG_DATA = random.Random(3).randbytes(16 << 20)
META = {"name": "big.bin", "size": len(BIG_DATA)}

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
uvloop.new_event_loop().close()  # its process-wide pipe, opened before any fd snapshot


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, T]], T]:
    """Run a test body on each event loop; any exception the loop reports fails the test."""

    def runner(coro: Coroutine[Any, Any, T]) -> T:
        errors: list[dict[str, Any]] = []
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as r:
            r.get_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
            result = r.run(asyncio.wait_for(coro, 60))
        assert errors == []
        return result

    return runner


@pytest.fixture(autouse=True)
def no_fd_leak() -> Iterator[None]:
    before = set(os.listdir("/proc/self/fd"))
    yield
    assert set(os.listdir("/proc/self/fd")) - before == set()


def stage_big(data_dir: Path, *, missing: int = SEG) -> Path:
    """Stage BIG_DATA but its last ``missing`` bytes, as a crashed worker leaves it in fast
    durability: no checkpoint, one journal record per segment, written in reverse order (so
    the hash of the prefix can only be taken once everything is marked)."""
    d = staging.transfer_dir(staging.staging_root(data_dir), CID, BIG)
    d.mkdir(parents=True)
    have = len(BIG_DATA) - missing
    (d / "data").write_bytes(BIG_DATA[:have])
    records = [
        jr.range_record(off, SEG, blake3.blake3(BIG_DATA[off : off + SEG]).digest(length=16))
        for off in reversed(range(0, have, SEG))
    ]
    (d / "journal").write_bytes(jr.HEADER + b"".join(records))
    return d


def gate_meta(d: Path) -> Callable[[], None]:
    """Make ``d/meta`` a FIFO; the returned function (blocking: run it in a thread) writes the
    metadata into it once a reader (the recovery) has it open."""
    os.mkfifo(d / "meta")

    def release() -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                fd = os.open(d / "meta", os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                    raise
                time.sleep(0.001)  # no reader yet: the recovery has not reached it
                continue
            try:
                os.set_blocking(fd, True)
                os.write(fd, json.dumps(META).encode())
            finally:
                os.close(fd)
            return

    return release


def dispatcher(store: TransferStore) -> Dispatcher:
    return Dispatcher(store, SessionRegistry(), max_file_size=1 << 40, assemble_timeout=30)


def test_other_transfers_are_served_while_one_recovers(
    tmp_path: Path, run: Callable[[Coroutine[Any, Any, None]], None]
) -> None:
    data_dir = tmp_path / "data"
    d = stage_big(data_dir)
    release = gate_meta(d)
    other = random.Random(4).randbytes(64 * 1024)
    tail = len(BIG_DATA) - SEG

    async def body() -> None:
        loop = asyncio.get_running_loop()
        store = TransferStore(data_dir)
        disp = dispatcher(store)
        events: list[str] = []

        # two commands for the staged transfer: both wait for the one recovery
        resend = disp.process(CID, f"$file/{BIG}/{tail}", BIG_DATA[tail:], 1)
        again = disp.process(CID, f"$file/{BIG}/0", BIG_DATA[:SEG], 1)  # a retransmission
        assert isinstance(resend, Deferred) and resend.ack is None
        assert isinstance(again, Deferred) and again.ack is None
        with pytest.raises(TransferBusy) as first:
            store.get(CID, BIG)
        with pytest.raises(TransferBusy) as second:
            store.get(CID, BIG)
        ready = first.value.ready
        assert ready is not None and second.value.ready is ready

        async def resend_done() -> Outcome:
            got = await resend.final
            events.append("big: resend acknowledged")
            return got

        resent = asyncio.ensure_future(resend_done())
        # meanwhile another transfer of the same worker is served, segment after segment
        assert disp.process(CID, "$file/other/init", json.dumps({"name": "o"}).encode(), 1) == (
            SUCCESS
        )
        for i, off in enumerate(range(0, len(other), 4096)):
            got = disp.process(CID, f"$file/other/{off}", other[off : off + 4096], 1)
            assert got == SUCCESS  # answered at once: not deferred behind the recovery
            store.commit()
            events.append(f"other: segment {i}")
            await asyncio.sleep(0)
            assert not ready.done()  # the recovery is still reading its (gated) meta
        await loop.run_in_executor(None, release)
        # and while it reads the data file, still more
        while not ready.done():
            assert disp.process(CID, "$file/other/0", other[:4096], 1) == SUCCESS
            store.commit()
            await asyncio.sleep(0)
        assert await resent == SUCCESS
        assert events.index("big: resend acknowledged") == len(events) - 1
        assert len(events) == 1 + len(other) // 4096
        assert await again.final == SUCCESS
        store.commit()
        done = await await_outcome(disp.process(CID, f"$file/{BIG}/fin/{len(BIG_DATA)}", b"", 1))
        assert done == SUCCESS
        done = await await_outcome(disp.process(CID, f"$file/other/fin/{len(other)}", b"", 1))
        assert done == SUCCESS
        await store.close()

    run(body())
    exports = {p.name: p for p in (data_dir / "exports").rglob("*") if p.is_file()}
    assert exports["big.bin"].read_bytes() == BIG_DATA
    assert exports["o"].read_bytes() == other
    manifest = json.loads(exports["big.bin.MANIFEST.json"].read_bytes())
    assert manifest[2]["checksum"] == hashlib.sha256(BIG_DATA).hexdigest().upper()


def await_outcome(result: Outcome | Deferred | None) -> Any:
    """The awaitable (or the outcome) a dispatcher result ends with."""
    assert result is not None
    return result if isinstance(result, Outcome) else result.final


def test_recovery_error_reaches_the_commands(
    tmp_path: Path, run: Callable[[Coroutine[Any, Any, None]], None]
) -> None:
    """The meta file cannot be read (here: a directory is in its place): every command that
    waited for the recovery, and the next one, hears ``eisdir`` (0x80, a storage error),
    and nothing stays locked. (The lock is the data file's descriptor, so the data file
    itself must open for a recovery to start.)"""
    data_dir = tmp_path / "data"
    d = stage_big(data_dir)
    (d / "meta").unlink(missing_ok=True)
    (d / "meta").mkdir()

    async def body() -> None:
        store = TransferStore(data_dir)
        disp = dispatcher(store)
        waiting = [disp.process(CID, f"$file/{BIG}/0", b"x" * 10, 1) for _ in range(2)]
        waiting.append(disp.process(CID, f"$file/{BIG}/init", json.dumps(META).encode(), 1))
        outcomes = [await await_outcome(w) for w in waiting]
        assert [(o.reason_code, o.description) for o in outcomes] == [(0x80, "eisdir")] * 3
        later = await await_outcome(disp.process(CID, f"$file/{BIG}/abort", b"", 1))
        assert (later.reason_code, later.description) == (0x80, "eisdir")
        os.close(staging.lock_dir(d))  # released by the failed recoveries
        assert store.open_transfers() == []
        await store.close()

    run(body())


def test_client_released_while_its_transfer_recovers(
    tmp_path: Path, run: Callable[[Coroutine[Any, Any, None]], None]
) -> None:
    """The client moved to another worker during the recovery: the transfer is closed as
    soon as it is installed, and the other worker's store opens it."""
    data_dir = tmp_path / "data"
    d = stage_big(data_dir, missing=0)
    release = gate_meta(d)

    async def body() -> None:
        a, b = TransferStore(data_dir), TransferStore(data_dir)
        with pytest.raises(TransferBusy) as busy:
            a.get(CID, BIG)
        ready = busy.value.ready
        assert ready is not None
        assert a.release_client(CID) == 0  # nothing open yet: closed once recovered
        with pytest.raises(TransferBusy) as elsewhere:
            b.get(CID, BIG)
        assert elsewhere.value.ready is None  # locked by a's recovery: b can only poll
        await asyncio.get_running_loop().run_in_executor(None, release)
        await asyncio.wait([asyncio.ensure_future(ready)])
        assert a.open_transfers() == []
        (d / "meta").unlink()  # the FIFO did its job; b reads an ordinary file
        (d / "meta").write_bytes(json.dumps(META).encode())
        t = await settle(lambda: b.get(CID, BIG))
        assert isinstance(t, Transfer) and list(t.asm.ranges) == [(0, len(BIG_DATA))]
        assert t.asm.hashed == len(BIG_DATA)  # a's close checkpointed what it had read
        await a.close()
        await b.close()

    run(body())


def test_close_waits_for_a_running_recovery(
    tmp_path: Path, run: Callable[[Coroutine[Any, Any, None]], None]
) -> None:
    data_dir = tmp_path / "data"
    d = stage_big(data_dir, missing=0)
    release = gate_meta(d)

    async def body() -> None:
        store = TransferStore(data_dir)
        with pytest.raises(TransferBusy):
            store.get(CID, BIG)
        closing = asyncio.ensure_future(store.close())
        await asyncio.sleep(0)
        assert not closing.done()
        await asyncio.get_running_loop().run_in_executor(None, release)
        await closing
        assert store.open_transfers() == []
        os.close(staging.lock_dir(d))  # closed, not leaked

    run(body())

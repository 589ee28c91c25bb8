"""Recovery after a crash of the process vs after a machine restart, told apart by the boot
id in the journal; and the store entry point of the native segment path (``placed_run``).

The other boot is simulated by the store's ``boot_id`` reader (a plain function). What
recovery reads is measured with ``/proc/self/io`` (``rchar``: every byte this process read),
around the recovery alone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import blake3
import pytest

import ftcore
from ftserver.storage import journal as jr
from ftserver.transfer.store import TransferStore

from .test_store import (  # noqa: F401  (fixtures: both loops, no descriptor leak)
    CID,
    FID,
    check_export,
    crash,
    fin,
    held_executor,
    journal_records,
    loop_flavour,
    meta_of,
    no_fd_leak,
    open_transfer,
    payload,
    run,
    send,
    sha,
    staging_dir,
)

MiB = 1 << 20
SIZE = 12 * MiB
SEG = 64 * 1024
CHECKPOINTED = 4 * MiB  # flush_bytes: checkpoints at 4 and 8 MiB; 8 MiB.. after the last
RECEIVED = 11 * MiB + 3 * SEG  # then the process dies


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def zero(path: Path, offset: int, n: int) -> None:
    """What a power cut does to a page that never reached the disk."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(n))


def rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


async def upload_then_crash(s: TransferStore, data: bytes, end: int, batch: int = 4) -> None:
    """Upload [0, end) in order, ``batch`` segments per commit, with the checkpoints it
    triggers finished, then die without closing anything."""
    s.init(CID, FID, meta_of(name="f", size=len(data)))
    for i, off in enumerate(range(0, end, SEG)):
        send(s, data, off, min(SEG, end - off))
        if i % batch == batch - 1:
            s.commit()
            await asyncio.sleep(0)
    s.commit()
    await asyncio.gather(*s._tasks)
    crash(s)


async def recover(s: TransferStore) -> tuple[int, int]:
    """(bytes read while recovering, hashed) of the transfer reopened by ``s``."""
    before = rchar()
    t = await open_transfer(s)
    return rchar() - before, t.asm.hashed


def test_same_boot_resumes_without_reading_the_data(data_dir: Path) -> None:
    data = payload(SIZE)

    async def main() -> None:
        s1 = TransferStore(data_dir, flush_bytes=CHECKPOINTED, boot_id=lambda: "boot-A")
        await upload_then_crash(s1, data, RECEIVED)
        s2 = TransferStore(data_dir, boot_id=lambda: "boot-A")
        read, hashed = await recover(s2)
        assert hashed == RECEIVED  # the recorded state, not the last checkpoint's 8 MiB
        assert read < 64 * 1024  # the journal and the meta file, nothing of the 11 MiB
        for off in range(RECEIVED, SIZE, SEG):
            send(s2, data, off, SEG)
        s2.commit()
        await fin(s2, SIZE, sha(data))
        check_export(data_dir, data, {"name": "f", "size": SIZE})
        await s2.close()

    run(main())


def test_state_hashed_during_a_checkpoint_follows_it(data_dir: Path) -> None:
    """Segments hashed while a checkpoint's flush runs record their states before the
    checkpoint record; the newest state is recorded again after it, so a restart still
    resumes from the newest one."""
    data = payload(4 * MiB)

    async def main() -> None:
        s1 = TransferStore(data_dir, flush_bytes=MiB, boot_id=lambda: "boot-A")
        s1.init(CID, FID, meta_of(name="f"))
        with held_executor(asyncio.get_running_loop()) as release:
            for off in range(0, MiB, SEG):
                send(s1, data, off, SEG)
            s1.commit()  # the checkpoint is due: it takes its state, its flush waits
            await asyncio.sleep(0)
            for off in range(MiB, 3 * MiB, SEG):
                send(s1, data, off, SEG)
                s1.commit()
            release.set()
            await asyncio.gather(*s1._tasks)
        records = journal_records(staging_dir(data_dir, CID, CID, FID) / "journal")
        last_cp = max(i for i, r in enumerate(records) if r.type is jr.Rec.CHECKPOINT)
        after = [r.run() for r in records[last_cp + 1 :]]
        assert after and after[-1].state is not None
        assert ftcore.RollingSha256.loads(after[-1].state).length == 3 * MiB
        crash(s1)
        s2 = TransferStore(data_dir, boot_id=lambda: "boot-A")
        read, hashed = await recover(s2)
        assert hashed == 3 * MiB and read < 64 * 1024
        await s2.close()

    run(main())


def test_other_boot_verifies_what_was_not_flushed_then_claims_its_boot(data_dir: Path) -> None:
    data = payload(SIZE)

    async def main() -> None:
        s1 = TransferStore(data_dir, flush_bytes=CHECKPOINTED, boot_id=lambda: "boot-A")
        await upload_then_crash(s1, data, RECEIVED)
        journal = staging_dir(data_dir, CID, CID, FID) / "journal"
        checkpoint = jr.replay(journal).checkpoint
        assert checkpoint is not None
        checkpointed = int.from_bytes(checkpoint[4:12], "little")  # FTA1, hashed u64, ...
        assert CHECKPOINTED <= checkpointed < RECEIVED
        s2 = TransferStore(data_dir, boot_id=lambda: "boot-B")
        read, hashed = await recover(s2)
        assert hashed == RECEIVED  # everything survived: all of it is kept
        assert read >= RECEIVED - checkpointed  # re-hashed from the last checkpoint
        records, _ = jr.read_journal(journal)
        assert [r.type for r in records] == [jr.Rec.OPENED, jr.Rec.CHECKPOINT]
        assert records[0].opened()[1] == "boot-B"
        crash(s2)
        # a crash of that process, same boot: nothing is read again
        s3 = TransferStore(data_dir, boot_id=lambda: "boot-B")
        read, hashed = await recover(s3)
        assert hashed == RECEIVED and read < 64 * 1024
        for off in range(RECEIVED, SIZE, SEG):
            send(s3, data, off, SEG)
        s3.commit()
        await fin(s3, SIZE, sha(data))
        check_export(data_dir, data, {"name": "f", "size": SIZE})
        await s3.close()

    run(main())


def test_other_boot_drops_lost_runs_and_the_client_resends(data_dir: Path) -> None:
    data = payload(SIZE)

    async def main() -> None:
        # no checkpoint: every run is checked through the recorded states from byte 0
        s1 = TransferStore(data_dir, flush_bytes=1 << 40, boot_id=lambda: "boot-A")
        await upload_then_crash(s1, data, RECEIVED)
        # the power cut lost a page of the prefix
        lost = 9 * MiB + 5000
        zero(staging_dir(data_dir, CID, CID, FID) / "data", lost, 4096)
        s2 = TransferStore(data_dir, boot_id=lambda: "boot-B")
        t = await open_transfer(s2)
        # kept: the runs whose recorded state still matches (a batch of 4 segments per run);
        # dropped: the run holding the lost page and all after it
        run_start = lost // (4 * SEG) * (4 * SEG)
        assert list(t.asm.ranges) == [(0, run_start)] and t.asm.hashed == run_start
        for off in range(run_start, SIZE, SEG):
            send(s2, data, off, SEG)
        s2.commit()
        await fin(s2, SIZE, sha(data))
        check_export(data_dir, data, {"name": "f", "size": SIZE})
        await s2.close()

    run(main())


def test_other_boot_checks_out_of_order_runs_by_their_blake3(data_dir: Path) -> None:
    data = payload(200_000)

    async def main() -> None:
        s1 = TransferStore(data_dir, boot_id=lambda: "boot-A")
        s1.init(CID, FID, meta_of(name="f"))
        send(s1, data, 0, 50_000)
        send(s1, data, 100_000, 20_000)  # beyond the prefix: BLAKE3
        s1.commit()
        send(s1, data, 150_000, 20_000)
        s1.commit()
        records = journal_records(staging_dir(data_dir, CID, CID, FID) / "journal")
        assert [r.run().digest for r in records] == [
            None,
            blake3.blake3(data[100_000:120_000]).digest(length=16),
            blake3.blake3(data[150_000:170_000]).digest(length=16),
        ]
        crash(s1)
        zero(staging_dir(data_dir, CID, CID, FID) / "data", 160_000, 100)
        s2 = TransferStore(data_dir, boot_id=lambda: "boot-B")
        t = await open_transfer(s2)
        assert list(t.asm.ranges) == [(0, 50_000), (100_000, 120_000)]
        await s2.close()

    run(main())


def test_journal_of_an_older_version_is_verified(data_dir: Path, tmp_path: Path) -> None:
    """RANGE records and no OPENED (the boot is unknown): checked as after a power cut."""
    data = payload(30_000)
    d = staging_dir(data_dir, CID, CID, FID)
    d.mkdir(parents=True)
    (d / "data").write_bytes(data[:10_000] + bytes(10_000) + data[20_000:])
    b3 = [blake3.blake3(data[o : o + 10_000]).digest(length=16) for o in (0, 10_000, 20_000)]
    (d / "journal").write_bytes(
        jr.HEADER
        + b"".join(jr.range_record(o, 10_000, b3[i]) for i, o in enumerate((0, 10_000, 20_000)))
    )

    async def main() -> None:
        s = TransferStore(data_dir, boot_id=lambda: "boot-A")
        t = await open_transfer(s)
        assert list(t.asm.ranges) == [(0, 10_000), (20_000, 30_000)]
        assert t.asm.hashed == 10_000
        await s.close()

    run(main())


def publish(file_id: str, offset: int, pid: int, body: bytes) -> bytes:
    """An MQTT 3.1.1 QoS 1 PUBLISH of a segment, built by hand (MQTT 3.1.1 §3.3)."""
    topic = f"$file/{file_id}/{offset}".encode()
    rest = len(topic).to_bytes(2, "big") + topic + pid.to_bytes(2, "big") + body
    n, length = len(rest), b""
    while True:
        n, digit = n >> 7, n & 0x7F
        length += bytes([digit | (0x80 if n else 0)])
        if not n:
            break
    return b"\x32" + length + rest


def test_placed_run_journals_the_native_path_and_resumes_without_reading(
    data_dir: Path,
) -> None:
    data = payload(2 * MiB)
    seg = 32 * 1024

    async def main() -> None:
        s1 = TransferStore(data_dir, boot_id=lambda: "boot-A")
        s1.init(CID, FID, meta_of(name="f"))
        send(s1, data, 0, seg)  # the first segment goes the Python way, opening the transfer
        s1.commit()
        t = await open_transfer(s1)
        path = ftcore.SegmentPath(4, 1 << 40, 1 << 20)
        path.open(FID, t.asm)
        packets = [
            publish(FID, off, 1 + i, data[off : off + seg])
            for i, off in enumerate(range(seg, len(data), seg))
        ]
        half = len(packets) // 2
        for read in (packets[:half], packets[half:]):  # two reads: two batches
            buf = bytearray(b"".join(read))
            assert path.feed(buf, 0, len(buf)) == len(buf)
            assert len(path.take_acks()) == 4 * len(read)
            for fid, start, end in path.take_placed():
                s1.placed_run(CID, fid, start, end)
            assert s1.needs_commit
            s1.commit()
        path.close(FID)
        records = journal_records(staging_dir(data_dir, CID, CID, FID) / "journal")
        runs = [r.run() for r in records]
        assert all(r.digest is None and r.state is not None for r in runs)
        assert [(r.start, r.end) for r in runs] == [
            (0, seg),
            (seg, seg + half * seg),
            (seg + half * seg, len(data)),
        ]  # one record per batch, not one per segment
        assert ftcore.RollingSha256.loads(runs[-1].state or b"").length == len(data)
        assert t.asm.recycled == 0  # on, but 2 MiB is less than one 8 MiB chunk
        crash(s1)
        s2 = TransferStore(data_dir, boot_id=lambda: "boot-A")
        read, hashed = await recover(s2)
        assert hashed == len(data) and read < 64 * 1024
        await fin(s2, len(data), sha(data))
        check_export(data_dir, data, {"name": "f"})
        await s2.close()

    run(main())

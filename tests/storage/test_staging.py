"""The staging area: its layout, the per-transfer lock, and the collector of expired staging.

flock locks belong to open file descriptions, so two descriptors in one process contend
exactly as two processes do; a real child process shows that the kernel drops the lock of
a process that dies.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftserver.errors import InvalidFileMetaJson, StorageError, TransferBusy
from ftserver.meta import parse_filemeta
from ftserver.storage import gc, staging
from ftserver.storage import journal as jr

META = parse_filemeta(json.dumps({"name": "f.bin", "segments_ttl": 600}).encode())


def test_transfer_dir_layout(tmp_path: Path) -> None:
    bucket = hashlib.sha1(b"dev:1").hexdigest()[:2].upper()
    assert staging.staging_root(tmp_path) == tmp_path / "staging"
    assert staging.transfer_dir(tmp_path / "staging", "dev:1", "f/1") == (
        tmp_path / "staging" / bucket / "dev%3A1" / "f%2F1"
    )
    assert staging.transfer_dir(tmp_path, "dev:1", "x").relative_to(tmp_path).as_posix() == (
        staging.staging_relpath(bucket, "dev:1", "x").relative_to("staging").as_posix()
    )


def _staged(d: Path) -> Path:
    """A staged transfer's directory, as create() leaves it (data file and journal)."""
    d.mkdir()
    (d / "data").write_bytes(b"")
    (d / "journal").write_bytes(b"FTJ1\n")
    return d


def test_lock_is_exclusive_until_released(tmp_path: Path) -> None:
    d = _staged(tmp_path / "t")
    fd = staging.lock_dir(d)
    try:
        with pytest.raises(TransferBusy) as busy:
            staging.lock_dir(d)
        assert busy.value.ready is None  # held elsewhere: nothing to wait for but polling
    finally:
        os.close(fd)
    os.close(staging.lock_dir(d))  # free again


def test_lock_of_missing_directory_is_gone(tmp_path: Path) -> None:
    with pytest.raises(staging.Gone):
        staging.lock_dir(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(staging.Gone):
        staging.lock_dir(tmp_path / "empty")  # neither data file nor journal
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        staging.lock_dir(tmp_path / "file")


def test_lock_dies_with_its_process(tmp_path: Path) -> None:
    d = _staged(tmp_path / "t")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1] + '/data', os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
            str(d),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        with pytest.raises(TransferBusy):
            staging.lock_dir(d)
    finally:
        holder.kill()  # kill -9: no clean-up of its own
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    os.close(staging.lock_dir(d))


def test_create_locks_and_opens(tmp_path: Path) -> None:
    root = tmp_path / "staging"
    d = staging.transfer_dir(root, "c", "f")
    asm, journal = staging.create(d, sync=True)
    try:
        assert sorted(os.listdir(d)) == ["data", "journal"]
        assert os.listdir(root / staging.TMP) == []  # built there, renamed into place
        records, valid = jr.read_journal(d / "journal")  # the header, who opened it
        assert [r.type for r in records] == [jr.Rec.OPENED] and valid == len(
            (d / "journal").read_bytes()
        )
        with pytest.raises(TransferBusy):
            staging.create(d, sync=False)  # the same transfer cannot be opened twice
        assert staging.staged_count(root, "c") == 1
        assert staging.staged_count(root, "other") == 0
        assert list(staging.staged_dirs(root)) == [d]
        with pytest.raises(TransferBusy):
            staging.lock_dir(d)  # the assembler's descriptor holds the lock
    finally:
        asm.close()
        journal.close()
    os.close(staging.lock_dir(d))  # closing the assembler released it


def test_create_where_a_file_is_in_the_way(tmp_path: Path) -> None:
    root = tmp_path / "staging"
    root.mkdir()
    (root / staging.staging_bucket("c")).write_bytes(b"")  # not a directory
    with pytest.raises(StorageError) as exc:
        staging.create(staging.transfer_dir(root, "c", "f"), sync=False)
    assert exc.value.description in ("eexist", "enotdir")


def test_meta_round_trip_and_damage(tmp_path: Path) -> None:
    assert staging.read_meta(tmp_path) is None
    staging.write_meta(tmp_path, META, sync=True)
    assert staging.read_meta(tmp_path) == META
    assert sorted(os.listdir(tmp_path)) == ["meta"]  # the temporary file was renamed
    (tmp_path / "meta").write_bytes(b"{")
    with pytest.raises(InvalidFileMetaJson):
        staging.read_meta(tmp_path)


def _stage(root: Path, fid: str, age: float, meta: bool = True) -> Path:
    d = staging.transfer_dir(root, "c", fid)
    asm, journal = staging.create(d, sync=False)
    asm.close()
    journal.close()
    if meta:
        staging.write_meta(d, META, sync=False)
    then = time.time() - age
    os.utime(d / "journal", (then, then))
    return d


def test_collector(tmp_path: Path) -> None:
    root = tmp_path / "staging"
    old = _stage(root, "old", 700)  # beyond its segments_ttl (600)
    young = _stage(root, "young", 100)
    bare = _stage(root, "bare", 700, meta=False)  # no init: the default TTL applies
    held = _stage(root, "held", 700)  # open in another process
    skipped = _stage(root, "skipped", 700)  # open in this one
    lock = staging.lock_dir(held)
    try:

        def ttl_of(meta: object) -> float:
            return 600.0 if meta is not None else 1000.0

        assert gc.collect_expired(root, time.time(), ttl_of, skip={skipped}) == 1
        assert [p.exists() for p in (old, young, bare, held, skipped)] == [
            False,
            True,
            True,
            True,
            True,
        ]
    finally:
        os.close(lock)
    assert gc.collect_expired(root, time.time() + 600, ttl_of) == 4
    assert list(staging.staged_dirs(root)) == []


def test_lock_follows_the_data_file_out_of_an_export(tmp_path: Path) -> None:
    """An export moves the data file away while its holder keeps the lock: a process that
    finds the data file gone locks the journal, which the holder locked before the move; a
    directory removed while waiting is Gone."""
    root = tmp_path / "staging"
    d = staging.transfer_dir(root, "c", "f")
    asm, _journal = staging.create(d, sync=False)
    extra = staging.lock_journal(d)
    os.rename(d / "data", tmp_path / "exported")
    with pytest.raises(TransferBusy):
        staging.lock_dir(d)  # the journal is held by the exporting process
    os.close(extra)
    fd = staging.lock_dir(d)  # the exporter died before removing it: recovery may take it
    os.close(fd)
    staging.remove(d)
    asm.close()
    with pytest.raises(staging.Gone):
        staging.lock_dir(d)


def test_lock_of_a_replaced_data_file_is_gone(tmp_path: Path) -> None:
    d = _staged(tmp_path / "t")
    fd = os.open(d / "data", os.O_RDWR)
    os.unlink(d / "data")
    (d / "data").write_bytes(b"")  # another inode under the name: the old one is not it
    try:
        with pytest.raises(staging.Gone):
            staging._check_linked(fd, d / "data")
    finally:
        os.close(fd)


def test_adopted_lock_is_the_assemblers_descriptor(tmp_path: Path) -> None:
    import ftcore

    d = _staged(tmp_path / "t")
    lock = staging.lock_dir(d)
    asm = ftcore.Assembler(d / "data")
    before = len(os.listdir("/proc/self/fd"))
    assert staging.adopt_lock(lock, asm)
    assert len(os.listdir("/proc/self/fd")) == before - 1
    with pytest.raises(TransferBusy):
        staging.lock_dir(d)
    asm.place(0, b"abc")  # the adopted descriptor writes
    asm.close()
    assert (d / "data").read_bytes() == b"abc"
    os.close(staging.lock_dir(d))


def test_collector_removes_what_a_crash_left_half_built(tmp_path: Path) -> None:
    root = tmp_path / "staging"
    old = root / staging.TMP / "dead"
    old.mkdir(parents=True)
    then = time.time() - 2 * gc.TMP_AGE
    os.utime(old, (then, then))
    fresh = root / staging.TMP / "building"
    fresh.mkdir()
    gc.collect_expired(root, time.time(), lambda meta: 600.0)
    assert not old.exists() and fresh.exists()

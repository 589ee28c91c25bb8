"""The staging area: where an unfinished transfer lives, and who may open it.

One directory per transfer (docs/architecture.md, "State on disk")::

    <data>/staging/<bucket>/<esc(clientId)>/<esc(fileId)>/
        meta      the init metadata (written atomically)
        data      the sparse file the segments are written into
        journal   what ``data`` holds (:mod:`ftserver.storage.journal`)

A transfer is open in one process at a time: that process holds an exclusive ``flock`` on
its directory (:func:`lock_dir`). The kernel drops the lock when the descriptor closes or
the process dies, so a crash, a handover to another worker and a restart need no clean-up.
Everything here is blocking filesystem work, with no policy: the store decides when.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import ftcore
from ftserver.errors import TransferBusy, storage_errors
from ftserver.meta import FileMeta, parse_filemeta
from ftserver.names import esc
from ftserver.storage.journal import Journal, fsync_dir

__all__ = [
    "DATA",
    "JOURNAL",
    "META",
    "STAGING",
    "Gone",
    "create",
    "lock_dir",
    "read_meta",
    "remove",
    "staged_count",
    "staged_dirs",
    "staging_bucket",
    "staging_relpath",
    "staging_root",
    "transfer_dir",
    "write_meta",
]

#: the staging area below the data directory
STAGING = "staging"
#: the files of a staging directory
META = "meta"
DATA = "data"
JOURNAL = "journal"


def staging_bucket(client_id: str) -> str:
    """The staging bucket of a client: the first two uppercase hex digits of SHA-1(clientId).

    ftserver's own choice (the staging area is not shared with EMQX): keyed on the clientId
    alone, so that all transfers of one client sit under one directory (cheap to list when a
    session is taken over) while the ``staging/`` directory itself has at most 256 entries.
    """
    return (
        hashlib.sha1(client_id.encode("utf-8", "surrogatepass"), usedforsecurity=False)
        .hexdigest()[:2]
        .upper()
    )


def staging_relpath(bucket: str, client_id: str, file_id: str) -> PurePosixPath:
    """Directory of an unfinished transfer relative to the data directory.

    ``staging/<bucket>/<esc(clientId)>/<esc(fileId)>`` (docs/architecture.md, "State on
    disk"); ``bucket`` is normally :func:`staging_bucket` of ``client_id``: it is taken as
    given (so that a store can be migrated) but must be one plain path component.
    """
    if not bucket or bucket in (".", "..") or "/" in bucket or "\x00" in bucket:
        raise ValueError(f"unsafe staging bucket: {bucket!r}")
    return PurePosixPath(STAGING, bucket, esc(client_id), esc(file_id))


def staging_root(data_dir: Path) -> Path:
    """The staging area of a data directory."""
    return data_dir / STAGING


def transfer_dir(staging: Path, client_id: str, file_id: str) -> Path:
    """The staging directory of a transfer below ``staging`` (``<data>/staging``)."""
    return staging / staging_bucket(client_id) / esc(client_id) / esc(file_id)


class Gone(Exception):
    """The staging directory was removed while we waited for its lock."""


def lock_dir(d: Path) -> int:
    """Lock a staging directory for this process; returns the descriptor holding the lock.

    Raises :class:`TransferBusy` when another process (or another descriptor of this one)
    holds it, :class:`Gone` when the directory is not there (any more: its previous holder
    exported or aborted the transfer meanwhile; look again), ``OSError`` when it cannot be
    opened.
    """
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Gone() from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_nlink == 0:
            raise Gone()
    except BlockingIOError:
        os.close(fd)
        raise TransferBusy() from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def create(
    d: Path, *, sync: bool, boot_id: str | None = None
) -> tuple[int, ftcore.Assembler, Journal]:
    """Make (or take) the staging directory ``d`` of a new transfer, lock it and open its data
    file and journal: (lock descriptor, assembler, journal). With ``sync`` the journal and the
    new directory entries are on stable storage before it returns.

    Raises :class:`TransferBusy` (locked elsewhere) or ``StorageError``.
    """
    with storage_errors():
        for _attempt in range(3):
            d.mkdir(parents=True, exist_ok=True)
            try:
                lock = lock_dir(d)
            except Gone:
                continue  # removed between mkdir and lock: make it again
            break
        else:
            raise TransferBusy()
        try:
            asm = ftcore.Assembler(d / DATA)
            try:
                journal = Journal(d / JOURNAL, boot_id=boot_id)
                if sync:
                    journal.sync()
                    for p in (d, d.parent, d.parent.parent):
                        fsync_dir(p)
            except BaseException:
                asm.close()
                raise
        except BaseException:
            os.close(lock)
            raise
    return lock, asm, journal


def staged_count(staging: Path, client_id: str) -> int:
    """How many transfers of a client are staged (open here or not)."""
    try:
        return len(os.listdir(staging / staging_bucket(client_id) / esc(client_id)))
    except FileNotFoundError:
        return 0


def read_meta(d: Path) -> FileMeta | None:
    """The init metadata of a staged transfer; None before its init.

    Raises an ``FtError`` when the file does not hold valid metadata, ``OSError`` when it
    cannot be read.
    """
    try:
        raw = (d / META).read_bytes()
    except FileNotFoundError:
        return None
    return parse_filemeta(raw)


def write_meta(d: Path, meta: FileMeta, *, sync: bool) -> None:
    """Store the init metadata atomically (a temporary file renamed over ``meta``)."""
    with storage_errors():
        tmp = d / (META + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, meta.to_json_bytes())
            if sync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, d / META)
        if sync:
            fsync_dir(d)


def staged_dirs(staging: Path) -> Iterator[Path]:
    """The staging directory of every transfer staged under ``staging`` (any process's)."""
    for journal in staging.glob(f"*/*/*/{JOURNAL}"):
        yield journal.parent


def remove(d: Path) -> None:
    """Delete a staging directory and everything in it (what is already gone is fine).

    Whoever calls this holds the directory's lock and releases it only afterwards: another
    process then finds the directory gone (:class:`Gone`) rather than half removed.
    """
    shutil.rmtree(d, ignore_errors=True)

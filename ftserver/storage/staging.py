"""The staging area: where an unfinished transfer lives, and who may open it.

One directory per transfer (docs/architecture.md, "State on disk")::

    <data>/staging/<bucket>/<esc(clientId)>/<esc(fileId)>/
        meta      the init metadata (written atomically)
        data      the sparse file the segments are written into
        journal   what ``data`` holds (:mod:`ftserver.storage.journal`)

A transfer is open in one process at a time: that process holds an exclusive ``flock`` on
the descriptor of its ``data`` file (:func:`lock_dir`), the very descriptor the segments are
written through, so an open transfer costs one descriptor. The kernel drops the lock when
the descriptor closes or the process dies, so a crash, a handover to another worker and a
restart need no clean-up. A directory is born whole (:func:`create` builds it under
``staging/.tmp`` and renames it into place), so a staging directory without its ``data``
file is one whose export moved the file away: its holder then also locks the journal
(:func:`lock_journal`) until the directory is removed, and a process that finds the data
file missing locks the journal instead. Everything here is blocking filesystem work, with
no policy: the store decides when.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import ftcore
from ftserver.errors import TransferBusy, storage_errors
from ftserver.meta import FileMeta, parse_filemeta
from ftserver.names import esc
from ftserver.storage.journal import HEADER, Journal, fsync_dir, write_all

__all__ = [
    "DATA",
    "JOURNAL",
    "META",
    "STAGING",
    "TMP",
    "Gone",
    "adopt_lock",
    "collect_tmp",
    "create",
    "lock_dir",
    "lock_journal",
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
#: where new staging directories are built before they are renamed into place
TMP = ".tmp"


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

    That is a read-write descriptor of its ``data`` file (the caller may hand it to the
    assembler, see :func:`adopt_lock`); when the data file is gone (moved by an export
    whose process then died, or that still runs) it is the journal's, read-only.

    Raises :class:`TransferBusy` when another process (or another descriptor of this one)
    holds it, :class:`Gone` when the directory is not there (any more: its previous holder
    exported or aborted the transfer meanwhile; look again), ``OSError`` when it cannot be
    opened (``EMFILE`` included: the caller decides what a missing descriptor means).
    """
    path = d / DATA
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        path = d / JOURNAL
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise Gone() from None
    return _lock_or_busy(fd, lambda: _check_linked(fd, path))


def _lock_or_busy(fd: int, then: Callable[[], None] | None = None) -> int:
    """Take the exclusive flock of ``fd`` without waiting (then run ``then``); returns ``fd``.
    Held elsewhere: :class:`TransferBusy`. On any failure ``fd`` is closed."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if then is not None:
            then()
    except BlockingIOError:
        os.close(fd)
        raise TransferBusy() from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_linked(fd: int, path: Path) -> None:
    """Raise :class:`Gone` unless the locked file is still the one at ``path``: its holder
    may have removed (``st_nlink`` 0) or moved it (an export) while we waited."""
    st = os.fstat(fd)
    if st.st_nlink == 0:
        raise Gone()
    try:
        now = os.stat(path)
    except FileNotFoundError:
        raise Gone() from None
    if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
        raise Gone()


def lock_journal(d: Path) -> int:
    """Also lock the journal of a staging directory whose data file this process holds,
    before an export moves that file away; returns the descriptor (close it after the
    directory is removed). Raises :class:`TransferBusy` or ``OSError``."""
    return _lock_or_busy(os.open(d / JOURNAL, os.O_RDONLY | os.O_CLOEXEC))


def adopt_lock(lock: int, asm: ftcore.Assembler) -> bool:
    """Make the assembler's descriptor the one holding ``lock`` when both are the data file:
    the assembler's own descriptor is replaced by the locked one (``dup2``, close-on-exec
    kept) and ``lock`` is closed. Returns whether it did (else ``lock`` stays as it was)."""
    fd = asm.file.fileno()
    a, b = os.fstat(lock), os.fstat(fd)
    if (a.st_ino, a.st_dev) != (b.st_ino, b.st_dev):
        return False
    os.dup2(lock, fd, inheritable=False)
    os.close(lock)
    return True


def create(
    d: Path, *, sync: bool, boot_id: str | None = None, meta: bytes | None = None
) -> tuple[ftcore.Assembler, Journal]:
    """Make the staging directory ``d`` of a new transfer, locked by this process, with its
    data file and journal open (and its ``meta`` file, when the init metadata is known):
    (assembler, journal). The lock is held by the assembler's descriptor (closing the
    assembler releases it). The directory is built under ``staging/.tmp`` and renamed into
    place, so nobody ever sees it without its data file (nor, when ``meta`` is given, without
    its metadata, which then needs no temporary file of its own). With ``sync`` the files
    and the new directory entries are on stable storage before it returns.

    This runs on the event loop for every new transfer: plain string paths, one system call
    per step.

    Raises :class:`TransferBusy` (``d`` exists already: another process made it meanwhile;
    look again) or ``StorageError``.
    """
    with storage_errors():
        root = os.path.dirname(os.path.dirname(os.path.dirname(d)))
        tmp = f"{root}/{TMP}/{secrets.token_hex(8)}"
        try:
            os.mkdir(tmp)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(tmp), exist_ok=True)
            os.mkdir(tmp)
        asm: ftcore.Assembler | None = None
        try:
            asm = ftcore.Assembler(f"{tmp}/{DATA}")
            fcntl.flock(asm.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: free
            _write_new(f"{tmp}/{JOURNAL}", HEADER, sync)
            if meta is not None:
                _write_new(f"{tmp}/{META}", meta, sync)
            if sync:
                fsync_dir(Path(tmp))
            try:
                os.rename(tmp, d)
            except FileNotFoundError:
                d.parent.mkdir(parents=True, exist_ok=True)
                os.rename(tmp, d)
        except BaseException as exc:
            if asm is not None:
                asm.close()
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise TransferBusy() from None
            raise
        if sync:
            for p in (d.parent, d.parent.parent):
                fsync_dir(p)
        journal = Journal(d / JOURNAL, boot_id=boot_id)
    return asm, journal


def _write_new(path: str, data: bytes, sync: bool) -> None:
    """Create the file ``path`` holding ``data`` (flushed with ``sync``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)


def collect_tmp(staging: Path, now: float, age: float) -> int:
    """Remove what a crash left under ``staging/.tmp`` (directories being built) older than
    ``age`` seconds; returns how many."""
    removed = 0
    try:
        entries = list(os.scandir(staging / TMP))
    except FileNotFoundError:
        return 0
    for e in entries:
        try:
            if now - e.stat(follow_symlinks=False).st_mtime <= age:
                continue
        except FileNotFoundError:
            continue
        shutil.rmtree(e.path, ignore_errors=True)
        removed += 1
    return removed


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


def remove(d: Path, *, exported: bool = False) -> None:
    """Delete a staging directory and everything in it (what is already gone is fine).

    Whoever calls this holds the directory's lock and releases it only afterwards: another
    process then finds the directory gone (:class:`Gone`) rather than half removed.

    The files a staging directory holds are known, so they are unlinked by name (a few
    system calls, where a tree walk costs a dozen: this runs once per file uploaded); a
    directory holding anything else is walked. ``exported``: its data file was moved away.
    """
    for name in _FILES[:2] if exported else _FILES:
        try:
            os.unlink(d / name)
        except FileNotFoundError:
            pass
        except OSError:
            break
    try:
        os.rmdir(d)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(d, ignore_errors=True)


#: what a staging directory may hold, the files written most often first
_FILES = (JOURNAL, META, DATA)

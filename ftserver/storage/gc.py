"""The garbage collector of expired staging: unfinished transfers nobody touched for too long.

A transfer's last activity is its journal's modification time (a process that closes a
transfer sets it back to the time of its last command). Each worker runs the collector over
the whole staging area; a transfer open in another process is locked there and skipped (that
process collects what it holds), so any number of workers can collect at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Container
from pathlib import Path

from ftserver.errors import FtError, TransferBusy
from ftserver.meta import FileMeta
from ftserver.names import unesc
from ftserver.storage.staging import (
    JOURNAL,
    Gone,
    collect_tmp,
    lock_dir,
    read_meta,
    remove,
    staged_dirs,
)

__all__ = ["TMP_AGE", "collect_expired", "log_expired"]

log = logging.getLogger(__name__)

#: a staging directory still being built after this many seconds was left by a crash
TMP_AGE = 3600.0


def collect_expired(
    staging: Path,
    now: float,
    ttl_of: Callable[[FileMeta | None], float],
    skip: Container[Path] = (),
    on_removed: Callable[[str, str], None] | None = None,
) -> int:
    """Delete the staged transfers under ``staging`` whose last activity is more than their
    TTL (``ttl_of`` their init metadata, None before init) before ``now``, except those in
    ``skip`` (open in this process: the store expires them itself) and those another
    process holds. ``on_removed`` hears the (clientId, fileId) of each one deleted (the S3
    exporter aborts the upload it may have streamed). Returns how many were deleted.
    Blocking."""
    removed = 0
    collect_tmp(staging, now, TMP_AGE)  # what a crash left half built
    for d in staged_dirs(staging):
        if d in skip:
            continue
        meta: FileMeta | None = None
        with contextlib.suppress(OSError, FtError):
            meta = read_meta(d)
        ttl = ttl_of(meta)
        if not _expired(d, now, ttl):
            continue
        try:
            lock = lock_dir(d)
        except (TransferBusy, Gone, OSError):
            continue  # open in another worker (it collects its own) or gone already
        try:
            idle = _idle(d, now)
            if idle is None or idle <= ttl:
                continue  # its holder touched it before letting it go
            remove(d)
        finally:
            os.close(lock)
        removed += 1
        log_expired(unesc(d.parent.name), unesc(d.name), idle, ttl)
        if on_removed is not None:
            with contextlib.suppress(ValueError):
                on_removed(unesc(d.parent.name), unesc(d.name))
    return removed


def log_expired(client_id: str, file_id: str, idle: float, ttl: float) -> None:
    """The line of an unfinished transfer deleted for having been idle longer than its TTL."""
    log.info(
        "transfer expired",
        extra={
            "event": "expired",
            "clientId": client_id,
            "fileId": file_id,
            "idle": round(idle, 3),
            "ttl": ttl,
        },
    )


def _expired(d: Path, now: float, ttl: float) -> bool:
    idle = _idle(d, now)
    return idle is not None and idle > ttl


def _idle(d: Path, now: float) -> float | None:
    """Seconds since the staged transfer's last activity (None: no journal)."""
    try:
        return now - (d / JOURNAL).stat().st_mtime
    except FileNotFoundError:
        return None

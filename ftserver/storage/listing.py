"""The transfers in progress, as the staging area shows them: what the HTTP API lists.

The API runs in the supervisor process while the workers write the staging area, so nothing
here shares memory with them: each entry is read from the transfer's directory, its journal
interpreted by :func:`ftserver.storage.journal.replay` exactly as recovery interprets it
(without re-reading the data to check unflushed ranges). Blocking: call it from a thread.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ftserver.errors import FtError
from ftserver.names import unesc
from ftserver.storage.journal import replay
from ftserver.storage.staging import JOURNAL, read_meta, staging_root
from ftserver.storage.walk import Key, sorted_walk

__all__ = ["TransferEntry", "iter_transfers", "read_transfer"]

#: the staging tree: bucket (2 hex digits), esc(clientId), esc(fileId)
_STAGING_LEVELS: tuple[re.Pattern[str] | None, ...] = (re.compile(r"[0-9A-F]{2}\Z"), None, None)


@dataclass(frozen=True, slots=True)
class TransferEntry:
    """An unfinished transfer, as its staging directory shows it."""

    #: (bucket, esc(clientId), esc(fileId)): the path below ``staging/``, the sort key
    key: Key
    client_id: str
    file_id: str
    #: the file name from the init metadata; None before init
    name: str | None
    #: the size from the init metadata, if it gave one
    expected_size: int | None
    #: bytes of the file received so far (each byte counted once)
    bytes_received: int
    #: time of the last write (the journal's mtime), Unix seconds
    last_activity: float


def read_transfer(staging: Path, key: Key) -> TransferEntry | None:
    """The transfer staged in ``staging/<key>``; None when there is none (or no longer), or
    the directory is not one ftserver made."""
    try:
        client_id, file_id = unesc(key[1]), unesc(key[2])
    except ValueError:
        return None
    d = staging.joinpath(*key)
    try:
        journal = replay(d / JOURNAL)
    except OSError:
        return None
    name: str | None = None
    size: int | None = None
    with contextlib.suppress(OSError, FtError):
        meta = read_meta(d)
        if meta is not None:
            name, size = meta.name, meta.size
    received = 0 if journal.damaged else journal.bytes_received
    return TransferEntry(key, client_id, file_id, name, size, received, journal.last_activity)


def iter_transfers(data_dir: Path, after: Key = ()) -> Iterator[TransferEntry]:
    """Every unfinished transfer under ``<data_dir>/staging`` whose key sorts after
    ``after``, in key order. Lazy: a caller that stops after ``limit`` items reads no more of
    the tree than that."""
    staging = staging_root(data_dir)
    for key, on_path in sorted_walk(os.fspath(staging), _STAGING_LEVELS, after):
        if on_path and len(after) == len(key):
            continue  # the cursor's own item
        entry = read_transfer(staging, key)
        if entry is not None:
            yield entry

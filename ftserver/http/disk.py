"""What the HTTP API reads from the data directory: the transfers in progress.

(The exports are read through the exporter, :mod:`ftserver.export.tree` for the local one.)

The API runs in the supervisor process while the MQTT workers write the disk, so nothing
here shares memory with them: the directory tree is the only truth. Every function is
blocking (directory walks, stats, small reads): the API calls them from an executor thread.

Listings walk the tree in sorted order and stop after ``limit`` items; a page starts after a
key (the path components of the last item returned, see :mod:`ftserver.http.cursor`), and
whole subtrees that sort before that key are skipped without being read. So a page costs
one sorted directory listing per level on the way down plus the items it returns, whatever
the size of the store, and a key stays a valid position while items come and go.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import ftcore
from ftserver.errors import FtError
from ftserver.meta import parse_filemeta
from ftserver.names import unesc
from ftserver.storage import journal as jr

__all__ = ["TransferEntry", "iter_transfers"]

#: the staging tree: bucket (2 hex digits), esc(clientId), esc(fileId)
_STAGING_LEVELS: tuple[re.Pattern[str] | None, ...] = (re.compile(r"[0-9A-F]{2}\Z"), None, None)

Key = tuple[str, ...]


# --------------------------------------------------------------------------------------------
# sorted walk


def _sorted_subdirs(path: str, pattern: re.Pattern[str] | None) -> list[str]:
    """Names of the subdirectories of ``path`` (symlinks not followed), sorted."""
    names: list[str] = []
    try:
        with os.scandir(path) as it:
            for entry in it:
                if pattern is not None and not pattern.match(entry.name):
                    continue
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        names.append(entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    names.sort()
    return names


def _walk(
    path: str,
    prefix: Key,
    levels: Sequence[re.Pattern[str] | None],
    after: Key,
    on_path: bool,
) -> Iterator[tuple[Key, bool]]:
    """Directories ``len(levels)`` below ``path`` in sorted order, with whether each one is
    on the path of ``after`` (then its own contents must start after ``after``'s rest).

    A directory whose key sorts before ``after``'s prefix of the same length is skipped
    with its whole subtree.
    """
    names = _sorted_subdirs(path, levels[0])
    depth = len(prefix)
    lo = after[depth] if on_path and depth < len(after) else None
    if lo is not None:
        names = names[bisect.bisect_left(names, lo) :]
    for name in names:
        here = lo is not None and name == lo
        key = (*prefix, name)
        if len(levels) == 1:
            yield key, here
        else:
            yield from _walk(os.path.join(path, name), key, levels[1:], after, here)


# --------------------------------------------------------------------------------------------
# in-progress transfers


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


def _assembler_ranges(state: bytes) -> ftcore.RangeSet:
    """The RangeSet inside a serialised ``ftcore.Assembler`` state (a journal CHECKPOINT):
    magic (4 bytes), bytes hashed (u64), hash state length (u32), hash state, ranges."""
    _magic, _hashed, hash_len = struct.unpack_from("<4sQI", state, 0)
    return ftcore.RangeSet.loads(state[16 + hash_len :])


def _bytes_received(records: list[jr.Record]) -> int:
    """Bytes covered by a journal's records, as recovery would count them (without
    re-reading the data to check unflushed ranges)."""
    exporting = [i for i, r in enumerate(records) if r.type is jr.Rec.EXPORTING]
    exported_size = 0
    if exporting:
        exported_size = records[exporting[-1]].exporting()[0]
        records = records[exporting[-1] + 1 :]
    ranges: ftcore.RangeSet | None = None
    checkpoint = next((r for r in reversed(records) if r.type is jr.Rec.CHECKPOINT), None)
    if checkpoint is not None:
        with contextlib.suppress(ValueError, struct.error):
            ranges = _assembler_ranges(checkpoint.payload)
    if ranges is None:
        ranges = ftcore.RangeSet()
        if exported_size > 0:
            ranges.add(0, exported_size)
    for offset, length, _digest in jr.iter_ranges(records):
        if length > 0:
            ranges.add(offset, offset + length)
    return ranges.covered


def _read_transfer(base: str, key: Key) -> TransferEntry | None:
    d = os.path.join(base, *key)
    journal = os.path.join(d, "journal")
    try:
        last_activity = os.stat(journal).st_mtime
    except OSError:
        return None  # not (or no longer) a transfer
    name: str | None = None
    size: int | None = None
    with contextlib.suppress(OSError, FtError):
        with open(os.path.join(d, "meta"), "rb") as f:
            meta = parse_filemeta(f.read())
        name, size = meta.name, meta.size
    try:
        records, _valid = jr.read_journal(Path(journal))
        received = _bytes_received(records)
    except (OSError, ValueError):
        received = 0
    try:
        client_id, file_id = unesc(key[1]), unesc(key[2])
    except ValueError:
        return None  # not a directory ftserver made
    return TransferEntry(key, client_id, file_id, name, size, received, last_activity)


def iter_transfers(data_dir: Path, after: Key = ()) -> Iterator[TransferEntry]:
    """Every unfinished transfer under ``<data_dir>/staging`` whose key sorts after
    ``after``, in key order; lazy: a caller that stops after ``limit`` items reads no more
    of the tree than that."""
    base = os.path.join(data_dir, "staging")
    for key, on_path in _walk(base, (), _STAGING_LEVELS, after, bool(after)):
        if on_path and len(after) == len(key):
            continue  # the cursor's own item
        entry = _read_transfer(base, key)
        if entry is not None:
            yield entry

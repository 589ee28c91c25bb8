"""A sorted, resumable walk of a directory tree with a fixed number of levels.

Listings of the data directory (transfers in progress, exports) walk it in sorted order and
stop after ``limit`` items; a page starts after a key (the path components of the last item
returned), and whole subtrees that sort before that key are skipped without being read. So a
page costs one sorted directory listing per level on the way down plus the items it returns,
whatever the size of the store, and a key stays a valid position while items come and go.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import re
from collections.abc import Iterator, Sequence

__all__ = ["Key", "sorted_subdirs", "sorted_walk"]

#: path components below the root of a walk: the sort key of a listing
Key = tuple[str, ...]


def sorted_subdirs(path: str, pattern: re.Pattern[str] | None) -> list[str]:
    """Names of the subdirectories of ``path`` (symlinks not followed) that match
    ``pattern`` (any name when None), sorted; none when ``path`` is not a directory."""
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


def sorted_walk(
    root: str, levels: Sequence[re.Pattern[str] | None], after: Key = ()
) -> Iterator[tuple[Key, bool]]:
    """Directories ``len(levels)`` below ``root`` (level ``i`` matching ``levels[i]``) in
    sorted order, from ``after`` on: each with whether it is on the path of ``after`` (then
    its own contents must start after ``after``'s rest, and when it is ``after`` itself it
    is the cursor's own item). Lazy."""
    return _walk(root, (), levels, after, bool(after))


def _walk(
    path: str,
    prefix: Key,
    levels: Sequence[re.Pattern[str] | None],
    after: Key,
    on_path: bool,
) -> Iterator[tuple[Key, bool]]:
    names = sorted_subdirs(path, levels[0])
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

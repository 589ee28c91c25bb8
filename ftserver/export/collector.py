"""The expiry collector of local exports, and the removal of one export.

An export whose manifest carries ``expire_at`` (Unix seconds, from the init metadata) is
deleted once that moment has passed (docs/protocol.md §7). Removal order is the reverse of the
exporter's: the manifest first (so the export stops being listed or looked up at once), then
the file, then whichever of its parent directories became empty, up to but never including
the exports root.

Everything here is blocking filesystem work: call it from an executor thread. Nothing is
shared with the MQTT workers but the disk, so every step tolerates a concurrent change (an
entry that vanished meanwhile is simply skipped).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from ftserver.export.layout import MANIFEST_SUFFIX, parse_manifest

__all__ = ["collect_expired_exports", "delete_export", "prune_empty_dirs"]

log = logging.getLogger(__name__)

#: directory levels between the exports root and an export's file: B1/B2/B3/cid/fid
EXPORT_DIR_DEPTH = 5


def _subdirs(path: str) -> Iterator[str]:
    """Subdirectories of ``path`` (symlinks are never followed); none if it is gone."""
    try:
        with os.scandir(path) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        yield entry.path
    except (FileNotFoundError, NotADirectoryError):
        return


def _transfer_dirs(root: str, depth: int = EXPORT_DIR_DEPTH) -> Iterator[str]:
    if depth == 0:
        yield root
        return
    for sub in _subdirs(root):
        yield from _transfer_dirs(sub, depth - 1)


def prune_empty_dirs(start: Path, root: Path) -> None:
    """Remove ``start`` and then each parent while it is empty, stopping below ``root``.

    ``start`` must lie inside ``root``; ``root`` itself is never removed.
    """
    root_abs = os.path.abspath(root)
    d = os.path.abspath(start)
    while d != root_abs and d.startswith(root_abs + os.sep):
        try:
            os.rmdir(d)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                d = os.path.dirname(d)
                continue
            return  # not empty (ENOTEMPTY/EEXIST), or not ours to remove: stop here
        d = os.path.dirname(d)


def delete_export(transfer_dir: Path, name: str, root: Path) -> bool:
    """Delete the export ``name`` in ``transfer_dir``: manifest, file, then empty parents.

    Returns whether a manifest was removed (that is, whether an export existed). A file
    left without its manifest by an earlier crash is removed too.
    """
    manifest = transfer_dir / (name + MANIFEST_SUFFIX)
    try:
        os.unlink(manifest)
        removed = True
    except FileNotFoundError:
        removed = False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(transfer_dir / name)
    prune_empty_dirs(transfer_dir, root)
    return removed


def _expire_at(manifest_path: str) -> int | None:
    try:
        with open(manifest_path, "rb") as f:
            obj = parse_manifest(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("export manifest %s unreadable (%s): not collected", manifest_path, exc)
        return None
    value = obj.get("expire_at")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def collect_expired_exports(exports_root: Path, now: float) -> int:
    """Delete every export under ``exports_root`` whose manifest ``expire_at`` < ``now``.

    Walks ``<B1>/<B2>/<B3>/<cid>/<fid>/`` (symlinked directories are not followed) and
    reads each ``*.MANIFEST.json``; a manifest without ``expire_at``, or one that cannot be
    read, keeps its export. Returns the number of exports deleted.
    """
    removed = 0
    root = str(exports_root)
    for d in _transfer_dirs(root):
        try:
            with os.scandir(d) as it:
                manifests = [
                    e.name
                    for e in it
                    if e.name.endswith(MANIFEST_SUFFIX) and len(e.name) > len(MANIFEST_SUFFIX)
                ]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in manifests:
            path = os.path.join(d, entry)
            expire_at = _expire_at(path)
            if expire_at is None or expire_at >= now:
                continue
            name = entry[: -len(MANIFEST_SUFFIX)]
            try:
                if delete_export(Path(d), name, exports_root):
                    removed += 1
                    log.info("export %s expired at %d: deleted", os.path.join(d, name), expire_at)
            except OSError as exc:
                log.warning("cannot delete expired export %s: %s", os.path.join(d, name), exc)
    return removed

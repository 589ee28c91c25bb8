"""What the HTTP API reads from the exports directory: exports and their files (the transfers
in progress are :mod:`ftserver.storage.listing`'s).

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
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ftserver.export.layout import MANIFEST_SUFFIX, export_dir_parts, parse_manifest
from ftserver.meta import JsonValue
from ftserver.names import esc, unesc

__all__ = [
    "ExportEntry",
    "export_names",
    "exports_of_transfer",
    "iter_exports",
    "resolve_fileref",
    "transfer_dir_key",
]

#: the exports tree: B1 (2 hex digits), B2 (2), B3 (36), then esc(clientId), esc(fileId)
_EXPORT_LEVELS: tuple[re.Pattern[str] | None, ...] = (
    re.compile(r"[0-9A-F]{2}\Z"),
    re.compile(r"[0-9A-F]{2}\Z"),
    re.compile(r"[0-9A-F]{36}\Z"),
    None,
    None,
)

#: the exporter's temporary files, never exports (``.ftserver-<hex>.tmp`` / ``.part``)
_TEMP_NAME = re.compile(r"\.ftserver-[0-9a-f]+\.(?:tmp|part)\Z")

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
# exports


@dataclass(frozen=True, slots=True)
class ExportEntry:
    """One finished export: a file beside its manifest."""

    #: (B1, B2, B3, esc(clientId), esc(fileId), name): the path below the exports root and
    #: the sort key of listings
    key: Key
    client_id: str
    file_id: str
    name: str
    size: int
    mtime: float
    #: the manifest's metadata object; empty when the manifest could not be parsed
    manifest: dict[str, JsonValue]

    @property
    def relpath(self) -> str:
        """The path below the exports root, ``/``-separated: what a ``fileref`` carries."""
        return "/".join(self.key)


def _ident(escaped: str, manifest: dict[str, JsonValue], key: str) -> str:
    """A clientId or fileId from its directory name (as EMQX does), else from the manifest."""
    try:
        return unesc(escaped)
    except ValueError:
        value = manifest.get(key)
        return value if isinstance(value, str) else escaped


def _read_export(root: str, dir_key: Key, name: str) -> ExportEntry | None:
    d = os.path.join(root, *dir_key)
    try:
        st = os.lstat(os.path.join(d, name))
        with open(os.path.join(d, name + MANIFEST_SUFFIX), "rb") as f:
            raw = f.read()
    except OSError:
        return None  # removed meanwhile, or a manifest without its file
    if not stat.S_ISREG(st.st_mode):
        return None  # symlinks are not listed (a download still follows one inside the root)
    try:
        manifest = parse_manifest(raw)
    except ValueError:
        manifest = {}  # listed all the same: the file is complete, only its metadata is lost
    return ExportEntry(
        key=(*dir_key, name),
        client_id=_ident(dir_key[3], manifest, "clientid"),
        file_id=_ident(dir_key[4], manifest, "fileid"),
        name=name,
        size=st.st_size,
        mtime=st.st_mtime,
        manifest=manifest,
    )


def export_names(d: str) -> list[str]:
    """Sorted names of the exports in one transfer directory (those with a manifest)."""
    try:
        entries = os.listdir(d)
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = [
        e[: -len(MANIFEST_SUFFIX)]
        for e in entries
        if e.endswith(MANIFEST_SUFFIX) and len(e) > len(MANIFEST_SUFFIX)
    ]
    names = [n for n in names if not _TEMP_NAME.match(n)]
    names.sort()
    return names


def iter_exports(root: Path, after: Key = ()) -> Iterator[ExportEntry]:
    """Every export under ``root`` whose key sorts after ``after``, in key order.

    Lazy: a caller that stops after ``limit`` items reads no more of the tree than that.
    """
    base = str(root)
    for dir_key, on_path in _walk(base, (), _EXPORT_LEVELS, after, bool(after)):
        names = export_names(os.path.join(base, *dir_key))
        if on_path and len(after) > len(dir_key):
            names = names[bisect.bisect_right(names, after[len(dir_key)]) :]
        for name in names:
            entry = _read_export(base, dir_key, name)
            if entry is not None:
                yield entry


def transfer_dir_key(client_id: str, file_id: str) -> Key:
    """The directory of a transfer's exports below the exports root, as a key."""
    return (*export_dir_parts(client_id, file_id), esc(client_id), esc(file_id))


def exports_of_transfer(root: Path, client_id: str, file_id: str) -> list[ExportEntry]:
    """The exports of one transfer (normally one file), sorted by name."""
    dir_key = transfer_dir_key(client_id, file_id)
    base = str(root)
    out: list[ExportEntry] = []
    for name in export_names(os.path.join(base, *dir_key)):
        entry = _read_export(base, dir_key, name)
        if entry is not None:
            out.append(entry)
    return out


def resolve_fileref(root: Path, fileref: str) -> Path | None:
    """The file a download's ``fileref`` names, or None when it names no downloadable file.

    A ``fileref`` is a ``/``-separated path relative to the exports root (what the listing's
    ``uri`` carries). None when it is empty, absolute, has an empty, ``.`` or ``..``
    component or a NUL, resolves (symlinks included) outside the root, is not a regular
    file, or is an export's file without its manifest (an export still being written, or a
    temporary file). A name that starts with ``.`` is an ordinary name. The manifests
    themselves can be downloaded, as with EMQX.
    """
    if not fileref or fileref.startswith("/") or "\x00" in fileref:
        return None
    parts = fileref.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    real_root = os.path.realpath(root)
    target = os.path.join(real_root, *parts)
    real = os.path.realpath(target)
    if not real.startswith(real_root + os.sep):
        return None
    try:
        st = os.stat(real)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    if not parts[-1].endswith(MANIFEST_SUFFIX) and not os.path.exists(target + MANIFEST_SUFFIX):
        return None
    return Path(real)

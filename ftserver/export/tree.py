"""Reading the local exports tree (EMQX's layout): sorted pages, one transfer's exports,
download references, removal.

``<root>/<B1>/<B2>/<B3>/<esc(clientId)>/<esc(fileId)>/<name>`` beside
``<name>.MANIFEST.json``; the manifest marks the file as exported. The local exporter keeps
its files here; the S3 exporter keeps its local index in the same shape (manifests only).

The HTTP API may run in another process than the MQTT workers that write the tree, so
nothing here holds state: the directory tree is the only truth. Every function is blocking
(directory walks, stats, small reads): call them from an executor thread.

Listings walk the tree in sorted order and stop after ``limit`` items; a page starts after a
key (the path components of the last item returned), and whole subtrees that sort before
that key are skipped without being read. So a page costs one sorted directory listing per
level on the way down plus the items it returns, whatever the size of the store, and a key
stays a valid position while items come and go.
"""

from __future__ import annotations

import bisect
import itertools
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ftserver.export.base import Key
from ftserver.export.collector import delete_export
from ftserver.export.layout import MANIFEST_SUFFIX, export_dir_parts, parse_manifest
from ftserver.meta import JsonValue
from ftserver.names import esc, unesc
from ftserver.storage.walk import sorted_walk

__all__ = [
    "ExportEntry",
    "delete_transfer_exports",
    "export_names",
    "exports_of_transfer",
    "iter_exports",
    "page",
    "resolve_fileref",
    "transfer_dir",
    "transfer_dir_key",
]

#: the levels of the tree: B1 (2 hex digits), B2 (2), B3 (36), then esc(clientId), esc(fileId)
_LEVELS: tuple[re.Pattern[str] | None, ...] = (
    re.compile(r"[0-9A-F]{2}\Z"),
    re.compile(r"[0-9A-F]{2}\Z"),
    re.compile(r"[0-9A-F]{36}\Z"),
    None,
    None,
)

#: the exporter's temporary files, never exports (``.ftserver-<hex>.tmp`` / ``.part``)
_TEMP_NAME = re.compile(r"\.ftserver-[0-9a-f]+\.(?:tmp|part)\Z")


# --------------------------------------------------------------------------------------------
# where a transfer's exports are


def transfer_dir_key(client_id: str, file_id: str) -> Key:
    """The directory of a transfer's exports below the root, as a key."""
    return (*export_dir_parts(client_id, file_id), esc(client_id), esc(file_id))


def transfer_dir(root: Path, client_id: str, file_id: str) -> Path:
    """The directory of a transfer's exports."""
    return root.joinpath(*transfer_dir_key(client_id, file_id))


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


def delete_transfer_exports(root: Path, client_id: str, file_id: str) -> int:
    """Delete the exports of one transfer (manifests, files, empty parents); returns how
    many there were."""
    d = transfer_dir(root, client_id, file_id)
    return sum(delete_export(d, name, root) for name in export_names(str(d)))


# --------------------------------------------------------------------------------------------
# exports


@dataclass(frozen=True, slots=True)
class ExportEntry:
    """One finished export: a file beside its manifest."""

    #: (B1, B2, B3, esc(clientId), esc(fileId), name): the path below the root and the sort
    #: key of listings
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
        """The path below the root, ``/``-separated: what a ``fileref`` carries."""
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


def iter_exports(root: Path, after: Key = ()) -> Iterator[ExportEntry]:
    """Every export under ``root`` whose key sorts after ``after``, in key order.

    Lazy: a caller that stops after ``limit`` items reads no more of the tree than that.
    """
    base = str(root)
    for dir_key, on_path in sorted_walk(base, _LEVELS, after):
        names = export_names(os.path.join(base, *dir_key))
        if on_path and len(after) > len(dir_key):
            names = names[bisect.bisect_right(names, after[len(dir_key)]) :]
        for name in names:
            entry = _read_export(base, dir_key, name)
            if entry is not None:
                yield entry


def page(root: Path, after: Key, limit: int) -> tuple[list[ExportEntry], bool]:
    """Up to ``limit`` exports after ``after``, and whether at least one more follows."""
    got = list(itertools.islice(iter_exports(root, after), limit + 1))
    return got[:limit], len(got) > limit


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

    A ``fileref`` is a ``/``-separated path relative to the root (what the listing's ``uri``
    carries). None when it is empty, absolute, has an empty, ``.`` or ``..`` component or a
    NUL, resolves (symlinks included) outside the root, is not a regular file, or is an
    export's file without its manifest (an export still being written, or a temporary file).
    A name that starts with ``.`` is an ordinary name. The manifests themselves can be
    downloaded, as with EMQX.
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

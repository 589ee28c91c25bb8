"""The state file that lets an upload continue after the uploading process restarts.

A small JSON document, rewritten atomically (temporary file, fsync, rename) at most once a
second while the upload runs, on every pause and disconnect, and when the upload stops; it is
deleted once the server has confirmed the export. It records the transfer (client id, file id,
init metadata) and the byte ranges the server has acknowledged, so a resumed upload sends the
same init (identical metadata is a success) and only the rest of the file. Losing the last
second of acknowledgements costs only their resend; a range recorded but lost on the server
(a power loss there, say) is caught by fin, which reports it ``missing``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ftcore

VERSION = 1


@dataclass(slots=True)
class UploadState:
    """One upload, as the state file records it."""

    client_id: str
    file_id: str
    #: the init metadata, sent again verbatim when resuming
    meta: dict[str, Any]
    size: int
    #: hex SHA-256 of the whole file, or None when checksums are off
    checksum: str | None
    #: the source: an absolute path, or "<stream>"
    source: str
    mtime_ns: int | None = None
    #: acknowledged byte ranges, sorted, disjoint, half-open
    acked: list[tuple[int, int]] = field(default_factory=list)

    def acked_set(self) -> ftcore.RangeSet:
        rs = ftcore.RangeSet()
        for start, end in self.acked:
            rs.add(start, end)
        return rs

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "client_id": self.client_id,
            "file_id": self.file_id,
            "meta": self.meta,
            "size": self.size,
            "checksum": self.checksum,
            "source": self.source,
            "mtime_ns": self.mtime_ns,
            "acked": [[s, e] for s, e in self.acked],
        }

    @classmethod
    def from_json(cls, doc: Any) -> UploadState:
        """Parse a state document; ``ValueError`` when it is not one."""
        if not isinstance(doc, dict) or doc.get("version") != VERSION:
            raise ValueError("not an ftserver upload state (version 1)")
        try:
            acked = [(int(s), int(e)) for s, e in doc["acked"]]
            state = cls(
                client_id=str(doc["client_id"]),
                file_id=str(doc["file_id"]),
                meta=dict(doc["meta"]),
                size=int(doc["size"]),
                checksum=None if doc["checksum"] is None else str(doc["checksum"]),
                source=str(doc["source"]),
                mtime_ns=None if doc.get("mtime_ns") is None else int(doc["mtime_ns"]),
                acked=acked,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed upload state: {exc}") from None
        if any(not 0 <= s < e <= state.size for s, e in acked):
            raise ValueError("malformed upload state: a range outside the file")
        return state


def load(path: Path) -> UploadState | None:
    """The state in ``path``; None when there is none. ``ValueError`` when it is unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ValueError(f"{path}: not JSON") from None
    return UploadState.from_json(doc)


def save(path: Path, state: UploadState) -> None:
    """Write ``state`` to ``path`` atomically (a reader sees the old or the new document)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(state.to_json(), separators=(",", ":")).encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def default_path(source: Path, host: str, port: int) -> Path:
    """Where the CLI keeps the state of uploading ``source`` to ``host:port``:
    ``$XDG_STATE_HOME/ftserver/uploads/`` (default ``~/.local/state/...``), one file per
    (absolute path, server)."""
    import hashlib

    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    key = hashlib.sha256(f"{source.resolve()}\0{host}\0{port}".encode()).hexdigest()[:24]
    return Path(base) / "ftserver" / "uploads" / f"{key}.json"

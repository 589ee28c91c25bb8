"""What every exporter is, and what it says of a finished export.

The store hands a verified, truncated, flushed staging file to an :class:`Exporter`; the HTTP
API lists, locates, deletes and serves exports through the same interface, whatever the
exporter (local directory or S3), so that neither knows which one it talks to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

from ftserver.errors import StorageError
from ftserver.meta import FileMeta, JsonValue

#: ftserver's manifest key for the checksum given at init (the manifest's ``checksum`` is the
#: verified one, which replaces it)
INIT_CHECKSUM_KEY = "init_checksum"

#: a listing position: the sort key of the last file of a page (its meaning is the exporter's)
Key = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ExportInfo:
    """What is known of a finished export (enough to answer retransmitted commands)."""

    client_id: str
    file_id: str
    meta: FileMeta
    size: int
    checksum: str  # uppercase hex SHA-256
    path: Path
    #: where the file went, for people (an S3 exporter's ``s3://bucket/key``); empty: ``path``
    destination: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class ExportedFile:
    """One exported file as a listing shows it."""

    client_id: str
    file_id: str
    name: str
    size: int
    #: when it was exported, Unix seconds
    timestamp: float
    #: the manifest's object (init metadata, checksum, clientid, fileid, exported_at); empty
    #: when the manifest or the object's metadata could not be read
    metadata: dict[str, JsonValue]
    #: what a download's ``fileref`` carries to name this file
    fileref: str
    #: where the file can be fetched directly (a presigned URL); None: through the API
    url: str | None = None


@dataclass(frozen=True, slots=True)
class FilePage:
    """A page of the exported files, and the position after its last file when more follow."""

    files: list[ExportedFile]
    next_key: Key | None


@dataclass(frozen=True, slots=True)
class Redirect:
    """A file served elsewhere: the client is sent to ``url``."""

    url: str


class BackendError(StorageError):
    """The store behind an exporter (S3) failed a request of the HTTP API; the description
    says what happened (``s3_no_such_bucket``, ``s3_unavailable``, ...)."""

    http_status = 502
    #: the HTTP API's error code (EMQX's, for its S3 exporter)
    http_code: ClassVar[str] = "S3_ERROR"


class Exporter(Protocol):
    """Where finished files go, and how the HTTP API finds them again.

    The store verifies, truncates and flushes the staging file, journals EXPORTING, then calls
    :meth:`export`; afterwards it removes the staging directory. :meth:`lookup` must answer
    from local disk (it runs on the per-command path for transfers this process does not know
    yet). The listing methods are the HTTP API's; they may wait for the network, and raise
    :class:`BackendError` when the store behind the exporter fails.
    """

    #: local directory the exporter keeps its records in (created by the store)
    root: Path
    #: the tag and number of components of a listing position (see :data:`Key`)
    cursor_kind: ClassVar[str]
    cursor_length: ClassVar[int]

    def lookup(self, client_id: str, file_id: str) -> ExportInfo | None: ...

    async def export(
        self, client_id: str, file_id: str, meta: FileMeta, data_path: Path, checksum: str
    ) -> ExportInfo: ...

    def finish_interrupted(self, client_id: str, file_id: str, meta: FileMeta) -> ExportInfo | None:
        """A crash came after the staging data left and before the export was recorded:
        complete it if possible (None: the export is lost, the transfer starts over)."""
        ...

    async def list_files(self, after: Key, limit: int) -> FilePage:
        """Up to ``limit`` exported files whose position sorts after ``after`` (``()``: from
        the start), in order."""
        ...

    async def transfer_files(self, client_id: str, file_id: str) -> list[ExportedFile]:
        """The exported files of one transfer (normally one), sorted by name."""
        ...

    async def delete_transfer(self, client_id: str, file_id: str) -> int:
        """Delete the exports of one transfer; returns how many there were."""
        ...

    async def serve(self, fileref: str) -> Path | Redirect | None:
        """How to serve a download of ``fileref``: a local file to stream, a URL to send the
        client to, or None when it names no downloadable file."""
        ...

    async def close(self) -> None:
        """Release what the exporter holds (threads, connections)."""
        ...

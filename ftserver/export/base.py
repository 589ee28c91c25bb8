"""What every exporter is, and what it says of a finished export.

The store hands a verified, truncated, flushed staging file to an :class:`Exporter`; the HTTP
API lists, locates and deletes exports through the same interface, whatever the exporter
(local directory or S3).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ftserver.meta import FileMeta

#: ftserver's manifest key for the checksum given at init (the manifest's ``checksum`` is the
#: verified one, which replaces it)
INIT_CHECKSUM_KEY = "init_checksum"


@dataclass(frozen=True, slots=True)
class ExportInfo:
    """What is known of a finished export (enough to answer retransmitted commands)."""

    client_id: str
    file_id: str
    meta: FileMeta
    size: int
    checksum: str  # uppercase hex SHA-256
    path: Path


class Exporter(Protocol):
    """Where finished files go. The store verifies, truncates and flushes the staging file,
    journals EXPORTING, then calls :meth:`export`; afterwards it removes the staging
    directory. :meth:`lookup` must answer from local disk (it runs on the per-command path
    for transfers this process does not know yet)."""

    #: local directory the exporter keeps its records in (created by the store)
    root: Path

    def lookup(self, client_id: str, file_id: str) -> ExportInfo | None: ...

    async def export(
        self, client_id: str, file_id: str, meta: FileMeta, data_path: Path, checksum: str
    ) -> ExportInfo: ...

    def finish_interrupted(self, client_id: str, file_id: str, meta: FileMeta) -> ExportInfo | None:
        """A crash came after the staging data left and before the export was recorded:
        complete it if possible (None: the export is lost, the transfer starts over)."""
        ...

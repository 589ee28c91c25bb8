"""What the store tells an exporter that uploads files while they arrive (the S3 exporter:
:mod:`ftserver.export.s3stream`). The store calls these hooks on the event loop; they must
return at once (the work they start runs in the background)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import ftcore
from ftserver.meta import FileMeta

__all__ = ["Streaming"]


@runtime_checkable
class Streaming(Protocol):
    """What the store tells an exporter that streams files while they arrive."""

    def stream_open(
        self, client_id: str, file_id: str, meta: FileMeta, data_path: Path, asm: ftcore.Assembler
    ) -> None:
        """A transfer with its init metadata is open in this process. The exporter may turn
        the assembler's page-cache recycling off (it reads the parts back and drops their
        pages itself)."""

    def stream_wrote(
        self, client_id: str, file_id: str, start: int, end: int, verified: bool, reset: bool
    ) -> None:
        """Bytes [start, end) were written (``verified``: identical to what was there;
        ``reset``: the rolling hash started over)."""

    def stream_close(self, client_id: str, file_id: str) -> None:
        """The transfer was closed here (its state stays in the bucket)."""

    def stream_discard(self, client_id: str, file_id: str) -> None:
        """The transfer was aborted or expired: its upload and checkpoint go."""

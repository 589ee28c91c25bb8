"""What the store tells an exporter that uploads files while they arrive (the S3 exporter:
:mod:`ftserver.export.s3stream`). The store calls these hooks on the event loop; they must
return at once (the work they start runs in the background)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import ftcore
from ftserver.meta import FileMeta

__all__ = ["ADOPTED", "Adoption", "Streaming"]

#: in an adopted transfer's staging directory: the byte offset below which its data file has
#: no bytes (they are in parts of the multipart upload it continues; docs/cluster.md)
ADOPTED = "adopted"


@dataclass(frozen=True, slots=True)
class Adoption:
    """A transfer taken over from the bucket: its init metadata, and the rolling hash state
    of its bytes ``[0, hashed)``, which are in uploaded parts and not on this node."""

    meta: FileMeta
    hashed: int
    hash_state: bytes


@runtime_checkable
class Streaming(Protocol):
    """What the store tells an exporter that streams files while they arrive."""

    #: a transfer's TTL after its last activity, from its init metadata (the store sets its
    #: own, clamped one): checkpoints idle for longer are collected
    stream_ttl: Callable[[FileMeta | None], float]

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

    def stream_adopt(
        self, client_id: str, file_id: str, meta: FileMeta | None
    ) -> asyncio.Future[Adoption | None] | None:
        """A command names a transfer this node has neither staged nor exported: look for
        its checkpoint in the bucket and take it over. None when there is nothing to look
        for (recently looked, or ``meta``, an init's, cannot be streamed); otherwise the
        lookup, giving the adoption or None (no checkpoint of that transfer)."""

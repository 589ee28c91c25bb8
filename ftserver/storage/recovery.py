"""Reopening a staged transfer from its journal: after a restart, a handover or an idle close.

Blocking, and it can read up to the whole data file (the rolling hash absorbs what the last
checkpoint had not; unflushed ranges are re-hashed with BLAKE3): the store runs it in an
executor thread. It touches only the staging directory it is given.
"""

from __future__ import annotations

import logging
from pathlib import Path

import blake3

import ftcore
from ftserver.errors import storage_errors
from ftserver.storage.journal import Journal, Replay
from ftserver.storage.staging import DATA, JOURNAL

__all__ = ["VERIFY_CHUNK", "reopen"]

log = logging.getLogger(__name__)

#: bytes read per chunk when recovery re-checks unflushed ranges
VERIFY_CHUNK = 1 << 20


def reopen(d: Path, replay: Replay, what: str) -> tuple[ftcore.Assembler, Journal]:
    """Open the data file and the journal of the staged transfer in ``d`` as ``replay`` (its
    journal, read) describes them: the assembler starts from the last checkpoint and takes
    each range recorded after it whose bytes are really in the file; a range whose BLAKE3
    does not match (written, acknowledged, then lost to a power cut before its flush) is
    dropped, so the client resends it. ``what`` names the transfer in the log.

    Raises ``StorageError``.
    """
    checkpoint = replay.checkpoint
    with storage_errors():
        try:
            asm = ftcore.Assembler(d / DATA, checkpoint)
        except ValueError as exc:
            log.error("transfer %s: bad checkpoint (%s), re-reading", what, exc)
            asm = ftcore.Assembler(d / DATA)
            checkpoint = None
        try:
            exported = replay.exporting or 0
            if checkpoint is None and 0 < exported <= asm.file.size():
                asm.mark(0, exported)
            dropped = 0
            for offset, length, digest in replay.ranges:
                if asm.ranges.contains(offset, offset + length):
                    continue
                if digest is not None and not _verify(asm, offset, length, digest):
                    dropped += 1
                    continue
                asm.mark(offset, length)
            journal = Journal(d / JOURNAL, valid_length=replay.valid_length)
        except BaseException:
            asm.close()
            raise
    if dropped:
        log.warning(
            "transfer %s: %d unflushed range(s) did not survive; the client will resend them",
            what,
            dropped,
        )
    return asm, journal


def _verify(asm: ftcore.Assembler, offset: int, length: int, digest: bytes) -> bool:
    """Whether the file holds the bytes a journal record's BLAKE3 (16 bytes) names."""
    h = blake3.blake3()
    pos, end = offset, offset + length
    while pos < end:
        chunk = asm.file.read(pos, min(VERIFY_CHUNK, end - pos))
        if not chunk:
            return False
        h.update(chunk)
        pos += len(chunk)
    return bool(h.digest(length=16) == digest)

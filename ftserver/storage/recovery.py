"""Reopening a staged transfer from its journal: after a restart, a handover or an idle close.

Two cases, told apart by the boot id the journal's last ``OPENED`` record names:

- **the same boot** (the process crashed or was stopped; the machine did not): the page
  cache survived, so every journaled range is in the file. The assembler is rebuilt from the
  last checkpoint, the recorded ranges and the last recorded hash state without reading the
  data file (only what no recorded state covers is hashed, normally nothing).
- **another boot, or none recorded** (a machine crash, a power cut, or a journal of an older
  version): what was not flushed may be gone. Ranges flushed before their record (``sync``)
  count; a range with a BLAKE3 is re-hashed and dropped when it does not match; runs that
  carry a hash state are checked by re-hashing the prefix from the last checkpoint's state
  and comparing with each recorded state in turn, the first that differs and everything after
  it dropped. The client resends what was dropped instead of ending up with a corrupt file.
  The data is then flushed and the journal rewritten as one checkpoint of what was verified,
  claiming the current boot only then.

Blocking, and the second case reads what was received since the last checkpoint: the store
runs it in an executor thread. It touches only the staging directory it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import blake3

import ftcore
from ftserver.errors import storage_errors
from ftserver.storage.journal import Journal, Replay, checkpoint_record, current_boot_id
from ftserver.storage.staging import DATA, JOURNAL

__all__ = ["VERIFY_CHUNK", "reopen"]

log = logging.getLogger(__name__)

#: bytes read per chunk when recovery re-checks unflushed ranges
VERIFY_CHUNK = 1 << 20


def reopen(
    d: Path,
    replay: Replay,
    what: str,
    *,
    boot_id: Callable[[], str] = current_boot_id,
    recycle: bool = False,
) -> tuple[ftcore.Assembler, Journal]:
    """Open the data file and the journal of the staged transfer in ``d`` as ``replay`` (its
    journal, read) describes them (see the module's docstring). ``boot_id`` reads the current
    boot id; ``recycle`` is the assembler's page-cache recycling. ``what`` names the transfer
    in the log.

    Raises ``StorageError``.
    """
    checkpoint = replay.checkpoint
    booted = boot_id()
    with storage_errors():
        try:
            asm = ftcore.Assembler(d / DATA, checkpoint, recycle=recycle)
        except ValueError as exc:
            log.error("transfer %s: bad checkpoint (%s), re-reading", what, exc)
            asm = ftcore.Assembler(d / DATA, recycle=recycle)
            checkpoint = None
        try:
            exported = replay.exporting or 0
            if checkpoint is None and 0 < exported <= asm.file.size():
                asm.mark(0, exported, absorb=False)
            claimed = max((r.end for r in replay.ranges), default=0)
            # same boot, and the file is as long as the records say (a cheap fstat: a file
            # cut short by hand, or anything else odd, is checked like after a power cut)
            if replay.boot_id == booted and asm.file.size() >= claimed:
                _trust(asm, replay, what)
                journal = Journal(d / JOURNAL, valid_length=replay.valid_length, boot_id=booted)
            else:
                _verify_all(asm, replay, what)
                asm.flush()  # the checkpoint below claims it
                journal = Journal(
                    d / JOURNAL, valid_length=replay.valid_length, boot_id=booted, announce=False
                )
                try:
                    journal.rewrite([checkpoint_record(asm.dumps())])
                except BaseException:
                    journal.close()
                    raise
        except BaseException:
            asm.close()
            raise
    return asm, journal


def _trust(asm: ftcore.Assembler, replay: Replay, what: str) -> None:
    """The same boot: take every record as it stands, read nothing the records vouch for."""
    for r in replay.ranges:
        if r.end > r.start:
            asm.mark(r.start, r.length, absorb=False)
    if replay.hash_state is not None:
        try:
            asm.adopt_hash(replay.hash_state)
        except ValueError as exc:
            log.error("transfer %s: recorded hash state unusable (%s), re-reading", what, exc)
    asm.catch_up()


def _verify_all(asm: ftcore.Assembler, replay: Replay, what: str) -> None:
    """Another boot: keep what was flushed and what the file provably still holds."""
    verified_to = _verify_chain(asm, replay.states)
    dropped = 0
    for r in replay.ranges:
        if r.end <= r.start or r.end <= verified_to or asm.ranges.contains(r.start, r.end):
            continue
        if r.synced or (r.digest is not None and _verify(asm, r.start, r.length, r.digest)):
            asm.mark(r.start, r.length, absorb=False)
        else:
            dropped += 1
    asm.catch_up()
    if dropped:
        log.warning(
            "transfer %s: %d unflushed range(s) did not survive a machine restart; the client "
            "will resend them",
            what,
            dropped,
        )


def _verify_chain(asm: ftcore.Assembler, states: tuple[bytes, ...]) -> int:
    """Re-hash the file from the checkpoint's hash state through each state recorded after
    it (in the order written, which is the order they were taken) while they match; adopt the
    last that matched and return how far it reaches (the assembler's ``hashed`` when none
    did)."""
    if not states:
        return asm.hashed
    h = ftcore.RollingSha256.loads(asm.hash_state())
    best: bytes | None = None
    for state in states:
        want = ftcore.RollingSha256.loads(state).length
        if want < h.length:
            break  # the hash was reset (a rewrite): stop at what is checked
        pos = h.length
        while pos < want:
            chunk = asm.file.read(pos, min(VERIFY_CHUNK, want - pos))
            if not chunk:
                break
            h.update(chunk)
            pos += len(chunk)
        if h.dumps() != state:
            break
        best = state
    if best is None:
        return asm.hashed
    length = ftcore.RollingSha256.loads(best).length
    asm.mark(0, length, absorb=False)
    asm.adopt_hash(best)
    return length


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

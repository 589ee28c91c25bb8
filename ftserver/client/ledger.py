"""What of the file the server has, and what this run has sent: the upload's byte accounts.

:class:`Ledger` keeps the acknowledged byte ranges (what a resumed upload skips, what fin may
report missing) and the ranges published in this run (what is published again counts as
resent), and writes the acknowledged ranges to the state file (:mod:`ftserver.client.state`)
at most every :data:`STATE_INTERVAL` seconds, or at once when asked (a pause, a drop, the
end of a segment phase). Nothing here knows about MQTT: the upload's loop tells it what was
published and acknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import ftcore
from ftserver.client import state as statefile
from ftserver.client.state import UploadState

log = logging.getLogger("ftserver.client")

#: how often the state file is rewritten while data is acknowledged (seconds)
STATE_INTERVAL: Final = 1.0

Ranges = list[tuple[int, int]]


class Ledger:
    """The byte accounts of one upload, and its state file (``path``; None: none)."""

    def __init__(self, state: UploadState, path: Path | None, now: float) -> None:
        self.state = state
        self.path = path
        self.size = state.size
        self.acked = state.acked_set()
        #: bytes acknowledged before this run
        self.resumed = self.acked.covered
        #: byte ranges published at least once in this run
        self.sent = ftcore.RangeSet()
        #: segment bytes published in this run, and of those the ones published before
        self.bytes_sent = 0
        self.bytes_resent = 0
        self._dirty = False
        self._last_save = now

    @property
    def done(self) -> int:
        """Bytes the server has acknowledged."""
        return self.acked.covered

    def missing(self) -> Ranges:
        """The byte ranges not acknowledged yet (what is still to send)."""
        return self.acked.gaps(self.size)

    def published(self, offset: int, length: int) -> None:
        """A segment was published (again, perhaps)."""
        before = self.sent.covered
        self.sent.add(offset, offset + length)
        self.bytes_sent += length
        self.bytes_resent += length - (self.sent.covered - before)

    def republished(self, length: int) -> None:
        """A segment is published again by the MQTT client itself (after a reconnect)."""
        self.bytes_sent += length
        self.bytes_resent += length

    def acknowledged(self, offset: int, length: int) -> None:
        self.acked.add(offset, offset + length)
        self._dirty = True

    def forget(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Drop ``ranges`` from the acknowledged set (the server does not have them)."""
        drop = sorted(ranges)
        kept = ftcore.RangeSet()
        for start, end in self.acked:
            pos = start
            for ds, de in drop:
                if de <= pos or ds >= end:
                    continue
                if ds > pos:
                    kept.add(pos, ds)
                pos = max(pos, de)
            if pos < end:
                kept.add(pos, end)
        self.acked = kept
        self._dirty = True

    def save(self, now: float, *, force: bool = False) -> None:
        """Record the acknowledged ranges in the state file, if due (or ``force``)."""
        if self.path is None or (not self._dirty and not force):
            return
        if not force and now - self._last_save < STATE_INTERVAL:
            return
        self.state.acked = list(self.acked)
        try:
            statefile.save(self.path, self.state)
        except OSError as exc:
            log.warning("cannot write the state file %s: %s", self.path, exc)
        self._last_save = now
        self._dirty = False

    def finished(self) -> None:
        """The server confirmed the export: the state file has served its purpose."""
        if self.path is not None:
            statefile.remove(self.path)

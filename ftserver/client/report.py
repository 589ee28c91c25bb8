"""What an upload tells its caller: :class:`Progress` while it runs, :class:`UploadResult` at
the end.

:class:`Reporter` calls the application's ``on_progress`` a few times a second at most (and at
once when the state changes), so a progress bar costs the transfer nothing measurable however
small the segments are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

#: how often progress is reported (seconds)
PROGRESS_INTERVAL: Final = 0.2


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot for progress displays."""

    #: hashing, connecting, init, uploading, finishing, paused, reconnecting, done
    state: str
    #: bytes of the file the server has acknowledged
    bytes_done: int
    bytes_total: int
    #: segment bytes published so far, resends included
    bytes_sent: int
    #: seconds since the upload started
    elapsed: float
    #: bytes acknowledged before this run (from the state file)
    bytes_resumed: int = 0


@dataclass(frozen=True, slots=True)
class UploadResult:
    """A finished upload: the server confirmed the export."""

    client_id: str
    file_id: str
    name: str
    size: int
    #: hex SHA-256 sent in the init metadata (None with ``file_checksum=False``)
    checksum: str | None
    elapsed: float
    #: segment payload bytes published in this run, resends included
    bytes_sent: int
    #: of those, bytes sent more than once (resent after 0x80/0x97, after a reconnect, or
    #: because fin reported them missing)
    bytes_resent: int
    #: bytes skipped because the state file recorded them as acknowledged
    bytes_resumed: int
    reconnects: int
    #: pause episodes (0x97)
    pauses: int
    #: segments resent after 0x80
    retries: int
    #: fin commands sent
    fins: int

    @property
    def extra_ratio(self) -> float:
        """Resent bytes as a fraction of the bytes this run had to send."""
        need = self.size - self.bytes_resumed
        return self.bytes_resent / need if need > 0 else 0.0


class Reporter:
    """Throttles ``on_progress``: at most every :data:`PROGRESS_INTERVAL` seconds while the
    state stays the same; ``None`` reports nothing."""

    def __init__(self, on_progress: Callable[[Progress], None] | None, started: float) -> None:
        self.on_progress = on_progress
        self.started = started
        self.last_report = 0.0
        self.last_state = ""

    def report(
        self,
        state: str,
        now: float,
        *,
        done: int,
        total: int,
        sent: int,
        resumed: int,
        force: bool = False,
    ) -> None:
        """Hand a :class:`Progress` to the callback unless it had one just now with the same
        state."""
        if self.on_progress is None:
            return
        if not force and state == self.last_state and now - self.last_report < PROGRESS_INTERVAL:
            return
        self.last_report = now
        self.last_state = state
        self.on_progress(Progress(state, done, total, sent, now - self.started, resumed))

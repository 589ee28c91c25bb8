"""A durable outbox: event documents on disk until a sink has delivered them.

One directory per sink and worker, ``<data_dir>/outbox/<sink>/<worker>/``, named by the
worker's index and not its pid, so that the worker the supervisor starts in place of a dead one
finds what its predecessor left (and a server restarted with fewer workers adopts the
directories of the missing ones: :func:`adopt_orphans`).

**One file per event**, not an append-only log. An event is a few hundred bytes, written once
and deleted once, in any order (deliveries run in a window and retries reorder them): a file
per event makes "delivered" an ``unlink`` and "pending" a directory listing, with no
compaction, no record framing, no torn tail to repair, and nothing rewritten. A log would save
a ``rename`` per event but need an acknowledgement log beside it and a compaction that copies
the pending events while new ones arrive. At the rates events come (one per finished file)
the file per event costs nothing that shows.

Durability, in two steps. :meth:`Outbox.put` runs on the event loop *before the fin is
answered*: it writes the document to a temporary file and renames it into place (a few
microseconds, no flush), so once the device has its answer the event survives the process
being killed (``kill -9``: the page cache keeps the file). The flush that makes it survive a
power loss as well (``fsync`` of the file, then of the directory) runs in a thread shortly
after, for every event written meanwhile at once (:meth:`Outbox.sync`), and once more at
shutdown; flushing on the loop before each answer would stall every connection of the worker
for a disk flush per fin. A file that a power loss left empty or torn fails to parse when it is
read: it is logged, counted as dropped and removed, never delivered half.

Bounded: at most ``max_pending`` events per directory; a new one beyond that drops the oldest
(a warning and ``ftserver_notify_dropped_total``), so a receiver that stays away cannot fill
the disk.

File names are ``<nanoseconds since the epoch, 20 digits>-<event id>.json``: they sort by
creation (delivery goes oldest first) and carry the event id, so a pending event is listed
without being read. Temporary files start with ``.tmp-`` and are removed when the directory is
opened (a crash between the write and the rename came before any answer).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftserver.storage.journal import fsync_dir, write_all

log = logging.getLogger(__name__)

#: the outbox directories sit under ``<data_dir>/outbox/``
OUTBOX_DIR = "outbox"
SUFFIX = ".json"
TMP_PREFIX = ".tmp-"
LOCK_NAME = ".lock"


def outbox_dir(data_dir: Path, sink: str, worker: int) -> Path:
    """The outbox directory of ``sink`` in worker ``worker`` (0 for a single process)."""
    return data_dir / OUTBOX_DIR / sink / str(worker)


@dataclass(frozen=True, slots=True)
class Entry:
    """One pending event: its file name, id, exact bytes (what is sent and signed) and the
    document they parse to."""

    name: str
    event_id: str
    body: bytes
    doc: dict[str, Any]


class OutboxBusy(Exception):
    """Another process delivers from this outbox (its lock is held)."""


class Outbox:
    """The pending events of one sink in one worker, on disk, oldest first.

    Not thread-safe: every method but :meth:`sync` runs on the event loop; :meth:`sync` gets
    the names to flush from :meth:`take_unsynced` and may run in a thread.
    """

    def __init__(
        self,
        directory: Path,
        max_pending: int,
        *,
        on_drop: Callable[[], None] | None = None,
        on_count: Callable[[int], None] | None = None,
    ) -> None:
        self.directory = directory
        self.max_pending = max_pending
        #: a pending event was dropped (outbox full, or an unreadable file)
        self.on_drop = on_drop
        #: the number of pending events changed (a gauge)
        self.on_count = on_count
        directory.mkdir(parents=True, exist_ok=True)
        self._names: deque[str] = deque()
        self._unsynced: list[str] = []
        self._lock_fd = -1
        self._last = 0
        self.reload()

    # -- the directory -----------------------------------------------------------------------

    def reload(self) -> None:
        """List the directory again (at open, and after adopting another one's files);
        temporary files of an interrupted write are removed."""
        names = []
        for entry in os.scandir(self.directory):
            if entry.name.startswith(TMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            elif entry.name.endswith(SUFFIX) and entry.is_file():
                names.append(entry.name)
        names.sort()
        self._names = deque(names)
        while len(self._names) > self.max_pending:
            self._drop_oldest()
        self._count()

    def lock(self) -> None:
        """Become the one process that delivers from this outbox (``flock`` on its lock file,
        released when the process dies); raises :class:`OutboxBusy` when another holds it."""
        if self._lock_fd >= 0:
            return
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutboxBusy(str(self.directory)) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            os.close(fd)

    @property
    def locked(self) -> bool:
        return self._lock_fd >= 0

    # -- events ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._names)

    def put(self, event_id: str, body: bytes) -> str:
        """Store one event (written and renamed into place, not yet flushed: see the module
        docstring); returns its file name. Drops the oldest event when the outbox is full."""
        while len(self._names) >= self.max_pending:
            self._drop_oldest()
        now = max(time.time_ns(), self._last + 1)  # names keep their order within a process
        self._last = now
        name = f"{now:020d}-{event_id}{SUFFIX}"
        tmp = self.directory / (TMP_PREFIX + name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, body)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, self.directory / name)
        self._names.append(name)
        self._unsynced.append(name)
        self._count()
        return name

    def head(self, n: int, skip: frozenset[str] | set[str] = frozenset()) -> list[str]:
        """The names of the ``n`` oldest pending events, leaving out ``skip``."""
        out: list[str] = []
        for name in self._names:
            if name not in skip:
                out.append(name)
                if len(out) == n:
                    break
        return out

    def read(self, name: str) -> Entry | None:
        """The pending event ``name``; None when it is gone (dropped meanwhile) or unreadable
        (then it is logged, counted as dropped and removed)."""
        try:
            body = (self.directory / name).read_bytes()
        except FileNotFoundError:
            self._forget(name)
            return None
        event_id = name[21 : -len(SUFFIX)]
        try:
            doc = json.loads(body)
            if not isinstance(doc, dict) or doc.get("id") != event_id:
                raise ValueError("not this event's document")
        except ValueError as exc:
            log.error(
                "outbox %s: event file %s is unreadable (%s; a power loss before it was "
                "flushed?): dropped",
                self.directory,
                name,
                exc,
            )
            self.remove(name)
            if self.on_drop is not None:
                self.on_drop()
            return None
        return Entry(name, event_id, body, doc)

    def remove(self, name: str) -> None:
        """The event was delivered (or is given up): delete it."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.directory / name)
        self._forget(name)

    def _forget(self, name: str) -> None:
        with contextlib.suppress(ValueError):
            self._names.remove(name)  # normally at the head: found at once
            self._count()

    def _drop_oldest(self) -> None:
        name = self._names.popleft()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.directory / name)
        log.warning(
            "outbox %s: full (%d events pending, notify.max_pending): dropped the oldest "
            "event, %s, undelivered",
            self.directory,
            self.max_pending,
            name,
        )
        if self.on_drop is not None:
            self.on_drop()

    def _count(self) -> None:
        if self.on_count is not None:
            self.on_count(len(self._names))

    # -- flushing ----------------------------------------------------------------------------

    def take_unsynced(self) -> list[str]:
        """The names written since the last call (to give to :meth:`sync`)."""
        names, self._unsynced = self._unsynced, []
        return names

    def sync(self, names: list[str]) -> None:
        """Flush the files ``names`` (those still there) and then the directory, so that
        they survive a power loss. Safe to run in a thread."""
        if not names:
            return
        for name in names:
            try:
                fd = os.open(self.directory / name, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # delivered (or dropped) already
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(self.directory)


def adopt_orphans(root: Path, worker: int, workers: int) -> list[Path]:
    """Directories of workers that no longer exist (``root/<i>`` with ``i >= workers``) whose
    events this worker takes over: those with ``i % workers == worker``. Returns the
    directories moved into ``root/<worker>`` (each emptied and removed); one that another
    process still delivers from (locked) is left alone."""
    moved: list[Path] = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return moved
    mine = root / str(worker)
    for entry in entries:
        if not entry.name.isdigit() or not entry.is_dir():
            continue
        index = int(entry.name)
        if index < workers or index % workers != worker:
            continue
        src = Path(entry.path)
        lock_fd = os.open(src / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            mine.mkdir(parents=True, exist_ok=True)
            for name in os.listdir(src):
                if name.endswith(SUFFIX) and not name.startswith(TMP_PREFIX):
                    os.rename(src / name, mine / name)
            fsync_dir(mine)
            for name in os.listdir(src):
                with contextlib.suppress(OSError):
                    os.unlink(src / name)
            with contextlib.suppress(OSError):
                os.rmdir(src)
            moved.append(src)
        finally:
            os.close(lock_fd)
    if moved:
        log.info("outbox %s: took over the events of %d earlier worker(s)", mine, len(moved))
    return moved

"""Delivery from an outbox to a sink: at least once, retried with capped exponential backoff.

A :class:`Courier` owns one :class:`~ftserver.notify.outbox.Outbox` and one :class:`Sink`. It
sends the oldest pending events, up to the sink's window at once, and removes each from disk
only once the sink says it was delivered (the broker's PUBACK, the receiver's 2xx). Any failure
(a refused connection, a timeout, an HTTP 500) closes the sink's connection, waits, and starts
again from the oldest event still pending: what was sent before the failure but not confirmed
is sent again (so a receiver may see an event twice: the event ``id`` tells duplicates apart).
The wait doubles from :data:`RETRY_FIRST` up to ``retry_max``, with jitter (each wait is drawn
between half and all of its step), and starts over after a success.

A second task flushes the events written since the last flush (see ``outbox.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Protocol

from ftserver.notify.outbox import Entry, Outbox, OutboxBusy

log = logging.getLogger(__name__)

#: the first wait after a failure (seconds); it doubles up to ``notify.retry_max``
RETRY_FIRST = 0.2
#: how long events written on the loop may wait for their flush (batched meanwhile)
SYNC_DELAY = 0.01


class Sink(Protocol):
    """Where events go: the broker (``mqtt``) or the webhook (``webhook``)."""

    #: the sink's name: its outbox directory and its metric label
    name: str
    #: events sent at once before their confirmations are awaited
    window: int

    def describe(self) -> str:
        """Where it delivers, for log lines (never a secret)."""
        ...

    def admits(self, doc: dict[str, object]) -> bool:
        """Whether this sink can ever deliver ``doc`` (an event it cannot is never queued)."""
        ...

    async def connect(self) -> None:
        """Be ready to send (connected); raises when that fails."""
        ...

    async def send(self, entry: Entry) -> None:
        """Deliver one event; returns once the receiver confirmed it, raises otherwise."""
        ...

    async def close(self) -> None:
        """Drop the connection (the next :meth:`connect` makes a new one)."""
        ...


class Backoff:
    """Capped exponential backoff with jitter."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = max(cap, first)
        self.failures = 0

    def next(self) -> float:
        step = min(self.cap, self.first * 2 ** min(self.failures, 32))
        self.failures += 1
        return random.uniform(step / 2, step)

    def reset(self) -> None:
        self.failures = 0


class Courier:
    """Delivers one outbox through one sink until stopped."""

    def __init__(self, outbox: Outbox, sink: Sink, *, retry_max: float) -> None:
        self.outbox = outbox
        self.sink = sink
        self.backoff = Backoff(RETRY_FIRST, retry_max)
        self._wake = asyncio.Event()
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        #: events delivered since start (tests and logs)
        self.delivered = 0

    # -- the event loop side -----------------------------------------------------------------

    def put(self, event_id: str, body: bytes) -> None:
        """Store one event (before the fin is answered) and have it delivered."""
        self.outbox.put(event_id, body)
        self._wake.set()
        self._dirty.set()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._deliver_forever(), name=f"notify-{self.sink.name}"),
            asyncio.create_task(self._sync_forever(), name=f"notify-{self.sink.name}-sync"),
        ]

    async def stop(self) -> None:
        """Stop delivering; what is pending stays on disk, flushed, for the next start."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.sink.close()
        try:
            await self._sync()
        except OSError as exc:
            log.error("notify %s: flushing the outbox failed: %s", self.sink.name, exc)
        self.outbox.unlock()
        if len(self.outbox):
            log.info(
                "notify %s: %d event(s) stay pending in %s",
                self.sink.name,
                len(self.outbox),
                self.outbox.directory,
            )

    # -- delivery ----------------------------------------------------------------------------

    async def _deliver_forever(self) -> None:
        sink = self.sink
        failures = 0  # attempts failed in a row
        while True:
            if not len(self.outbox):
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                self.outbox.lock()
                await sink.connect()
                await self._deliver()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await sink.close()
                delay = self.backoff.next()
                level = logging.DEBUG if failures else logging.WARNING  # once per outage
                failures += 1
                log.log(
                    level,
                    "notify %s: delivery to %s failed (%s); %d event(s) wait, retrying in "
                    "%.1fs, then with backoff up to %gs",
                    sink.name,
                    sink.describe(),
                    _brief(exc),
                    len(self.outbox),
                    delay,
                    self.backoff.cap,
                )
                await asyncio.sleep(delay)
                continue
            if failures:
                log.info(
                    "notify %s: delivering to %s again (after %d failed attempt(s))",
                    sink.name,
                    sink.describe(),
                    failures,
                )
                failures = 0
            self.backoff.reset()

    async def _deliver(self) -> None:
        """Send until the outbox is empty (raises at the first failure)."""
        outbox, sink = self.outbox, self.sink
        while True:
            names = outbox.head(sink.window)
            if not names:
                return
            entries = [e for e in map(outbox.read, names) if e is not None]
            if not entries:
                continue
            results = await asyncio.gather(*(sink.send(e) for e in entries), return_exceptions=True)
            failure: BaseException | None = None
            for entry, result in zip(entries, results, strict=True):
                if result is None:
                    outbox.remove(entry.name)
                    self.delivered += 1
                elif failure is None:
                    failure = result
            if failure is not None:
                raise failure
            self.backoff.reset()

    # -- flushing ----------------------------------------------------------------------------

    async def _sync_forever(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(SYNC_DELAY)  # more events of the same burst join this flush
            self._dirty.clear()
            try:
                await self._sync()
            except OSError as exc:
                log.error("notify %s: flushing the outbox failed: %s", self.sink.name, exc)

    async def _sync(self) -> None:
        names = self.outbox.take_unsynced()
        if names:
            await asyncio.get_running_loop().run_in_executor(None, self.outbox.sync, names)


def _brief(exc: BaseException) -> str:
    if isinstance(exc, OutboxBusy):
        return f"another process delivers from {exc}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

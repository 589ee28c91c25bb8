"""What every simulated device does the same way, whatever it speaks.

A device takes its files in order, reports when its work is done (or held at
``stop_after``), gets cut off at random when churn is asked for, reconnects with the same
identity within ``reconnect_timeout``, and books each finished file the same way, so the
figures of an MQTT run and of an HTTP run count the same things. The MQTT and HTTP devices
(:mod:`.mqtt`, :mod:`.http`) only say how a file goes out and how answers come back.
"""

from __future__ import annotations

import asyncio
import errno
import random
import time
from collections.abc import Callable

from bench.loadgen.context import Context


class Refused(ConnectionError):
    """The server answered a handshake with a failure reason code (CONNACK, SUBACK)."""

    def __init__(self, packet: str, code: int, client_id: str) -> None:
        super().__init__(f"{client_id}: {packet} 0x{code:02x}")
        self.kind = f"{packet} 0x{code:02x}"


def failure_kind(exc: BaseException) -> str:
    """The reason a connection attempt failed, as errors are counted by: ``CONNACK 0x9f``,
    ``connect refused`` (nothing accepted it), ``connect timeout``, ``connect reset``..."""
    if isinstance(exc, Refused):
        return exc.kind
    if isinstance(exc, ConnectionRefusedError):
        return "connect refused"
    if isinstance(exc, TimeoutError):
        return "connect timeout"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "connect reset"
    if isinstance(exc, ConnectionError):
        return "connect lost"  # closed before the handshake's answer
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"connect {errno.errorcode.get(exc.errno, exc.errno)}"
    return f"connect {type(exc).__name__}"


class Device:
    """The shared half of a device; a subclass is also an asyncio protocol and defines
    :meth:`connect` (raises ``OSError`` when it cannot) and :meth:`_resumed`."""

    def __init__(self, ctx: Context, index: int) -> None:
        self.ctx = ctx
        self.spec = ctx.spec
        self.stats = ctx.stats
        self.client_id = f"{self.spec.tag}-{index}"
        self.transport: asyncio.Transport | None = None
        self.finished: asyncio.Future[None] = ctx.loop.create_future()
        self.up = False  # connected and past the handshake
        self.stopping = False  # closing on purpose: no reconnect
        self._sizes = ctx.files(index)
        self._file_no = 0
        self._held = False  # reported to the context as held (or done)
        self._dropped_at = 0.0  # monotonic time of the last drop, until the next answer
        self._churn: asyncio.TimerHandle | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._rng = random.Random(self.spec.seed * 7919 + index)

    async def connect(self) -> None:
        raise NotImplementedError

    def _resumed(self) -> None:
        """Connected again after a drop: carry on where the upload was."""
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    # -- files ---------------------------------------------------------------------------

    def _next_file(self) -> tuple[str, int] | None:
        """The id and size of the next file; ``None`` once there is none (the device is
        then done: held for the driver if it was not yet, and finished)."""
        size = next(self._sizes, None)
        if size is None:
            self._work_done()
            return None
        self._file_no += 1
        return f"{self.client_id}.{self._file_no}", size

    def _work_done(self) -> None:
        if self._churn is not None:
            self._churn.cancel()
            self._churn = None
        if not self.ctx.released:
            self._hold(None)
        if not self.finished.done():
            self.finished.set_result(None)

    def _hold(self, resume: Callable[[], None] | None) -> None:
        """Tell the context once that this device stopped at ``stop_after`` (``resume``
        continues it) or has nothing left to do (``None``)."""
        if not self._held:
            self._held = True
            self.ctx.device_held(resume)

    def _file_ok(self, file_id: str, name: str, size: int, fin_t: float) -> None:
        """One file stored: counted, timed from its fin (``perf_counter``), to be verified."""
        stats = self.stats
        stats.files += 1
        stats.bytes += size
        stats.fin_ms.append((time.perf_counter() - fin_t) * 1e3)
        stats.exports.append((self.client_id, file_id, name, size))

    def _fail(self, message: str, kind: str) -> None:
        """An error that ends this device's work."""
        self.stats.error(message, kind)
        if not self.finished.done():
            self.finished.set_result(None)

    def _answered(self) -> None:
        """The server answered: the first answer after a drop ends the resume time."""
        if self._dropped_at:
            self.stats.resume_ms.append((time.monotonic() - self._dropped_at) * 1e3)
            self.stats.resume_at.append(time.time())
            self._dropped_at = 0.0

    # -- dropping and reconnecting -------------------------------------------------------

    def _lost(self) -> bool:
        """The common part of ``connection_lost``: whether the device must reconnect (it
        was up, is not closing and has work left)."""
        self.transport = None
        was_up, self.up = self.up, False
        if self._churn is not None:
            self._churn.cancel()
            self._churn = None
        return was_up and not self.stopping and not self.finished.done()

    def _reconnect_soon(self) -> None:
        self._dropped_at = time.monotonic()
        self._reconnecting = self.ctx.loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        spec = self.spec
        deadline = time.monotonic() + spec.reconnect_timeout
        await asyncio.sleep(spec.churn_pause)
        while True:
            try:
                await self.connect()
                break
            except OSError as exc:  # TimeoutError and ConnectionError included
                if self.transport is not None:
                    self.transport.abort()
                if time.monotonic() > deadline:
                    kind = f"re{failure_kind(exc)}"
                    self._fail(f"{self.client_id}: cannot reconnect: {exc!r}", kind)
                    return
                await asyncio.sleep(0.1 + self._rng.random() * 0.1)
        self.stats.reconnects += 1
        self._arm_churn()
        self._resumed()

    def _arm_churn(self) -> None:
        if self.spec.churn > 0:
            delay = self._rng.expovariate(1.0 / self.spec.churn)
            self._churn = self.ctx.loop.call_later(delay, self._drop)

    def _drop(self) -> None:
        self._churn = None
        if self.up and self.transport is not None and not self.finished.done():
            self.stats.drops += 1
            self.transport.abort()  # no goodbye: the device just vanishes

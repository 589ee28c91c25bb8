"""A TCP proxy on 127.0.0.1 that breaks connections on purpose.

Each connection forwards both ways until its fault strikes: after a random number of bytes
from the client (so in the middle of a packet, wherever it falls), or after a random time.
The fault is one of

- ``close``: both sides closed (FIN), bytes in flight lost;
- ``reset``: both sides reset (RST, SO_LINGER 0);
- ``stall``: nothing forwarded any more, in either direction, sockets left open (a black
  hole; only keep-alive or a timeout can notice), closed ``stall_hold`` seconds later.

``rate`` limits the client-to-server bytes per second (to make an upload last long enough to
be killed in the middle). ``up_bytes`` counts every byte forwarded to the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections import Counter
from collections.abc import Sequence

CHUNK = 64 * 1024


class FaultProxy:
    def __init__(
        self,
        target_port: int,
        *,
        faults: Sequence[str] = ("close", "reset", "stall"),
        budget: tuple[int, int] | None = None,
        every: tuple[float, float] | None = None,
        stall_hold: float = 30.0,
        rate: int | None = None,
        seed: int = 0,
    ) -> None:
        self.target_port = target_port
        self.faults = list(faults)
        self.budget = budget
        self.every = every
        self.stall_hold = stall_hold
        self.rate = rate
        self.rng = random.Random(seed)
        self.port = 0
        self.up_bytes = 0
        self.connections = 0
        self.struck: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: when False, new connections are forwarded without faults
        self.armed = True

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(creader, cwriter)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a handler task ends quietly, also when stop() cancels it
        finally:
            self._tasks.discard(task)
            _close(cwriter)

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.connections += 1
        sreader, swriter = await asyncio.open_connection("127.0.0.1", self.target_port)
        fault = asyncio.Event()
        cause: list[str] = []

        def strike(why: str) -> None:
            cause.append(why)
            fault.set()

        kind = self.rng.choice(self.faults) if self.faults else "close"
        budget = self.rng.randint(*self.budget) if self.budget and self.armed else None
        loop = asyncio.get_running_loop()
        timer = None
        if self.every and self.armed:
            timer = loop.call_later(self.rng.uniform(*self.every), strike, "timer")

        async def upstream() -> None:
            nonlocal budget
            while data := await creader.read(CHUNK):
                if budget is not None and len(data) >= budget:
                    swriter.write(data[:budget])
                    self.up_bytes += budget
                    strike("budget")
                    return
                if budget is not None:
                    budget -= len(data)
                swriter.write(data)
                self.up_bytes += len(data)
                await swriter.drain()
                if self.rate:
                    await asyncio.sleep(len(data) / self.rate)
            strike("eof")

        async def downstream() -> None:
            while data := await sreader.read(CHUNK):
                cwriter.write(data)
                await cwriter.drain()
            strike("eof")

        pumps = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        try:
            await fault.wait()
            for p in pumps:
                p.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            if cause[0] == "eof":
                return  # one side went away by itself
            self.struck[kind] += 1
            if kind == "reset":
                for w in (cwriter, swriter):
                    _reset(w)
            elif kind == "stall":
                await asyncio.sleep(self.stall_hold)
        finally:
            if timer is not None:
                timer.cancel()
            for p in pumps:
                p.cancel()
            _close(swriter)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()

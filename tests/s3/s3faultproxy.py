"""A TCP proxy on 127.0.0.1 that can stall and cut connections: the "S3 fails mid-upload"
fault, made deterministic.

``hold_after(n)``: once ``n`` more bytes went from clients to the server, the proxy stops
forwarding (the request in flight hangs) and sets :attr:`held`. ``cut()`` then closes every
connection at once. New connections are always accepted and forwarded (when the server is
down, they are closed right away, as a dead server would).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

CHUNK = 64 * 1024


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.held = threading.Event()
        self._hold_after: int | None = None
        self._count = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = self._call(
            asyncio.start_server(self._handle, "127.0.0.1", 0, reuse_address=True)
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def _call(self, coro: object) -> asyncio.Server:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        return fut.result(30)  # type: ignore[no-any-return]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        self._tasks.add(me)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(me)
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            self._writers.discard(writer)
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        down = asyncio.ensure_future(self._pump(up_reader, writer, False))
        self._tasks.add(down)
        try:
            await self._pump(reader, up_writer, True)
        finally:
            down.cancel()
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()
            self._tasks.discard(down)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if upstream and self._hold_after is not None:
                    self._count += len(data)
                    if self._count > self._hold_after:
                        self.held.set()
                        await asyncio.Event().wait()  # until the connection is cut
                writer.write(data)
                await writer.drain()

    def hold_after(self, n: int) -> None:
        def arm() -> None:
            self._count = 0
            self._hold_after = n

        self._loop.call_soon_threadsafe(arm)

    def cut(self) -> None:
        """Close every connection and stop holding."""

        def cut_all() -> None:
            self._hold_after = None
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()
            for t in list(self._tasks):
                t.cancel()

        self._loop.call_soon_threadsafe(cut_all)

    def close(self) -> None:
        """Cut everything, let the connection tasks end, stop the loop and its thread."""

        async def shutdown() -> None:
            self._hold_after = None
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0)  # let the aborted transports close

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

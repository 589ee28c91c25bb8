"""The control channel between the supervisor and a worker: small JSON messages over a Unix
socket pair, each framed by a 4-byte big-endian length.

A message with ``"req"`` expects a reply carrying ``"re"`` with the same number; any other
message is one-way. Data (segment bytes) never travels here (docs/architecture.md, Processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Msg = dict[str, Any]
_LEN = struct.Struct(">I")
#: a control message larger than this is a bug, not data
MAX_MESSAGE = 64 << 20


class ChannelClosed(ConnectionError):
    """The other end of the control channel went away."""


class Channel:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: Callable[[Msg], Awaitable[Msg | None]],
        name: str,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._handler = handler
        self.name = name
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Msg]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()

    @classmethod
    async def from_socket(
        cls, sock: socket.socket, handler: Callable[[Msg], Awaitable[Msg | None]], name: str
    ) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_MESSAGE)
        return cls(reader, writer, handler, name)

    def send(self, msg: Msg) -> None:
        if self._writer.is_closing():
            raise ChannelClosed(self.name)
        body = json.dumps(msg, separators=(",", ":")).encode()
        self._writer.write(_LEN.pack(len(body)) + body)

    async def call(self, msg: Msg) -> Msg:
        """Send a request and wait for its reply (callers bound the wait if they must)."""
        req = next(self._ids)
        fut: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting[req] = fut
        try:
            self.send({**msg, "req": req})
            return await fut
        finally:
            self._waiting.pop(req, None)

    async def run(self) -> None:
        """Read and dispatch messages until the other end closes."""
        try:
            while True:
                head = await self._reader.readexactly(_LEN.size)
                (n,) = _LEN.unpack(head)
                if n > MAX_MESSAGE:
                    raise ValueError(f"control message of {n} bytes")
                msg: Msg = json.loads(await self._reader.readexactly(n))
                re = msg.get("re")
                if re is not None:
                    fut = self._waiting.get(re)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                    continue
                task = asyncio.create_task(self._dispatch(msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            if not isinstance(exc, asyncio.IncompleteReadError):
                log.warning("control channel %s: %s", self.name, exc)
        finally:
            self.closed.set()
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ChannelClosed(self.name))
            self._writer.close()

    async def _dispatch(self, msg: Msg) -> None:
        try:
            reply = await self._handler(msg)
        except Exception:
            log.exception("control channel %s: handling %r failed", self.name, msg.get("op"))
            reply = {"error": "handler failed"}
        req = msg.get("req")
        if req is not None:
            with contextlib.suppress(ChannelClosed, ConnectionError):
                self.send({**(reply or {}), "re": req})

    def close(self) -> None:
        self._writer.close()

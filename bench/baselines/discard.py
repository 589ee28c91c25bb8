"""Raw loopback TCP into a uvloop server that discards (baseline c): the transport ceiling.

    python -m bench.baselines.discard [--port 0]

Prints ``discard: listening on 127.0.0.1:PORT``. Each connection's bytes land in one reused
buffer (``BufferedProtocol``) and are counted; when the client half-closes, the server answers
with the count in ASCII and closes, so the client knows everything arrived.
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop

BUFFER = 256 * 1024


class Discard(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buf = bytearray(BUFFER)
        self.view = memoryview(self.buf)
        self.count = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.count += nbytes

    def eof_received(self) -> bool:
        assert self.transport is not None
        self.transport.write(str(self.count).encode())
        self.transport.close()
        return True


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Discard, "127.0.0.1", port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"discard: listening on 127.0.0.1:{bound}", flush=True)
    await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    uvloop.run(serve(args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

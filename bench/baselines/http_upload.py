"""The same files by HTTP PUT (baseline e): a small resumable aiohttp upload server.

    python -m bench.baselines.http_upload --dir DIR [--port 0]

Prints ``http: listening on 127.0.0.1:PORT``. ``PUT /upload/{clientId}/{fileId}/{name}``
streams the body into ``DIR/partial/...`` (``pwrite`` per chunk, SHA-256 as it goes) and, once
the declared size is in, checks ``X-Checksum-SHA256`` and renames the file to
``DIR/files/{clientId}/{fileId}/{name}``: 201. A dropped upload is resumed: ``HEAD`` answers
``Upload-Offset`` (what the server holds), and a ``PUT`` with ``Content-Range: bytes
START-END/TOTAL`` continues from there (409 with the offset if START is not it). The hash state
lives in memory only: after a restart the server re-reads a partial file to rebuild it, which
is the cost ftserver's saved hash state avoids.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import ClientPayloadError, web

_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
CHUNK = 1 << 20


def export_path(root: Path, client_id: str, file_id: str, name: str) -> Path:
    return root / "files" / client_id / file_id / name


def partial_path(root: Path, client_id: str, file_id: str, name: str) -> Path:
    return root / "partial" / client_id / file_id / name


@dataclass
class Upload:
    received: int
    hasher: Any


class UploadServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uploads: dict[tuple[str, str, str], Upload] = {}
        self.reread_bytes = 0

    def _key(self, request: web.Request) -> tuple[str, str, str]:
        m = request.match_info
        return m["cid"], m["fid"], m["name"]

    def _open(self, key: tuple[str, str, str]) -> Upload:
        up = self.uploads.get(key)
        if up is None:
            partial = partial_path(self.root, *key)
            h = hashlib.sha256()
            received = 0
            if partial.exists():  # after a restart: re-read what is there to rebuild the hash
                with open(partial, "rb") as f:
                    while chunk := f.read(CHUNK):
                        h.update(chunk)
                        received += len(chunk)
                self.reread_bytes += received
            up = self.uploads[key] = Upload(received, h)
        return up

    async def head(self, request: web.Request) -> web.Response:
        key = self._key(request)
        final = export_path(self.root, *key)
        if final.exists():
            size = final.stat().st_size
            return web.Response(headers={"Upload-Offset": str(size), "Upload-Complete": "1"})
        up = self.uploads.get(key)
        if up is None and partial_path(self.root, *key).exists():
            up = self._open(key)  # after a restart: validate it now, as a resume needs
        offset = up.received if up is not None else 0
        return web.Response(headers={"Upload-Offset": str(offset)})

    async def put(self, request: web.Request) -> web.Response:
        key = self._key(request)
        length = request.content_length or 0
        start, total = 0, length
        if "Content-Range" in request.headers:
            m = _RANGE.fullmatch(request.headers["Content-Range"])
            if not m:
                return web.Response(status=400, text="bad Content-Range")
            start, total = int(m.group(1)), int(m.group(3))
        up = self._open(key)
        if start != up.received:
            return web.Response(status=409, headers={"Upload-Offset": str(up.received)})
        partial = partial_path(self.root, *key)
        partial.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            pos = start
            async for chunk in request.content.iter_any():
                os.pwrite(fd, chunk, pos)
                up.hasher.update(chunk)
                pos += len(chunk)
                up.received = pos
        except (OSError, ClientPayloadError):
            return web.Response(status=400, text="connection lost")  # nobody reads it
        finally:
            os.close(fd)
        if up.received < total:
            return web.Response(status=400, text="short body")
        digest = up.hasher.hexdigest()
        want = request.headers.get("X-Checksum-SHA256", "").lower()
        del self.uploads[key]
        if want and want != digest:
            partial.unlink()
            return web.Response(status=422, text="checksum_mismatch")
        final = export_path(self.root, *key)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)
        return web.json_response({"size": up.received, "sha256": digest}, status=201)


async def serve(root: Path, port: int) -> None:
    srv = UploadServer(root)
    app = web.Application()
    app.router.add_route("PUT", "/upload/{cid}/{fid}/{name}", srv.put)
    app.router.add_route("HEAD", "/upload/{cid}/{fid}/{name}", srv.head)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"http: listening on 127.0.0.1:{bound}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    uvloop.run(serve(args.dir, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

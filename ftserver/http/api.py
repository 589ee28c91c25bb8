"""The HTTP API (docs/protocol.md §7): EMQX-compatible file listing and download, health.

``build_app`` returns the aiohttp application the server mounts on ``--http``. Paths and
response shapes follow EMQX's ``/api/v5/file_transfer`` API so that tools written for EMQX
work unchanged; docs/http-api.md describes every endpoint and :mod:`ftserver.http.openapi`
holds the OpenAPI document served at ``/api/v5/openapi.json``.

The API shares nothing in memory with the MQTT workers. It finds exported files through the
one :class:`~ftserver.export.base.Exporter` interface, whichever exporter ``export.kind``
names (the local directory, or an S3 bucket whose files are served by redirects), and reads
the unfinished transfers from the data directory (:mod:`ftserver.storage.listing`); blocking reads
run in thread pools of their own, so that a slow disk or a large listing never blocks an
event loop nor the executor that exports run in.

Errors are JSON ``{"code": "...", "message": "..."}`` as EMQX writes them; this module's
middleware is the one place that turns failures into HTTP statuses (an
:class:`~ftserver.errors.FtError` carries its own).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import itertools
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import quote, urlencode

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict

from ftserver.config import Config
from ftserver.errors import FtError
from ftserver.export import make_exporter
from ftserver.export.base import BackendError, ExportedFile, Exporter, Redirect
from ftserver.http.cursor import CursorError, decode_cursor, encode_cursor
from ftserver.http.openapi import OPENAPI
from ftserver.meta import JsonValue
from ftserver.storage import listing

__all__ = ["API_BASE", "ApiContext", "ApiError", "build_app", "file_uri"]

log = logging.getLogger(__name__)

#: EMQX's API prefix
API_BASE: Final = "/api/v5"
#: page size when ``limit`` is not given, and the largest allowed (EMQX's values)
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 10_000
#: threads of the API's own pool (directory walks, stats, manifest reads)
API_THREADS: Final = 4
#: longest a readiness probe waits for the data directory before it answers 503
READY_TIMEOUT: Final = 5.0

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ApiContext:
    """What the API needs from the server process that hosts it."""

    config: Config
    data_dir: Path
    #: readiness beyond storage: True when every worker process is up
    workers_ready: Callable[[], bool] = field(default=lambda: True)
    #: the ``node`` query parameter of download URIs (accepted and ignored on download);
    #: empty: ``ftserver@<server.node>`` (the host name by default)
    node: str = ""

    def __post_init__(self) -> None:
        if not self.node:
            self.node = f"ftserver@{self.config.server.node_name}"


_CTX: Final = web.AppKey("ftserver_api_ctx", ApiContext)
_POOL: Final = web.AppKey("ftserver_api_pool", ThreadPoolExecutor)
#: the API's own exporter of ``export.kind`` (its catalogue side only), closed at cleanup
_EXPORTER: Final = web.AppKey[Exporter]("ftserver_api_exporter")


class ApiError(Exception):
    """A failed request: HTTP status, EMQX-style error code, human-readable message."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def _error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status, headers=headers)


#: error code of an aiohttp HTTPException (routing failures, body limits) by status
_HTTP_CODES: Final = {
    400: "BAD_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
}


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one boundary that turns failures into JSON error responses."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _error_response(exc.status, exc.code, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k == hdrs.ALLOW}
        code = _HTTP_CODES.get(exc.status, "ERROR")
        return _error_response(exc.status, code, exc.reason, headers)
    except FtError as exc:
        return _error_response(exc.http_status, _error_code(exc), exc.description)
    except Exception:
        log.exception("HTTP API: %s %s failed", request.method, request.path)
        return _error_response(500, "INTERNAL_ERROR", "internal error")


def _error_code(exc: FtError) -> str:
    """The EMQX-style code of an error: the store behind the exporter failing is EMQX's
    ``S3_ERROR`` (its description in the message); any other, its description."""
    if isinstance(exc, BackendError):
        return exc.http_code
    return exc.description.upper()


def _token_ok(authorization: str, token: str) -> bool:
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode("utf-8"))


def _needs_token(request: web.Request) -> bool:
    """Whether a request falls under the token: every route below ``/api/v5``, and every
    unmatched path that starts with it. The decision rests on the matched route, not on
    the raw path, so no spelling of a path reaches the API without the token."""
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else request.path
    return path == API_BASE or path.startswith(API_BASE + "/")


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[_CTX].config.http.token
    if (
        token
        and _needs_token(request)
        and not _token_ok(request.headers.get(hdrs.AUTHORIZATION, ""), token)
    ):
        raise ApiError(
            401,
            "UNAUTHORIZED",
            "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
            {hdrs.WWW_AUTHENTICATE: 'Bearer realm="ftserver"'},
        )
    return await handler(request)


async def _run(request: web.Request, fn: Callable[..., T], *args: Any) -> T:
    """Run blocking ``fn(*args)`` in the API's thread pool."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app[_POOL], functools.partial(fn, *args))


# --------------------------------------------------------------------------------------------
# health


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _probe_writable(data_dir: Path) -> None:
    """Create, write and delete a small file in the data directory (raises OSError)."""
    path = data_dir / f".ftserver-ready-{secrets.token_hex(8)}.tmp"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"ok")
    finally:
        os.close(fd)
        os.unlink(path)


async def _readyz(request: web.Request) -> web.Response:
    ctx = request.app[_CTX]
    reason = None
    try:
        workers = ctx.workers_ready()
    except Exception as exc:
        workers, reason = False, f"worker state unknown: {exc}"
    if not workers:
        reason = reason or "worker processes are not all up"
    else:
        try:
            await asyncio.wait_for(_run(request, _probe_writable, ctx.data_dir), READY_TIMEOUT)
        except TimeoutError:
            reason = f"data directory {ctx.data_dir}: write probe took over {READY_TIMEOUT:g}s"
        except OSError as exc:
            reason = f"data directory {ctx.data_dir} is not writable: {exc.strerror or exc}"
    if reason is not None:
        return web.json_response({"status": "unavailable", "reason": reason}, status=503)
    return web.json_response({"status": "ok"})


# --------------------------------------------------------------------------------------------
# listings


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, "BAD_REQUEST", f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def _following(request: web.Request, kind: str, length: int) -> tuple[str, ...]:
    raw = request.query.get("following")
    if raw is None:
        return ()
    try:
        return decode_cursor(raw, kind, length)
    except CursorError:
        raise ApiError(400, "BAD_REQUEST", "Invalid cursor") from None


def _page(items: Iterator[T], limit: int) -> tuple[list[T], bool]:
    """Up to ``limit`` items, and whether at least one more follows."""
    got = list(itertools.islice(items, limit + 1))
    return got[:limit], len(got) > limit


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), tz=UTC).isoformat()


def file_uri(node: str, relpath: str) -> str:
    """The download URI of an export, as EMQX forms it for its local exporter:
    ``/api/v5/file_transfer/file?node=<node>&fileref=<path below the exports root>``,
    form-encoded."""
    query = urlencode([("node", node), ("fileref", relpath)], errors="surrogateescape")
    return f"{API_BASE}/file_transfer/file?{query}"


def _file_item(ctx: ApiContext, f: ExportedFile) -> dict[str, JsonValue]:
    try:
        timestamp = _rfc3339(f.timestamp)
    except (OverflowError, OSError, ValueError):
        timestamp = _rfc3339(0)
    return {
        "clientid": f.client_id,
        "fileid": f.file_id,
        "name": f.name,
        "size": f.size,
        "timestamp": timestamp,
        "uri": f.url if f.url is not None else file_uri(ctx.node, f.fileref),
        "metadata": f.metadata,
    }


async def _list_files(request: web.Request) -> web.Response:
    ctx, exporter = request.app[_CTX], request.app[_EXPORTER]
    limit = _limit(request)
    after = _following(request, exporter.cursor_kind, exporter.cursor_length)
    page = await exporter.list_files(after, limit)
    body: dict[str, JsonValue] = {"files": [_file_item(ctx, f) for f in page.files]}
    if page.next_key is not None:
        body["cursor"] = encode_cursor(exporter.cursor_kind, page.next_key)
    return web.json_response(body)


def _transfer_ids(request: web.Request) -> tuple[str, str]:
    # aiohttp matches on the path with %2F kept encoded, then decodes each segment: an id
    # holding "/" arrives whole
    return request.match_info["clientid"], request.match_info["fileid"]


_FILES_NOT_FOUND = "Files requested for this transfer could not be found"


async def _transfer_files(request: web.Request) -> web.Response:
    ctx = request.app[_CTX]
    client_id, file_id = _transfer_ids(request)
    files = await request.app[_EXPORTER].transfer_files(client_id, file_id)
    if not files:
        raise ApiError(404, "FILES_NOT_FOUND", _FILES_NOT_FOUND)
    return web.json_response({"files": [_file_item(ctx, f) for f in files]})


async def _delete_transfer_files(request: web.Request) -> web.Response:
    client_id, file_id = _transfer_ids(request)
    removed = await request.app[_EXPORTER].delete_transfer(client_id, file_id)
    if not removed:
        raise ApiError(404, "FILES_NOT_FOUND", _FILES_NOT_FOUND)
    log.info("HTTP API: deleted %d export(s) of %r/%r", removed, client_id, file_id)
    return web.Response(status=204)


def _transfer_item(t: listing.TransferEntry) -> dict[str, JsonValue]:
    return {
        "clientid": t.client_id,
        "fileid": t.file_id,
        "name": t.name,
        "bytes_received": t.bytes_received,
        "expected_size": t.expected_size,
        "last_activity": _rfc3339(t.last_activity),
    }


async def _list_transfers(request: web.Request) -> web.Response:
    ctx = request.app[_CTX]
    limit = _limit(request)
    after = _following(request, "t", 3)
    entries, more = await _run(request, _page, listing.iter_transfers(ctx.data_dir, after), limit)
    body: dict[str, JsonValue] = {"transfers": [_transfer_item(t) for t in entries]}
    if more and entries:
        body["cursor"] = encode_cursor("t", entries[-1].key)
    return web.json_response(body)


async def _cluster_transfers(request: web.Request) -> web.Response:
    """Transfers in progress on every node of the cluster, from their checkpoints in the
    bucket (S3 export only; docs/cluster.md)."""
    exporter = request.app[_EXPORTER]
    lister = getattr(exporter, "cluster_transfers", None)
    if lister is None:
        raise ApiError(404, "NOT_A_CLUSTER", "Transfers across nodes need the S3 exporter")
    limit = _limit(request)
    after = _following(request, "c", 1)
    found, more = await lister(after[0] if after else "", limit)
    items: list[JsonValue] = []
    for _key, c in found:
        done = sum(min(c.part_size, c.size - (n - 1) * c.part_size) for n in c.parts)
        items.append(
            {
                "clientid": c.client_id,
                "fileid": c.file_id,
                "name": c.meta.get("name"),
                "expected_size": c.size,
                "bytes_in_parts": done,
                "node": c.node,
                "generation": c.generation,
                "state": c.state,
                "last_activity": _rfc3339(c.updated_at),
            }
        )
    body: dict[str, JsonValue] = {"transfers": items}
    if more and found:
        body["cursor"] = encode_cursor("c", (found[-1][0],))
    return web.json_response(body)


# --------------------------------------------------------------------------------------------
# download


def _content_disposition(name: str) -> str:
    value = f"attachment; filename*=UTF-8''{quote(name, safe='', errors='surrogateescape')}"
    if name.isascii() and name.isprintable() and '"' not in name and "\\" not in name:
        value = f'attachment; filename="{name}"; ' + value.removeprefix("attachment; ")
    return value


class _ExactFileResponse(web.FileResponse):
    """A FileResponse that serves exactly its file.

    aiohttp's FileResponse serves a sibling ``<name>.gz`` or ``<name>.br`` instead of the
    file to a client that accepts that encoding; another export of the same transfer could
    be named so. This one prepares against a copy of the request without Accept-Encoding.
    """

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return await super().prepare(request)
        headers = CIMultiDict(request.headers)
        headers.popall(hdrs.ACCEPT_ENCODING, None)
        return await super().prepare(request.clone(headers=headers))


async def _download(request: web.Request) -> web.StreamResponse:
    fileref = request.query.get("fileref")
    if fileref is None:
        raise ApiError(400, "BAD_REQUEST", "missing query parameter: fileref")
    # "node" (EMQX's cluster node holding the file) is accepted and ignored: one node here
    served = await request.app[_EXPORTER].serve(fileref)
    if served is None:
        raise ApiError(404, "NOT_FOUND", "Not found")
    if isinstance(served, Redirect):
        raise web.HTTPTemporaryRedirect(served.url)
    return _ExactFileResponse(
        served,
        headers={
            hdrs.CONTENT_TYPE: "application/octet-stream",
            hdrs.CONTENT_DISPOSITION: _content_disposition(fileref.rsplit("/", 1)[-1]),
        },
    )


# --------------------------------------------------------------------------------------------
# the application


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def build_app(ctx: ApiContext) -> web.Application:
    """The API's aiohttp application (routes in docs/http-api.md and in :data:`OPENAPI`)."""
    app = web.Application(middlewares=[_errors, _auth])
    app[_CTX] = ctx
    pool = ThreadPoolExecutor(max_workers=API_THREADS, thread_name_prefix="ftserver-api")
    app[_POOL] = pool

    async def shutdown_pool(_app: web.Application) -> None:
        pool.shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(shutdown_pool)
    exporter = app[_EXPORTER] = make_exporter(ctx.config.export, ctx.data_dir)

    async def close_exporter(_app: web.Application) -> None:
        await exporter.close()

    app.on_cleanup.append(close_exporter)

    r = app.router
    r.add_get("/healthz", _healthz, allow_head=False)
    r.add_get("/readyz", _readyz, allow_head=False)
    r.add_get(f"{API_BASE}/openapi.json", _openapi, allow_head=False)
    ft = f"{API_BASE}/file_transfer"
    r.add_get(f"{ft}/files", _list_files, allow_head=False)
    r.add_get(f"{ft}/files/{{clientid}}/{{fileid}}", _transfer_files, allow_head=False)
    r.add_delete(f"{ft}/files/{{clientid}}/{{fileid}}", _delete_transfer_files)
    r.add_get(f"{ft}/file", _download, allow_head=True)
    r.add_get(f"{ft}/transfers", _list_transfers, allow_head=False)
    r.add_get(f"{ft}/cluster/transfers", _cluster_transfers, allow_head=False)
    return app

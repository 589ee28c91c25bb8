"""The HTTP API (PROTOCOL.md §7): EMQX-compatible file listing and download, health.

``build_app`` returns the aiohttp application the server mounts on ``--http``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from ftserver.config import Config


@dataclass
class ApiContext:
    """What the API needs from the server process that hosts it."""

    config: Config
    data_dir: Path
    #: readiness beyond storage: True when every worker process is up
    workers_ready: Callable[[], bool] = field(default=lambda: True)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(ctx: ApiContext) -> web.Application:
    app = web.Application()
    app["ctx"] = ctx
    app.router.add_get("/healthz", _healthz)
    return app

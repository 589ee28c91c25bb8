"""Fixtures of the end-to-end tests: real ftserver processes on 127.0.0.1, port 0."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ftharness import ServerProcess

_ids = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per test module (tests use distinct client ids)."""
    srv = ServerProcess(tmp_path_factory.mktemp("srv") / "data").start()
    yield srv
    assert srv.stop() == 0, srv.stderr()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers of the test's own (stopped at the end if still running)."""
    started: list[ServerProcess] = []

    def start(
        *extra: str, data: Path | None = None, env: dict[str, str] | None = None, mqtt_port: int = 0
    ) -> ServerProcess:
        srv = ServerProcess(data or tmp_path / "data", *extra)
        if env:
            srv.env.update(env)
        started.append(srv)
        return srv.start(mqtt_port)

    yield start
    for srv in started:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


@pytest.fixture
def cid(request: pytest.FixtureRequest) -> str:
    """A client id unique to the test."""
    name = "".join(ch if ch.isalnum() else "-" for ch in request.node.name[:40])
    return f"c{next(_ids)}-{name}"

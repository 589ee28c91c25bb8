"""Fixtures of the uploader's tests: real ftserver processes on 127.0.0.1, port 0 (through
the harness of the integration tests), and small helpers."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from ftharness import ServerProcess

_ids = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One single-process server per test module."""
    srv = ServerProcess(tmp_path_factory.mktemp("srv") / "data", "--workers", "1").start()
    yield srv
    assert srv.stop() == 0, srv.stderr()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start single-process servers of the test's own (stopped at the end)."""
    started: list[ServerProcess] = []

    def start(*extra: str) -> ServerProcess:
        srv = ServerProcess(tmp_path / f"data{len(started)}", "--workers", "1", *extra)
        started.append(srv)
        return srv.start()

    yield start
    for srv in started:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


@pytest.fixture
def cid(request: pytest.FixtureRequest) -> str:
    """A client id unique to the test."""
    name = "".join(ch if ch.isalnum() else "-" for ch in request.node.name[:40])
    return f"u{next(_ids)}-{name}"

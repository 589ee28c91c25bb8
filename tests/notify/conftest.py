"""Fixtures of the notification tests: a real Mosquitto on 127.0.0.1 (``notifyhelpers``) and
real ftserver processes (the integration harness)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from notifyhelpers import Broker

from ftharness import ServerProcess

_ids = itertools.count()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "mosquitto").start()
    yield b
    b.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ftserver processes of the test's own (stopped at the end if still running)."""
    started: list[ServerProcess] = []

    def start(*extra: str, data: Path | None = None) -> ServerProcess:
        srv = ServerProcess(data or tmp_path / "data", *extra)
        started.append(srv)
        return srv.start()

    yield start
    for srv in started:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


@pytest.fixture
def cid(request: pytest.FixtureRequest) -> str:
    """A client id unique to the test."""
    return f"n{next(_ids)}-{request.node.name[:30]}".replace("[", "-").replace("]", "")

"""Fixtures of the S3 export tests: one real SeaweedFS for the session, a bucket per test,
real ftserver processes exporting to it.

SeaweedFS runs on 127.0.0.1 only, with telemetry off and SigV4 credentials enforced (see
``seaweed.py``). After every test, the test's bucket must have no multipart upload left open.
The ftserver processes get an AWS environment that cannot reach anything but the loopback
server: no config or credentials files, the instance metadata service disabled.
"""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from s3helpers import AWS_ENV
from seaweed import SECRET_KEY, SeaweedFS, open_uploads

from ftharness import ServerProcess

_ids = itertools.count()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS for the whole session (tests use buckets of their own)."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop(kill=True)


@pytest.fixture(scope="session")
def s3(seaweed: SeaweedFS) -> Any:
    """A botocore client of the test server, with the right credentials."""
    return seaweed.client()


@pytest.fixture
def bucket(request: pytest.FixtureRequest, seaweed: SeaweedFS, s3: Any) -> Iterator[str]:
    """A new bucket for the test; afterwards no multipart upload may be left open in it."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    name = f"ft{next(_ids)}-{slug}"[:63].rstrip("-")
    s3.create_bucket(Bucket=name)
    yield name
    if seaweed.proc is not None:
        assert open_uploads(s3, name) == []


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ftserver processes (``--set`` flags given); stopped cleanly at the end."""
    started: list[ServerProcess] = []

    def start(*args: str, data: Path | None = None, env: dict[str, str] | None = None) -> Any:
        srv = ServerProcess(data or tmp_path / "data", *args)
        srv.env.update(AWS_ENV)
        if env:
            srv.env.update(env)
        started.append(srv)
        return srv.start()

    yield start
    for srv in started:
        if srv.proc is not None and srv.proc.poll() is None:
            assert srv.stop() == 0, srv.stderr()
        assert "Traceback" not in srv.stderr(), srv.stderr()
        assert SECRET_KEY not in srv.stderr()


@pytest.fixture
def cid(request: pytest.FixtureRequest) -> str:
    """A client id unique to the test."""
    name = "".join(ch if ch.isalnum() else "-" for ch in request.node.name[:40])
    return f"c{next(_ids)}-{name}"

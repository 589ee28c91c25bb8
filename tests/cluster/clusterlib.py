"""Fixtures of the cluster tests: SeaweedFS (tests/s3's), three ftserver nodes with their own
data directories and ``server.node``, and HAProxy running ``deploy/haproxy.cfg`` itself (the
addresses it takes from the environment are the only thing the test supplies)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "s3"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from s3helpers import AWS_ENV, s3_args  # noqa: E402
from seaweed import SeaweedFS, free_port, open_uploads  # noqa: E402

from ftharness import ServerProcess  # noqa: E402

HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
PART = 5 << 20


class Node:
    """One ftserver node with fixed ports (HAProxy's configuration names them)."""

    def __init__(self, name: str, data: Path, args: list[str]) -> None:
        self.name = name
        self.data = data
        self.args = args
        self.mqtt = free_port()
        self.http = free_port()
        self.srv: ServerProcess | None = None
        self.logs: list[str] = []

    def start(self) -> Node:
        srv = ServerProcess(
            self.data, *self.args, "--set", f"server.node={self.name}",
            "--http", f"127.0.0.1:{self.http}",
        )  # fmt: skip
        srv.env.update(AWS_ENV)
        self.srv = srv.start(mqtt_port=self.mqtt)
        return self

    def log(self) -> str:
        """Everything this node logged, over its restarts."""
        now = self.srv.stderr() if self.srv is not None else ""
        return "".join(self.logs) + now

    def kill(self) -> None:
        assert self.srv is not None
        self.srv.kill()
        self.logs.append(self.srv.stderr())
        self.srv = None

    def stop(self) -> None:
        if self.srv is not None and self.srv.proc is not None and self.srv.proc.poll() is None:
            assert self.srv.stop() == 0, self.srv.stderr()
            self.logs.append(self.srv.stderr())
            self.srv = None


class HAProxy:
    """HAProxy on deploy/haproxy.cfg, listening on 127.0.0.1."""

    def __init__(self, nodes: list[Node], workdir: Path) -> None:
        self.port = free_port()
        self.env = dict(os.environ, FT_LISTEN=f"127.0.0.1:{self.port}")
        for i, node in enumerate(nodes, 1):
            self.env[f"FT_NODE{i}"] = f"127.0.0.1:{node.mqtt}"
            self.env[f"FT_NODE{i}_HTTP"] = str(node.http)
        self.log = workdir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HAProxy:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        check = subprocess.run(
            [binary, "-c", "-f", str(HAPROXY_CFG)], env=self.env, capture_output=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [binary, "-db", "-f", str(HAPROXY_CFG)], env=self.env, stdout=out, stderr=out
            )
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def wait_ready(node: Node, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node.http}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{node.name} not ready"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop(kill=True)


@pytest.fixture
def cluster(seaweed: SeaweedFS, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """(bucket, [3 nodes], haproxy, s3 client): nodes started, HAProxy up and seeing them."""
    s3 = seaweed.client()
    bucket = f"cluster-{abs(hash(request.node.name)) % 10**8}"
    s3.create_bucket(Bucket=bucket)
    settings = {
        "export.part_size": PART,
        "export.request_timeout": "5s",
        "transfer.segments_gc_interval": "1s",
    }
    args = s3_args(seaweed, bucket, **settings)
    nodes = [Node(f"node{i}", tmp_path / f"data{i}", args) for i in (1, 2, 3)]
    for node in nodes:
        node.start()
    proxy = HAProxy(nodes, tmp_path).start()
    for node in nodes:
        wait_ready(node)
    time.sleep(2.5)  # HAProxy's checks (rise 2, every second) see every node up
    yield bucket, nodes, proxy, s3
    proxy.stop()
    for node in nodes:
        node.stop()
        assert "Traceback" not in node.log(), node.log()
    if seaweed.proc is not None:
        assert open_uploads(s3, bucket) == []

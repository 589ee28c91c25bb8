"""The servers a benchmark runs against, each a child process on 127.0.0.1.

Every service knows its MQTT/TCP/HTTP port, the pids to measure (a server and, where the
design has one, its helper: Mosquitto plus the naive subscriber), the directory its exports
land in (for the load generator's verification) and how to clear them between runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.baselines.mosquitto import find_mosquitto, write_config
from bench.loadgen.spec import Target

START_TIMEOUT = 30.0
#: command-line words that name the processes measured
_ROLES = (
    ("serve", "supervisor"),
    ("_worker", "worker"),
    ("bench.baselines.naive_subscriber", "subscriber"),
    ("bench.baselines.http_upload", "http-server"),
    ("bench.baselines.discard", "discard"),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[str], timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def _drain(stream: object) -> threading.Thread:
    """Keep reading a child's stdout so it never blocks on a full pipe."""

    def run() -> None:
        for _line in stream:  # type: ignore[attr-defined]
            pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _count_files(root: Path) -> int:
    return sum(len(files) for _d, _dirs, files in os.walk(root))


def _wait_line(proc: subprocess.Popen[str], prefix: str, timeout: float = START_TIMEOUT) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{proc.args!r} exited at start (status {proc.wait()})")
        if line.startswith(prefix):
            return line.strip()
    raise RuntimeError(f"{proc.args!r}: no {prefix!r} line within {timeout}s")


class Service:
    """A started server; ``target`` is the load generator's name for it."""

    target: Target
    label: str

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.procs: list[subprocess.Popen[str]] = []
        self._logs: list[object] = []
        self._drains: list[threading.Thread] = []

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[str]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"{name}.log", "a")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
        self.procs.append(proc)
        return proc

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def name_of(self, pid: int) -> str:
        """The role of one of the service's processes, from its command line."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return "?"
        words = [a.decode(errors="replace") for a in argv if a]
        for marker, role in _ROLES:
            if marker in words:
                return role
        return Path(words[0]).name if words else "?"

    @property
    def verify_dir(self) -> str:
        return ""

    def reset(self) -> None:
        """Delete what the last run exported (between runs, outside any timing)."""

    def exported_files(self) -> int | None:
        """Files exported so far, counted on disk (``None``: this service stores nothing)."""
        return None

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._reap()

    def _reap(self) -> None:
        """Close what the stopped (or killed) processes leave open."""
        for t in self._drains:
            t.join(5)
        self._drains.clear()
        for p in self.procs:
            if p.stdout is not None:
                p.stdout.close()
        self.procs.clear()
        for log in self._logs:
            log.close()  # type: ignore[attr-defined]
        self._logs.clear()

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        self._drains.append(_drain(proc.stdout))

    def start(self) -> Service:
        raise NotImplementedError


class FtServer(Service):
    target: Target = "ftserver"
    label = "ftserver"

    def __init__(
        self, workdir: Path, *, workers: int = 0, window: int = 64, extra: tuple[str, ...] = ()
    ) -> None:
        super().__init__(workdir)
        self.data = workdir / "data"
        self.workers = workers
        self.window = window
        self.extra = extra
        self.http_port = 0

    def start(self, port: int = 0) -> FtServer:
        argv = [
            sys.executable, "-m", "ftserver", "serve",
            "--mqtt", f"127.0.0.1:{port}", "--http", "127.0.0.1:0", "--data", str(self.data),
            "--workers", str(self.workers), "--log-level", "warning",
            "--set", f"mqtt.receive_maximum={min(self.window, 65535)}",
            "--set", "limits.max_connections_per_ip=0", "--set", "limits.max_connections=0",
            *self.extra,
        ]  # fmt: skip
        proc = self._spawn("ftserver", argv)
        assert proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"ftserver exited at start: see {self.workdir}/ftserver.log")
            if line.startswith("ftserver: mqtt listening on "):
                self.port = int(line.rsplit(":", 1)[1])
            elif line.startswith("ftserver: http listening on "):
                self.http_port = int(line.rsplit(":", 1)[1])
            elif line.startswith("ftserver: data directory"):
                self._drain(proc)
                return self
        raise RuntimeError("ftserver did not report its listeners in time")

    @property
    def verify_dir(self) -> str:
        return str(self.data)

    def reset(self) -> None:
        shutil.rmtree(self.data / "exports", ignore_errors=True)

    def exported_files(self) -> int:
        """Exports whose data file and manifest are both in place."""
        from ftserver.export.layout import MANIFEST_SUFFIX

        n = 0
        for _dir, _dirs, files in os.walk(self.data / "exports"):
            names = set(files)
            n += sum(
                1
                for f in files
                if f.endswith(MANIFEST_SUFFIX) and f[: -len(MANIFEST_SUFFIX)] in names
            )
        return n

    def listed_files(self) -> int:
        """Exports the HTTP API lists (``GET /api/v5/file_transfer/files``, every page)."""
        import json
        import urllib.parse
        import urllib.request

        base = f"http://127.0.0.1:{self.http_port}/api/v5/file_transfer/files?limit=10000"
        n, cursor = 0, ""
        while True:
            url = base + (f"&following={urllib.parse.quote(cursor)}" if cursor else "")
            with urllib.request.urlopen(url, timeout=60) as resp:
                page = json.load(resp)
            n += len(page["files"])
            cursor = page.get("cursor", "")
            if not cursor:
                return n

    def kill9(self) -> None:
        """``kill -9`` the supervisor and every worker (each by its pid)."""
        from bench.macro.procstat import descendants

        for pid in descendants(self.pids()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for p in self.procs:
            p.wait()
        self._reap()

    def restart(self) -> float:
        """Start again on the same port and data; returns the seconds until it listened."""
        t0 = time.perf_counter()
        self.start(self.port)
        return time.perf_counter() - t0


class Mosquitto(Service):
    target: Target = "mosquitto"
    label = "mosquitto"

    def __init__(self, workdir: Path, *, window: int = 64) -> None:
        super().__init__(workdir)
        self.window = window

    def start(self) -> Mosquitto:
        binary = find_mosquitto()
        self.port = free_port()
        conf = write_config(self.workdir, self.port, inflight=min(self.window, 65535))
        proc = self._spawn("mosquitto", [binary, "-c", str(conf)])
        self._drain(proc)
        _wait_port(self.port, proc)
        return self


class Naive(Mosquitto):
    """Mosquitto plus the naive subscriber: both are the server side of that design."""

    target: Target = "naive"
    label = "naive"

    def start(self) -> Naive:
        super().start()
        self.store = self.workdir / "naive"
        argv = [sys.executable, "-m", "bench.baselines.naive_subscriber",
                "--port", str(self.port), "--dir", str(self.store)]  # fmt: skip
        proc = self._spawn("subscriber", argv)
        _wait_line(proc, "naive: subscribed")
        self._drain(proc)
        return self

    @property
    def verify_dir(self) -> str:
        return str(self.store)

    def reset(self) -> None:
        shutil.rmtree(self.store / "exports", ignore_errors=True)
        shutil.rmtree(self.store / "segments", ignore_errors=True)

    def exported_files(self) -> int:
        return _count_files(self.store / "exports")


class _Listening(Service):
    module = ""
    args: tuple[str, ...] = ()

    def start(self, port: int = 0) -> _Listening:
        argv = [sys.executable, "-m", self.module, "--port", str(port), *self.args]
        proc = self._spawn(self.label, argv)
        line = _wait_line(proc, f"{self.label}: listening on ")
        self.port = int(line.rsplit(":", 1)[1])
        self._drain(proc)
        return self


class Discard(_Listening):
    target: Target = "raw"
    label = "discard"
    module = "bench.baselines.discard"


class HttpUpload(_Listening):
    target: Target = "http"
    label = "http"
    module = "bench.baselines.http_upload"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.store = workdir / "http"
        self.args = ("--dir", str(self.store))

    @property
    def verify_dir(self) -> str:
        return str(self.store)

    def reset(self) -> None:
        shutil.rmtree(self.store / "files", ignore_errors=True)
        shutil.rmtree(self.store / "partial", ignore_errors=True)

    def exported_files(self) -> int:
        return _count_files(self.store / "files")

    def kill9(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        self._reap()

    def restart(self) -> float:
        t0 = time.perf_counter()
        self.start(self.port)
        return time.perf_counter() - t0

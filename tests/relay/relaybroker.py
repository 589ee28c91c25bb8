"""A real Mosquitto for the relay tests: the upstream broker, started and stopped by the test.

The configuration comes from :mod:`bench.baselines.mosquitto` (loopback only, a free port);
the broker can be stopped (SIGTERM), killed (SIGKILL) and started again on the same port, as
the failure tests need. :meth:`Broker.legs` counts the TCP connections the broker has open,
from ``/proc/net/tcp``: the relay's upstream legs (and the test's direct clients).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from bench.baselines.mosquitto import add_user, find_mosquitto, write_config

START_TIMEOUT = 20.0
#: /proc/net/tcp states of a connection the broker still holds: ESTABLISHED, CLOSE_WAIT
_HELD = {"01", "08"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """One Mosquitto process on 127.0.0.1:``port`` (the same port across restarts)."""

    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str] | None = None,
        persistent: bool = False,
        sys_interval: int = 0,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        password_file = None
        if users:
            password_file = workdir / "passwords"
            workdir.mkdir(parents=True, exist_ok=True)
            for user, password in users.items():
                add_user(password_file, user, password)
        self.conf = write_config(
            workdir,
            self.port,
            password_file=password_file,
            sys_interval=sys_interval,
            persistence_dir=workdir / "db" if persistent else None,
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [find_mosquitto(), "-c", str(self.conf)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto does not listen on {self.port}: {self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the broker (SIGTERM: it saves its sessions if persistent; SIGKILL: it dies)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def legs(self) -> int:
        """TCP connections the broker holds now (its side of each: local port = its port)."""
        n = 0
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state = fields[1], fields[3]
                if int(local.rsplit(":", 1)[1], 16) == self.port and state in _HELD:
                    n += 1
        return n

    def wait_legs(self, expected: int, timeout: float = 30.0) -> int:
        """Poll :meth:`legs` until it equals ``expected`` (a liveness bound, not a timing
        figure); returns the last count."""
        deadline = time.monotonic() + timeout
        n = self.legs()
        while n != expected and time.monotonic() < deadline:
            time.sleep(0.05)
            n = self.legs()
        return n

"""A real Mosquitto for the notification tests, on a free 127.0.0.1 port, that a test can stop
and start again on the same port (the bench's own way of finding and configuring it)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from bench.baselines.mosquitto import find_mosquitto, write_config
from bench.macro.services import free_port


class Broker:
    """Mosquitto with persistence on (a persistent subscriber keeps its subscription and
    its queued QoS 1 messages across a restart of the broker), stoppable and restartable on
    the same port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.conf = write_config(workdir, self.port, persistence_dir=workdir / "db")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "mosquitto.log"

    def add_tls_listener(self, cafile: Path, certfile: Path, keyfile: Path) -> int:
        """A second listener, TLS only, that requires a client certificate from ``cafile``'s
        CA (call before :meth:`start`); returns its port."""
        port = free_port()
        with self.conf.open("a") as f:
            f.write(
                f"listener {port} 127.0.0.1\ncafile {cafile}\ncertfile {certfile}\n"
                f"keyfile {keyfile}\nrequire_certificate true\n"
            )
        return port

    def start(self) -> Broker:
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [find_mosquitto(), "-c", str(self.conf)], stdout=err, stderr=err
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not listen in time")

    def freeze(self) -> None:
        """SIGSTOP: a broker that hangs. Its TCP connections stay open and the kernel still
        accepts what clients send, but nothing is answered (no CONNACK, PUBACK, PINGRESP)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: the broker reads what waited in its sockets and answers again."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM (Mosquitto saves its sessions) and wait; a frozen broker is thawed so that
        it sees the SIGTERM."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.send_signal(signal.SIGCONT)
            self.proc.wait(20)
        self.proc = None

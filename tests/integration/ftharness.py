"""Test harness: a real ftserver process and a real paho-mqtt client.

``ServerProcess`` runs ``python -m ftserver serve`` on 127.0.0.1 with port 0 and reads the
bound ports from its stdout; ``FtClient`` wraps a paho client (v3.1.1 or v5) and records every
PUBACK/PUBREC reason code by message id and every response document it receives.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

START_TIMEOUT = 20.0
WAIT = 20.0


class ServerProcess:
    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.data_dir = data_dir
        self.extra = list(extra)
        self.proc: subprocess.Popen[str] | None = None
        self.mqtt_port = 0
        self.mqtts_port = 0
        self.http_port = 0
        self.stderr_path = data_dir.parent / f"{data_dir.name}-stderr.log"
        self.env = dict(os.environ)
        #: how ftserver is started (the installed console script is another choice)
        self.argv0 = [sys.executable, "-m", "ftserver"]
        #: the server's current directory (None: the test's)
        self.cwd: Path | None = None

    def start(self, mqtt_port: int = 0) -> ServerProcess:
        cmd = [
            *self.argv0, "serve",
            "--mqtt", f"127.0.0.1:{mqtt_port}",
            "--http", "127.0.0.1:0",
            "--data", str(self.data_dir),
            *self.extra,
        ]  # fmt: skip
        self.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        self._stderr = open(self.stderr_path, "a")  # noqa: SIM115 - kept for the process life
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=self.env, cwd=self.cwd
        )
        deadline = time.monotonic() + START_TIMEOUT
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"ftserver exited at start: {self.stderr()}")
            if line.startswith("ftserver: mqtt listening on "):
                self.mqtt_port = int(line.rsplit(":", 1)[1])
            elif line.startswith("ftserver: mqtts listening on "):
                self.mqtts_port = int(line.rsplit(":", 1)[1])
            elif line.startswith("ftserver: http listening on "):
                self.http_port = int(line.rsplit(":", 1)[1])
            elif line.startswith("ftserver: data directory"):
                return self
        raise RuntimeError("ftserver did not report its listeners in time")

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text()
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()
        return rc

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)

    @property
    def exports(self) -> Path:
        return self.data_dir / "exports"


class FtClient:
    """A paho-mqtt client speaking the file-transfer protocol, synchronously."""

    def __init__(
        self,
        port: int,
        client_id: str,
        *,
        v5: bool = True,
        clean: bool = True,
        session_expiry: int | None = None,
        subscribe: bool = True,
        username: str | None = None,
        password: str | None = None,
        tls: dict[str, Any] | None = None,
    ) -> None:
        self.client_id = client_id
        self.v5 = v5
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else clean,
        )
        self.acks: dict[int, int] = {}
        self.docs: queue.Queue[dict[str, Any]] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._cond = threading.Condition()
        self.connack: Any = None
        self.disconnect_reason: Any = None
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set(**tls)
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)
            if session_expiry is not None:
                props.SessionExpiryInterval = session_expiry
        self.client.connect(
            "127.0.0.1", port, keepalive=30, clean_start=clean if v5 else 3, properties=props
        )
        self.client.loop_start()
        self._wait(lambda: self.connack is not None, "CONNACK")
        if subscribe:
            result, mid = self.client.subscribe(f"$file-response/{client_id}", qos=1)
            assert result == mqtt.MQTT_ERR_SUCCESS
            self._wait(lambda: ("sub", mid) in self.acks, "SUBACK")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            self.connack = (flags, rc, props)
            self._cond.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            self.disconnect_reason = rc
            self._cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        with self._cond:
            self.acks[("sub", mid)] = [int(getattr(r, "value", r)) for r in rcs]  # type: ignore[index]
            self._cond.notify_all()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self._cond:
            self.acks[mid] = int(getattr(rc, "value", rc))
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(msg)
        if msg.topic.startswith("$file-response/") or msg.topic.startswith("resp/"):
            self.docs.put(json.loads(msg.payload))

    def _wait(self, pred: Any, what: str, timeout: float = WAIT) -> None:
        with self._cond:
            if not self._cond.wait_for(pred, timeout):
                raise TimeoutError(f"{self.client_id}: no {what} within {timeout}s")

    def publish(
        self, topic: str, payload: bytes | str = b"", qos: int = 1, props: Any = None
    ) -> int:
        info = self.client.publish(topic, payload, qos=qos, properties=props)
        return info.mid

    def wait_ack(self, mid: int, timeout: float = WAIT) -> int:
        self._wait(lambda: mid in self.acks, f"ack of {mid}", timeout)
        return self.acks[mid]

    def command(
        self, topic: str, payload: bytes | str = b"", qos: int = 1, props: Any = None
    ) -> int:
        """Publish and wait for the PUBACK/PUBREC; returns its reason code."""
        return self.wait_ack(self.publish(topic, payload, qos, props))

    def doc(self, timeout: float = WAIT) -> dict[str, Any]:
        return self.docs.get(timeout=timeout)

    def doc_for(self, topic: str, timeout: float = WAIT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            d = self.docs.get(timeout=max(0.01, deadline - time.monotonic()))
            if d["topic"] == topic:
                return d

    def upload(
        self,
        file_id: str,
        data: bytes,
        name: str = "file.bin",
        segment: int = 1024,
        mode: str = "$file",
        order: Sequence[int] | None = None,
    ) -> int:
        assert (
            self.command(f"{mode}/{file_id}/init", json.dumps({"name": name, "size": len(data)}))
            == 0
        )
        offsets = list(range(0, len(data), segment)) if order is None else list(order)
        mids = [self.publish(f"{mode}/{file_id}/{o}", data[o : o + segment]) for o in offsets]
        for mid in mids:
            assert self.wait_ack(mid) == 0
        return self.command(f"{mode}/{file_id}/fin/{len(data)}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def find_export(exports: Path, client_id: str, file_id: str, name: str) -> Path:
    from ftserver.export.layout import export_relpath

    return exports / export_relpath(client_id, file_id, name)


def read_manifest(path: Path) -> dict[str, Any]:
    doc = json.loads(path.with_name(path.name + ".MANIFEST.json").read_bytes())
    assert doc[0] == "filemeta" and doc[1] == 1
    result: dict[str, Any] = doc[2]
    return result


def scrape(http_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (name, sorted labels), parsed with
    prometheus-client's own parser."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all((k, val) in ls for k, val in labels.items())
    )


def worker_pids(supervisor_pid: int) -> list[int]:
    """The worker processes of a supervisor (its children), from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == supervisor_pid:
            pids.append(int(entry.name))
    return sorted(pids)

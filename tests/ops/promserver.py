"""A real Prometheus (the Debian package's binary) for the tests, on 127.0.0.1 only.

It scrapes the given targets every second, evaluates its rules every second, keeps its TSDB
in the test's directory, and is asked questions through its HTTP API. Nothing else is enabled:
no remote write, no lifecycle or admin API, no listener but the one on 127.0.0.1.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from promtools import binary
from seaweed import free_port

START_TIMEOUT = 60.0


class Prometheus:
    def __init__(self, root: Path, targets: list[str], rule_files: list[Path]) -> None:
        self.root = root
        self.targets = targets
        self.rule_files = rule_files
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "prometheus.log"

    def start(self) -> Prometheus:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": "1s",
                        "scrape_timeout": "1s",
                        "evaluation_interval": "1s",
                    },
                    "rule_files": [str(p) for p in self.rule_files],
                    "scrape_configs": [
                        {"job_name": "ftserver", "static_configs": [{"targets": self.targets}]}
                    ],
                }
            )
        )
        for _ in range(3):  # a free port may be taken before the binary binds it
            self.port = free_port()
            log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
            try:
                self.proc = subprocess.Popen(
                    [
                        binary("prometheus"),
                        f"--config.file={config}",
                        f"--storage.tsdb.path={self.root / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--web.external-url=http://127.0.0.1/",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            finally:
                log.close()
            if self._wait_ready():
                return self
        raise RuntimeError(f"prometheus did not start:\n{self.log_tail()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prometheus not ready in {START_TIMEOUT}s:\n{self.log_tail()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # -- the HTTP API ------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/``path``; the ``data`` of a successful answer (else AssertionError with
        Prometheus's error, e.g. a PromQL parse error)."""
        query = urllib.parse.urlencode(params)
        req = f"{self.url}/api/v1/{path}?{query}"
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            doc = json.loads(exc.read())
        assert doc["status"] == "success", f"{path} {params}: {doc}"
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query (now): its vector."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, None when it has no result."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, f"{expr}: {result}"
        return float(result[0]["value"][1])

    def by(self, expr: str, label: str) -> dict[str, float]:
        """An instant query's values keyed by one label."""
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Any]:
        data = self.api("query_range", query=expr, start=str(start), end=str(end), step=str(step))
        result: list[Any] = data["result"]
        return result

    def settle(self, expr: str, expected: float, timeout: float = 30.0) -> None:
        """Wait until ``expr`` has exactly ``expected`` (scrapes and flushes lag by seconds)."""
        deadline = time.monotonic() + timeout
        got = self.value(expr)
        while got != expected and time.monotonic() < deadline:
            time.sleep(0.3)
            got = self.value(expr)
        assert got == expected, f"{expr}: {got}, expected {expected}"

    def alerts(self, state: str = "firing") -> dict[str, list[dict[str, str]]]:
        """Alerts in ``state``: alertname -> the label sets."""
        out: dict[str, list[dict[str, str]]] = {}
        for alert in self.api("alerts")["alerts"]:
            if alert["state"] == state:
                out.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return out

    def wait_alert(self, name: str, timeout: float = 30.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            firing = self.alerts().get(name)
            if firing:
                return firing[0]
            time.sleep(0.3)
        raise AssertionError(f"alert {name} not firing; alerts: {self.api('alerts')}")


def finite(values: list[list[Any]]) -> list[float]:
    """The numeric values of a range-query series, NaN and infinities left out."""
    out = [float(v) for _, v in values]
    return [v for v in out if math.isfinite(v)]

"""The relay bench's telemetry load generator (bench/loadgen/telemetry.py) against real servers:
it must report success only when the broker's subscriber got every message acknowledged with
0x00, and name a server that acknowledges without delivering (no timings here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from relaybroker import Broker

from ftharness import ServerProcess


def telemetry(port: int, sub_port: int, prefix: str) -> dict[str, object]:
    argv = [
        sys.executable, "-m", "bench.loadgen.telemetry",
        "--port", str(port), "--sub-port", str(sub_port),
        "--devices", "3", "--duration", "0.3", "--window", "8", "--prefix", prefix,
    ]  # fmt: skip
    proc = subprocess.run(
        argv,
        input="GO\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "READY"
    result: dict[str, object] = json.loads(lines[1])
    return result


def test_every_acknowledged_message_is_delivered(broker: Broker) -> None:
    result = telemetry(broker.port, broker.port, "bench/smoke-direct")
    assert result["ok"] is True
    acked = result["acked_ok"]
    assert isinstance(acked, int) and acked > 0
    assert result["delivered"] == acked
    assert result["other_codes"] == {}


def test_acknowledged_but_not_delivered_is_a_failure(
    broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A standalone ftserver acknowledges telemetry with 0x10 and keeps it: not ok (what the
    relay scenario reports as "relay mode not available")."""
    srv = ServerProcess(tmp_path_factory.mktemp("standalone") / "data").start()
    try:
        result = telemetry(srv.mqtt_port, broker.port, "bench/smoke-standalone")
    finally:
        assert srv.stop() == 0, srv.stderr()
    assert result["ok"] is False
    assert result["acked_ok"] == 0 and result["delivered"] == 0
    codes = result["other_codes"]
    assert isinstance(codes, dict) and set(codes) == {"0x10"}

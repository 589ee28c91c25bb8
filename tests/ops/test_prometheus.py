"""A real Prometheus in front of a real multi-worker ftserver exporting to a real S3
(SeaweedFS), all on 127.0.0.1 (issue 16).

Prometheus scrapes /metrics every second and evaluates deploy/prometheus/alerts.yml (a copy
whose `for:` durations are 0s, everything else as shipped) every second. Devices (paho, MQTT 5
and 3.1.1) upload, abort, fail a checksum, reconnect and get a session taken over; a worker is
killed with SIGKILL and restarted by the supervisor. The test then asks Prometheus what an
operator would and checks each answer against what it did: raw counter values are exact (rates
and `increase` are extrapolated, so only their sign is checked), no counter goes backwards
across the worker's death, the number of series does not grow with 1 000 more devices, the
export-failure alert fires once S3 is stopped (and not before), and every PromQL query of the
Grafana dashboard runs and returns data where the scenario produced some.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from promserver import Prometheus, finite
from promtools import DASHBOARD, RULES
from s3helpers import AWS_ENV, s3_args
from seaweed import SeaweedFS

from ftharness import FtClient, ServerProcess, worker_pids
from ftserver.mqtt.packets import Connack, Puback
from rawclient import RawClient

pytestmark = pytest.mark.timeout(240)

SEGMENT = 4096
#: devices of the cardinality check, and of its warm-up
FLEET = 1000
WARMUP = 40
#: the largest file the server takes (one init goes over it: file_too_large)
MAX_FILE = 1 << 20
#: what the dashboard's Grafana variables become in the queries run here
RATE_INTERVAL = "5s"
#: dashboard queries that come back empty in this scenario (no series, or only NaN), and why;
#: every other query must return numbers (counters that exist from the start give zeros)
EMPTY_WHY = {
    "ftserver_open_transfers_closed_total": "the open-transfer cache never fills",
    "ftserver_relay_": "relay mode is not used here (a standalone server)",
}


@dataclass
class Tally:
    """What the test did, counted as the server should count it."""

    received: int = 0
    fins: int = 0
    completed: int = 0
    exported_bytes: int = 0
    started: int = 0
    aborted: int = 0
    #: transfers left in staging: never finished, or their fin failed
    unfinished: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    connects: dict[str, int] = field(default_factory=lambda: {"5": 0, "3.1.1": 0})
    fin_seconds: list[float] = field(default_factory=list)


@pytest.fixture
def seaweed(tmp_path: Path) -> Iterator[SeaweedFS]:
    """A SeaweedFS of this test's own: the test stops it."""
    server = SeaweedFS(tmp_path / "seaweedfs").start()
    yield server
    server.stop(kill=True)


@pytest.fixture
def server(tmp_path: Path, seaweed: SeaweedFS) -> Iterator[ServerProcess]:
    seaweed.client().create_bucket(Bucket="ops")
    args = s3_args(
        seaweed,
        "ops",
        **{
            "server.workers": 2,
            "export.retries": 0,
            "export.request_timeout": "5s",
            "limits.max_file_size": MAX_FILE,
        },
    )
    srv = ServerProcess(tmp_path / "data", *args)
    srv.env.update(AWS_ENV)
    srv.start()
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        assert srv.stop() == 0, srv.stderr()
    assert "Traceback" not in srv.stderr(), srv.stderr()


@pytest.fixture
def prom(tmp_path: Path, server: ServerProcess) -> Iterator[Prometheus]:
    """Prometheus scraping the server, with the shipped rules minus their `for:` waits."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
    copy = tmp_path / "alerts.yml"
    copy.write_text(yaml.safe_dump(rules))
    p = Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{server.http_port}"], [copy]).start()
    yield p
    p.stop()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def connect(port: int, cid: str, v5: bool, tally: Tally) -> FtClient:
    c = FtClient(port, cid, v5=v5)
    tally.connects["5" if v5 else "3.1.1"] += 1
    return c


def upload(c: FtClient, fid: str, data: bytes, tally: Tally, *, fin_sha: str | None = None) -> int:
    """init, every segment, fin (with a whole-file checksum when given); counted."""
    meta = json.dumps({"name": f"{fid}.bin", "size": len(data)})
    assert c.command(f"$file/{fid}/init", meta) == 0
    tally.started += 1
    mids = [
        c.publish(f"$file/{fid}/{o}", data[o : o + SEGMENT]) for o in range(0, len(data), SEGMENT)
    ]
    assert all(c.wait_ack(m) == 0 for m in mids)
    tally.received += len(data)
    return fin(c, fid, data, tally, sha=fin_sha)


def fin(c: FtClient, fid: str, data: bytes, tally: Tally, *, sha: str | None = None) -> int:
    topic = f"$file/{fid}/fin/{len(data)}" + (f"/{sha}" if sha else "")
    began = time.monotonic()
    rc = c.command(topic)
    tally.fin_seconds.append(time.monotonic() - began)
    tally.fins += 1
    if rc == 0:
        tally.completed += 1
        tally.exported_bytes += len(data)
    return rc


def traffic(srv: ServerProcess, tally: Tally, tag: str, devices: int) -> list[FtClient]:
    """Devices of both protocol versions upload two files each; one each of: an abort, a
    segment and a fin with a wrong checksum, a reconnect halfway, a takeover, a QoS 0
    command, a file too large, a broken connection. Returns clients left open, each with an
    unfinished transfer."""
    port = srv.mqtt_port
    for i in range(devices):
        c = connect(port, f"{tag}-dev{i}", i % 2 == 0, tally)
        for k in range(2):
            data = os.urandom(SEGMENT * (3 + i % 4) + 100 * k)
            assert upload(c, f"f{k}", data, tally) == 0
        c.close()

    c = connect(port, f"{tag}-odd", True, tally)
    # abort after two segments
    assert c.command("$file/ab/init", json.dumps({"name": "ab.bin", "size": 3 * SEGMENT})) == 0
    tally.started += 1
    for o in (0, SEGMENT):
        assert c.command(f"$file/ab/{o}", b"a" * SEGMENT) == 0
    tally.received += 2 * SEGMENT
    assert c.command("$file/ab/abort") == 0
    tally.aborted += 1
    # a segment whose checksum does not match, then the right one; then a fin whose whole-file
    # checksum does not match
    data = os.urandom(2 * SEGMENT)
    assert c.command("$file/ck/init", json.dumps({"name": "ck.bin", "size": len(data)})) == 0
    tally.started += 1
    assert c.command(f"$file/ck/0/{digest(b'other')}", data[:SEGMENT]) == 0x80
    assert c.command(f"$file/ck/0/{digest(data[:SEGMENT])}", data[:SEGMENT]) == 0
    assert c.command(f"$file/ck/{SEGMENT}", data[SEGMENT:]) == 0
    tally.received += len(data)
    assert fin(c, "ck", data, tally, sha=digest(b"not the file")) == 0x80
    tally.failed["checksum_mismatch"] = tally.failed.get("checksum_mismatch", 0) + 1
    tally.unfinished += 1  # a failed fin keeps the transfer: the device may send it again
    # a file over the limit: refused at init (file_too_large), nothing started
    too_big = json.dumps({"name": "big.bin", "size": MAX_FILE + 1})
    assert c.command("$file/big/init", too_big) == 0x83
    # a command at QoS 0: answered invalid_qos, not run
    c.publish("$file/q0/init", json.dumps({"name": "q.bin", "size": 1}), qos=0)
    assert c.doc_for("$file/q0/init")["reason_description"] == "invalid_qos"
    # half a file, the connection gone, the rest over a new connection (MQTT 3.1.1)
    data = os.urandom(4 * SEGMENT)
    assert c.command("$file/rc/init", json.dumps({"name": "rc.bin", "size": len(data)})) == 0
    tally.started += 1
    for o in (0, SEGMENT):
        assert c.command(f"$file/rc/{o}", data[o : o + SEGMENT]) == 0
    c.close()
    c = connect(port, f"{tag}-odd", False, tally)
    for o in (2 * SEGMENT, 3 * SEGMENT):
        assert c.command(f"$file/rc/{o}", data[o : o + SEGMENT]) == 0
    tally.received += len(data)
    assert fin(c, "rc", data, tally) == 0
    # another connection with the same client id takes the session over
    taker = connect(port, f"{tag}-odd", True, tally)
    c.close()
    taker.close()
    # a connection that breaks the protocol (its first packet is no CONNECT)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\xc0\x00")  # PINGREQ
        s.settimeout(10)
        assert s.recv(16) == b""
    # transfers left unfinished, their devices still connected
    left = []
    for i in range(2):
        c = connect(port, f"{tag}-open{i}", i == 0, tally)
        assert c.command("$file/open/init", json.dumps({"name": "o.bin", "size": 2 * SEGMENT})) == 0
        assert c.command("$file/open/0", b"o" * SEGMENT) == 0
        tally.started += 1
        tally.received += SEGMENT
        tally.unfinished += 1
        left.append(c)
    return left


def expect_counts(prom: Prometheus, tally: Tally) -> None:
    """Every count Prometheus holds equals the test's (the latest raw samples: exact)."""
    prom.settle("sum(ftserver_received_bytes_total)", tally.received)
    prom.settle("sum(ftserver_transfers_completed_total)", tally.completed)
    prom.settle("sum(ftserver_exported_bytes_total)", tally.exported_bytes)
    prom.settle("sum(ftserver_transfers_started_total)", tally.started)
    prom.settle("sum(ftserver_transfers_aborted_total)", tally.aborted)
    prom.settle("sum(ftserver_fin_seconds_count)", tally.fins)
    prom.settle("sum(ftserver_transfers_in_progress)", tally.unfinished)
    for version, n in tally.connects.items():
        prom.settle(f'sum(ftserver_connections_total{{protocol="{version}"}})', n)
    assert prom.by("sum by (reason) (ftserver_transfers_failed_total)", "reason") == tally.failed


def raw_device(port: int, i: int) -> RawClient:
    """One device of the fleet: connects (MQTT 5 or 3.1.1), uploads a small file, stays."""
    c = RawClient(port, level=5 if i % 2 else 4, timeout=30)
    ack = c.connect(f"fleet-{i:05d}", keep_alive=120)
    assert isinstance(ack, Connack) and ack.reason_code == 0, ack
    data = f"reading {i}".encode()
    steps = [
        ("$file/fleet-file-{i}/init", json.dumps({"name": f"r{i}.txt", "size": len(data)})),
        ("$file/fleet-file-{i}/0", data),
        (f"$file/fleet-file-{{i}}/fin/{len(data)}", b""),
    ]
    for topic, payload in steps:
        pid = c.publish(
            topic.format(i=i), payload if isinstance(payload, bytes) else payload.encode()
        )
        ack = c.recv(30)
        assert isinstance(ack, Puback) and ack.packet_id == pid and ack.reason_code == 0, ack
    return c


def series(prom: Prometheus) -> set[tuple[tuple[str, str], ...]]:
    data = prom.api("series", **{"match[]": '{job="ftserver", __name__=~"ftserver_.+"}'})
    return {tuple(sorted(s.items())) for s in data}


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    return exprs


def test_prometheus_scrapes_alerts_and_dashboard(
    server: ServerProcess, prom: Prometheus, seaweed: SeaweedFS
) -> None:
    t0 = time.time()
    srv = server
    assert srv.proc is not None
    tally = Tally()
    prom.settle('up{job="ftserver"}', 1)
    prom.settle("sum(ftserver_workers_up)", 2)

    # -- traffic, then the same again after a worker was killed --------------------------------
    left = traffic(srv, tally, "a", devices=6)
    expect_counts(prom, tally)
    rates = {
        "received": "sum(rate(ftserver_received_bytes_total[5s]))",
        "exported": "sum(rate(ftserver_transfers_completed_total[5s]))",
    }
    during = {k: prom.query_range(e, t0, time.time(), 1) for k, e in rates.items()}
    for name, result in during.items():
        assert result and max(finite(result[0]["values"])) > 0, name
    assert prom.by("sum by (reason) (ftserver_transfers_failed_total)", "reason") == {
        "checksum_mismatch": 1
    }
    assert prom.value('sum(ftserver_segments_total{outcome="checksum_mismatch"})') == 1
    assert prom.value('sum(ftserver_limit_hits_total{limit="file_too_large"})') == 1
    assert prom.value("sum(ftserver_invalid_qos_total)") == 1
    assert prom.value("sum(ftserver_takeovers_total)") == 1
    assert prom.value("sum(ftserver_protocol_errors_total)") == 1
    # two devices stay connected with their transfers: the gauge says so
    prom.settle("sum(ftserver_connections_open)", 2)
    # a device-side failure is no export failure
    assert "FtserverExportsFailing" not in prom.alerts()
    assert "FtserverExportsFailing" not in prom.alerts("pending")

    # (paho would reconnect a device of the killed worker: one CONNECT the test did not count)
    for c in left:
        c.close()
    prom.settle("sum(ftserver_connections_open)", 0)
    victim = worker_pids(srv.proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    prom.settle("sum(ftserver_worker_restarts_total)", 1)
    prom.settle("sum(ftserver_workers_up)", 2)
    assert victim not in worker_pids(srv.proc.pid)
    assert prom.wait_alert("FtserverWorkersRestarting")["severity"] == "warning"
    left = traffic(srv, tally, "b", devices=4)
    expect_counts(prom, tally)

    # counters never went backwards, the killed worker's counts included
    names = [
        n
        for n in prom.api("label/__name__/values")
        if re.fullmatch(r"ftserver_.+(_total|_count|_sum|_bucket)", n)
    ]
    assert "ftserver_received_bytes_total" in names and len(names) > 20
    for name in names:
        assert prom.query(f'resets({name}{{job="ftserver"}}[10m]) > 0') == [], name
    received = prom.query_range("sum(ftserver_received_bytes_total)", t0, time.time(), 1)
    values = finite(received[0]["values"])
    # (the last step may fall just before the last scrape: the instant value was checked above)
    assert values == sorted(values) and 0 < values[-1] <= tally.received
    # CPU of a restarted worker keeps rising; both workers report memory and descriptors
    assert prom.query("resets(ftserver_process_cpu_seconds_total[10m]) > 0") == []
    assert set(prom.by("ftserver_process_resident_memory_bytes", "worker")) == {"0", "1"}
    assert all(v > 0 for v in prom.by("ftserver_process_open_fds", "worker").values())

    # -- what an operator asks ----------------------------------------------------------------
    # fin latency: quantiles from the histogram; the server's time is within what the
    # devices waited for, so every fin is in the bucket that holds the slowest one they saw
    p50 = prom.value(
        "histogram_quantile(0.5, sum by (le) (increase(ftserver_fin_seconds_bucket[10m])))"
    )
    p99 = prom.value(
        "histogram_quantile(0.99, sum by (le) (increase(ftserver_fin_seconds_bucket[10m])))"
    )
    assert p50 is not None and p99 is not None and 0 < p50 <= p99
    buckets = sorted(
        float(le)
        for le in prom.by("sum by (le) (ftserver_fin_seconds_bucket)", "le")
        if le != "+Inf"
    )
    slowest = max(tally.fin_seconds)
    bound = next((b for b in buckets if b >= slowest), None)
    if bound is not None:
        assert prom.value(f'sum(ftserver_fin_seconds_bucket{{le="{bound}"}})') == tally.fins
    # traffic has stopped: the rates come down to exactly zero
    time.sleep(6)
    for name, expr in rates.items():
        assert prom.value(expr) == 0, name

    # -- cardinality: 1 000 more devices, not one more series ---------------------------------
    for c in left:
        c.close()
    with ThreadPoolExecutor(32) as pool:
        warm = list(pool.map(lambda i: raw_device(srv.mqtt_port, i), range(WARMUP)))
    for c in warm:
        c.close()
    done = tally.completed + WARMUP
    prom.settle("sum(ftserver_transfers_completed_total)", done)
    before = series(prom)
    with ThreadPoolExecutor(32) as pool:
        fleet = list(
            pool.map(lambda i: raw_device(srv.mqtt_port, i), range(WARMUP, WARMUP + FLEET))
        )
    prom.settle("sum(ftserver_connections_open)", FLEET, timeout=60)
    prom.settle("sum(ftserver_transfers_completed_total)", done + FLEET, timeout=60)
    after = series(prom)
    for c in fleet:
        c.close()
    assert after == before, (after - before, before - after)
    values_seen = {v for s in after for _, v in s}
    assert not [v for v in values_seen if "fleet" in v or re.search(r"-dev\d|-odd|-open", v)]

    # -- S3 stops: exports fail, the alert fires ----------------------------------------------
    seaweed.stop(kill=True)
    c = connect(srv.mqtt_port, "after-s3", True, tally)
    s3_failed = 'sum(ftserver_transfers_failed_total{reason="s3_unavailable"})'
    # the reason's series appears with its first count (no rate yet); failures go on: a rate
    for k in range(4):
        assert upload(c, f"down{k}", os.urandom(SEGMENT), tally) == 0x97  # s3_unavailable: a pause
        tally.unfinished += 1
        if k == 1:
            prom.settle(s3_failed, 2)
            time.sleep(2)
    c.close()
    prom.settle(s3_failed, 4)
    s3_reasons = 'sum by (reason) (ftserver_transfers_failed_total{reason=~"s3_.+"})'
    assert prom.by(s3_reasons, "reason") == {"s3_unavailable": 4}
    alert = prom.wait_alert("FtserverExportsFailing")
    assert alert["severity"] == "critical" and alert["job"] == "ftserver"
    prom.wait_alert("FtserverS3Unreachable")
    assert "FtserverS3Refusing" not in prom.alerts()
    assert "FtserverDown" not in prom.alerts()

    # -- every dashboard query, against what happened -----------------------------------------
    span = int(time.time() - t0) + 5
    end = time.time()
    for expr in dashboard_exprs():
        q = (
            expr.replace("$__rate_interval", RATE_INTERVAL)
            .replace("$__range", f"{span}s")
            .replace("$job", "ftserver")
            .replace("$instance", ".*")
        )
        assert "$" not in q, q
        result = prom.query_range(q, t0, end, 2)
        has_data = any(finite(s["values"]) for s in result)
        why_empty = next((why for key, why in EMPTY_WHY.items() if key in expr), None)
        if why_empty is None:
            assert has_data, f"dashboard query came back empty: {q}"
        else:
            assert not has_data, f"expected empty ({why_empty}), has data: {q}"

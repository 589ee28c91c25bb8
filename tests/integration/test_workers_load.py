"""Issue 4's acceptance run: with --workers 2, eight concurrent uploads of 256 MiB each
(FTSERVER_TEST_LOAD_MIB to change the size) complete byte-identical, both workers carry load,
and a scrape shows the transfer counts and byte totals the uploads imply."""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ftharness import ServerProcess, find_export, metric, scrape

MiB = 1 << 20
SIZE = int(os.environ.get("FTSERVER_TEST_LOAD_MIB", "256")) * MiB
SEGMENT = 64 * 1024
UPLOADERS = 8
WINDOW = 32


def upload(port: int, client_id: str, seed: int, result: dict[str, Any]) -> None:
    """Send SIZE pseudo-random bytes (never all in memory), keeping WINDOW segments in
    flight; record the SHA-256 of what was sent and the fin's reason code."""
    acks: dict[int, int] = {}
    cond = threading.Condition()

    def on_publish(c: Any, u: Any, mid: int, rc: Any, p: Any) -> None:
        with cond:
            acks[mid] = int(rc.value)
            cond.notify_all()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(WINDOW)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port, 60)
    client.loop_start()
    rng = random.Random(seed)
    sha = hashlib.sha256()
    pending: list[int] = [
        client.publish("$file/big/init", json.dumps({"name": "big.bin", "size": SIZE}), 1).mid
    ]
    for off in range(0, SIZE, SEGMENT):
        chunk = rng.randbytes(SEGMENT)
        sha.update(chunk)
        pending.append(client.publish(f"$file/big/{off}", chunk, qos=1).mid)
        if len(pending) >= 2 * WINDOW:
            oldest = pending[0]
            with cond:
                cond.wait_for(lambda: oldest in acks, 60)  # noqa: B023 - bound above
            pending = [m for m in pending if m not in acks]
    with cond:
        cond.wait_for(lambda: all(m in acks for m in pending), 60)
    fin = client.publish(f"$file/big/fin/{SIZE}/{sha.hexdigest()}", b"", qos=1).mid
    with cond:
        cond.wait_for(lambda: fin in acks, 120)
    client.disconnect()
    client.loop_stop()
    result["sha"] = sha.hexdigest()
    result["fin"] = acks.get(fin)
    result["errors"] = sorted({rc for rc in acks.values() if rc})


def test_eight_concurrent_uploads_over_two_workers(
    make_server: Callable[..., ServerProcess],
) -> None:
    srv = make_server("--workers", "2")
    results: list[dict[str, Any]] = [{} for _ in range(UPLOADERS)]
    threads = [
        threading.Thread(target=upload, args=(srv.mqtt_port, f"load-{k}", k, results[k]))
        for k in range(UPLOADERS)
    ]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    elapsed = time.monotonic() - t0
    for k, r in enumerate(results):
        assert r.get("fin") == 0 and r["errors"] == [], (k, r)
        path = find_export(srv.exports, f"load-{k}", "big", "big.bin")
        assert path.stat().st_size == SIZE
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(MiB):
                h.update(chunk)
        assert h.hexdigest() == r["sha"]
    time.sleep(1.5)  # counters reach the exposition within a second
    s = scrape(srv.http_port)
    per_worker = {w: metric(s, "ftserver_received_bytes_total", worker=w) for w in ("0", "1")}
    assert per_worker["0"] > 0 and per_worker["1"] > 0, per_worker  # both carried load
    assert sum(per_worker.values()) == UPLOADERS * SIZE
    assert metric(s, "ftserver_transfers_completed_total") == UPLOADERS
    assert metric(s, "ftserver_transfers_started_total") == UPLOADERS
    assert metric(s, "ftserver_exported_bytes_total") == UPLOADERS * SIZE
    assert metric(s, "ftserver_segments_total", outcome="success") == UPLOADERS * SIZE // SEGMENT
    assert metric(s, "ftserver_fin_seconds_count") == UPLOADERS
    print(
        f"\n{UPLOADERS} x {SIZE // MiB} MiB over 2 workers in {elapsed:.1f} s "
        f"({UPLOADERS * SIZE / elapsed / 1e6:.0f} MB/s), per worker {per_worker}"
    )
    assert srv.stop() == 0

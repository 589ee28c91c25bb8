"""Worker processes (issue 4): connections spread over 2 workers, takeover between workers,
a worker killed mid-transfer, and the metrics that show it."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Callable

from ftharness import FtClient, ServerProcess, find_export, metric, scrape, worker_pids


def wait_for(pred: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


def live_worker(http_port: int) -> dict[str, float]:
    s = scrape(http_port)
    return {w: metric(s, "ftserver_connections_open", worker=w) for w in ("0", "1")}


def test_connections_spread_over_two_workers(make_server: Callable[..., ServerProcess]) -> None:
    srv = make_server("--workers", "2")
    assert srv.proc is not None
    assert len(worker_pids(srv.proc.pid)) == 2
    clients = [FtClient(srv.mqtt_port, f"spread-{k}", subscribe=False) for k in range(24)]
    try:
        wait_for(lambda: sum(live_worker(srv.http_port).values()) == 24)
        per = live_worker(srv.http_port)
        assert per["0"] > 0 and per["1"] > 0, per
        s = scrape(srv.http_port)
        assert metric(s, "ftserver_connections_total", protocol="5") == 24
    finally:
        for c in clients:
            c.close()
    wait_for(lambda: sum(live_worker(srv.http_port).values()) == 0)


def test_takeover_between_workers_keeps_session_and_transfer(
    make_server: Callable[..., ServerProcess],
) -> None:
    srv = make_server("--workers", "2")
    cid = "roamer"
    data = os.urandom(200_000)
    a = FtClient(srv.mqtt_port, cid, clean=False, session_expiry=300)
    assert a.command("$file/t/init", json.dumps({"name": "t.bin"})) == 0
    for off in range(0, 100_000, 10_000):
        assert a.command(f"$file/t/{off}", data[off : off + 10_000]) == 0
    wait_for(lambda: sum(live_worker(srv.http_port).values()) == 1)
    first = max(live_worker(srv.http_port).items(), key=lambda kv: kv[1])[0]
    # reconnect with the same client id until the kernel puts the connection on the other
    # worker; every attempt takes the session over
    previous = a
    for _attempt in range(40):
        b = FtClient(srv.mqtt_port, cid, clean=False, session_expiry=300, subscribe=False)
        previous._wait(lambda p=previous: p.disconnect_reason is not None, "DISCONNECT")
        assert int(previous.disconnect_reason.value) == 0x8E
        previous.client.loop_stop()
        wait_for(lambda: sum(live_worker(srv.http_port).values()) == 1)
        now = max(live_worker(srv.http_port).items(), key=lambda kv: kv[1])[0]
        previous = b
        if now != first:
            break
    else:
        raise AssertionError("40 connections all landed on the same worker")
    assert b.connack[0].session_present
    # the session (its subscription) and the transfer moved with the client
    for off in range(100_000, len(data), 10_000):
        assert b.command(f"$file/t/{off}", data[off : off + 10_000]) == 0
    fin = f"$file/t/fin/{len(data)}"
    assert b.command(fin) == 0
    assert b.doc_for(fin)["reason_code"] == 0  # delivered through the handed-over subscription
    b.close()
    assert find_export(srv.exports, cid, "t", "t.bin").read_bytes() == data
    s = scrape(srv.http_port)
    assert metric(s, "ftserver_takeovers_total") >= 1


def test_worker_killed_mid_transfer_is_restarted_and_transfer_resumes(
    make_server: Callable[..., ServerProcess],
) -> None:
    srv = make_server("--workers", "2")
    assert srv.proc is not None
    cid = "victim"
    data = os.urandom(1_000_000)
    seg = 50_000
    a = FtClient(srv.mqtt_port, cid)
    assert a.command("$file/v/init", json.dumps({"name": "v.bin"})) == 0
    for off in range(0, 500_000, seg):
        assert a.command(f"$file/v/{off}", data[off : off + seg]) == 0
    # kill -9 both workers: whichever had the client, it loses its process
    before = worker_pids(srv.proc.pid)
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    a._wait(lambda: a.disconnect_reason is not None, "connection loss")
    a.client.loop_stop()
    wait_for(lambda: len(set(worker_pids(srv.proc.pid)) - set(before)) == 2)
    wait_for(lambda: metric(scrape(srv.http_port), "ftserver_workers_up") == 2)
    b = FtClient(srv.mqtt_port, cid)
    fin = f"$file/v/fin/{len(data)}"
    assert b.command(fin) == 0x80
    assert b.doc_for(fin)["missing"] == [[500_000, 1_000_000]]  # nothing acknowledged lost
    for off in range(500_000, len(data), seg):
        assert b.command(f"$file/v/{off}", data[off : off + seg]) == 0
    assert b.command(f"$file/v/fin/{len(data)}/{hashlib.sha256(data).hexdigest()}") == 0
    b.close()
    assert find_export(srv.exports, cid, "v", "v.bin").read_bytes() == data
    assert metric(scrape(srv.http_port), "ftserver_worker_restarts_total") == 2
    assert srv.stop() == 0

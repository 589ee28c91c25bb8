"""The native segment path over the wire: plain in-order segments are placed by ftcore, and
nothing a client sees changes (issue 13, item 3).

Checked against a real server with real paho clients: the file is byte-identical, every
acknowledgement is success, the native path did take the segments (its metric), the journal
it wrote lets a killed server resume, and whenever a response document is wanted (the client
subscribed to its response topic) every segment goes the Python way and gets its document.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable

from ftharness import FtClient, ServerProcess, find_export, metric, scrape

SEG = 4096


def body(n: int) -> bytes:
    return b"".join(hashlib.sha256(k.to_bytes(4, "big")).digest() for k in range(n // 32))


def wait_metric(port: int, name: str, want: float, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    while True:
        got = metric(scrape(port), name)
        if got >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_in_order_segments_take_the_native_path(
    make_server: Callable[..., ServerProcess],
) -> None:
    srv = make_server("--workers", "1")
    data = body(200 * SEG)
    for v5 in (True, False):
        c = FtClient(srv.mqtt_port, f"native-{v5}", v5=v5, subscribe=False)
        try:
            assert c.upload("f", data, segment=SEG) == 0
        finally:
            c.close()
        assert find_export(srv.exports, f"native-{v5}", "f", "file.bin").read_bytes() == data
    # all but the first segment of each upload (it opens the transfer's native slot only if
    # the init did not) went the native way, and are counted as segments too
    native = wait_metric(srv.http_port, "ftserver_native_segments_total", 2 * 199)
    assert 2 * 199 <= native <= 2 * 200
    s = scrape(srv.http_port)
    assert metric(s, "ftserver_segments_total", outcome="success") == 2 * 200
    assert metric(s, "ftserver_received_bytes_total") == 2 * len(data)


def test_a_client_that_wants_documents_gets_one_per_segment(
    make_server: Callable[..., ServerProcess],
) -> None:
    srv = make_server("--workers", "1")
    data = body(20 * SEG)
    c = FtClient(srv.mqtt_port, "docs-please", subscribe=True)
    try:
        assert c.upload("f", data, segment=SEG) == 0
        topics = {c.doc()["topic"] for _ in range(22)}  # init, 20 segments, fin
    finally:
        c.close()
    assert {f"$file/f/{o}" for o in range(0, len(data), SEG)} <= topics
    assert metric(scrape(srv.http_port), "ftserver_native_segments_total") == 0


def test_out_of_order_and_odd_segments_mix_with_native_ones(
    make_server: Callable[..., ServerProcess],
) -> None:
    srv = make_server("--workers", "1")
    data = body(64 * SEG)
    offsets = list(range(0, len(data), SEG))
    # a gap first (Python path), then the run before it (native), a duplicate, a checksum
    order = offsets[40:48] + offsets[:40] + offsets[10:12] + offsets[48:]
    c = FtClient(srv.mqtt_port, "mixed", subscribe=False)
    try:
        assert c.command("$file/m/init", json.dumps({"name": "m.bin"})) == 0
        mids = [c.publish(f"$file/m/{o}", data[o : o + SEG]) for o in order]
        sha = hashlib.sha256(data[:SEG]).hexdigest()
        mids.append(c.publish(f"$file/m/0/{sha}", data[:SEG]))
        assert [c.wait_ack(m) for m in mids] == [0] * len(mids)
        assert c.command(f"$file/m/fin/{len(data)}") == 0
    finally:
        c.close()
    assert find_export(srv.exports, "mixed", "m", "m.bin").read_bytes() == data


def test_native_segments_survive_kill_9(make_server: Callable[..., ServerProcess]) -> None:
    srv = make_server("--workers", "1")
    data = body(256 * SEG)
    half = len(data) // 2
    c = FtClient(srv.mqtt_port, "crash", subscribe=False)
    try:
        assert c.command("$file/k/init", json.dumps({"name": "k.bin"})) == 0
        mids = [c.publish(f"$file/k/{o}", data[o : o + SEG]) for o in range(0, half, SEG)]
        assert [c.wait_ack(m) for m in mids] == [0] * len(mids)
        assert wait_metric(srv.http_port, "ftserver_native_segments_total", 1) > 0
    finally:
        c.client.loop_stop()
    srv.kill()
    srv2 = make_server("--workers", "1", data=srv.data_dir)
    c = FtClient(srv2.mqtt_port, "crash", subscribe=True)
    try:
        assert c.command(f"$file/k/fin/{len(data)}") != 0
        doc = c.doc_for(f"$file/k/fin/{len(data)}")
        # every acknowledged byte is still there: only the second half is missing
        assert doc["missing"] == [[half, len(data)]]
        mids = [c.publish(f"$file/k/{o}", data[o : o + SEG]) for o in range(half, len(data), SEG)]
        assert [c.wait_ack(m) for m in mids] == [0] * len(mids)
        assert c.command(f"$file/k/fin/{len(data)}") == 0
    finally:
        c.close()
    assert find_export(srv2.exports, "crash", "k", "k.bin").read_bytes() == data

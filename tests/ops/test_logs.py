"""Issue 16: JSON log lines, one per transfer lifecycle event, none per segment.

A real multi-worker ftserver with ``--log-format json`` and real paho clients: an upload that
is interrupted and resumed, an abort, a checksum that does not match and a transfer left to
expire. Every line the server writes to its standard error must be a JSON object; each
lifecycle event must appear exactly once per transfer, with its fields.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from ftharness import FtClient, ServerProcess, find_export
from ftserver import logs

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SEGMENT = 4096
LIFECYCLE = {"init", "paused", "resumed", "exported", "failed", "expired", "aborted"}


def records(path: Path) -> list[dict[str, Any]]:
    """Every complete line of the log, each parsed as a JSON object (fails otherwise)."""
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]
    out = []
    for line in complete.split("\n")[:-1]:
        doc = json.loads(line)  # every line, no exception
        assert isinstance(doc, dict), line
        out.append(doc)
    return out


def wait_for(path: Path, pred: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for doc in records(path):
            if pred(doc):
                return doc
        time.sleep(0.05)
    raise AssertionError(f"no {what} line in the log:\n{path.read_text()[-4000:]}")


def event_of(cid: str, fid: str, event: str) -> Callable[[dict[str, Any]], bool]:
    return lambda d: d.get("clientId") == cid and d.get("fileId") == fid and d["event"] == event


def test_json_lifecycle_lines(tmp_path: Path) -> None:
    srv = ServerProcess(
        tmp_path / "data",
        "--log-format", "json",
        "--workers", "2",
        "--set", "transfer.segments_ttl_min=1",
        "--set", "transfer.segments_gc_interval=300ms",
    )  # fmt: skip
    srv.start()
    log = srv.stderr_path
    cid = "dev-logs"
    data = os.urandom(64 * SEGMENT)
    half = len(data) // 2
    sent = 0
    try:
        # f1: init, half its segments, the device goes away, comes back and finishes
        c = FtClient(srv.mqtt_port, cid)
        meta = {"name": "f1.bin", "size": len(data)}
        assert c.command("$file/f1/init", json.dumps(meta)) == 0
        mids = [c.publish(f"$file/f1/{o}", data[o : o + SEGMENT]) for o in range(0, half, SEGMENT)]
        assert all(c.wait_ack(m) == 0 for m in mids)
        sent += len(mids)
        # f2: aborted; f3: fails its checksum; f4: left to expire (its own TTL, 1 s)
        assert c.command("$file/f2/init", json.dumps({"name": "f2.bin", "size": 8})) == 0
        assert c.command("$file/f2/0", b"abcd") == 0
        assert c.command("$file/f2/abort") == 0
        wrong = hashlib.sha256(b"something else").hexdigest()
        assert c.command("$file/f3/init", json.dumps({"name": "f3.bin", "checksum": wrong})) == 0
        assert c.command("$file/f3/0", b"payload") == 0
        assert c.command("$file/f3/fin/7") != 0
        assert c.command("$file/f4/init", json.dumps({"name": "f4", "segments_ttl": 1})) == 0
        assert c.command("$file/f4/0", b"x") == 0
        sent += 3
        c.close()
        wait_for(log, event_of(cid, "f1", "paused"), "paused")
        wait_for(log, event_of(cid, "f4", "expired"), "expired")
        c = FtClient(srv.mqtt_port, cid)
        mids = [
            c.publish(f"$file/f1/{o}", data[o : o + SEGMENT])
            for o in range(half, len(data), SEGMENT)
        ]
        assert all(c.wait_ack(m) == 0 for m in mids)
        sent += len(mids)
        assert c.command(f"$file/f1/fin/{len(data)}") == 0
        c.close()
    finally:
        assert srv.stop() == 0
    assert find_export(srv.exports, cid, "f1", "f1.bin").read_bytes() == data

    docs = records(log)
    assert docs and log.read_text().endswith("\n")
    for d in docs:
        assert TIME.match(d["time"]), d
        assert d["level"] in {"debug", "info", "warning", "error", "critical"}, d
        assert d["worker"] == "supervisor" or d["worker"] in (0, 1), d
        assert isinstance(d["logger"], str) and isinstance(d["msg"], str), d
        assert isinstance(d["event"], str) and d["event"], d
    # no line per segment: far fewer lines than segments, and none about the client that is
    # not a lifecycle event
    assert len(docs) < sent / 2, len(docs)
    mine = [d for d in docs if d.get("clientId") == cid]
    assert all(d["event"] in LIFECYCLE and d["level"] == "info" for d in mine), mine

    def events(fid: str) -> list[str]:
        return [d["event"] for d in mine if d["fileId"] == fid]

    assert events("f1") == ["init", "paused", "resumed", "exported"]
    assert events("f2") == ["init", "aborted"]
    # the fin failed and the transfer stays staged: the device left it unfinished
    assert events("f3") == ["init", "failed", "paused"]
    assert events("f4") == ["init", "paused", "expired"]
    by = {(d["fileId"], d["event"]): d for d in mine}
    assert all(isinstance(d["worker"], int) for d in mine)
    assert by["f1", "init"]["fileName"] == "f1.bin" and by["f1", "init"]["size"] == len(data)
    assert by["f1", "paused"]["received"] == half and by["f1", "paused"]["size"] == len(data)
    assert by["f1", "resumed"]["received"] == half and by["f1", "resumed"]["idle"] >= 0
    exported = by["f1", "exported"]
    assert exported["size"] == len(data)
    assert exported["checksum"] == hashlib.sha256(data).hexdigest().upper()
    assert Path(exported["destination"]) == find_export(srv.exports, cid, "f1", "f1.bin")
    assert exported["duration"] >= 0 and 0 <= exported["export_seconds"] <= exported["duration"]
    assert by["f2", "aborted"]["received"] == 4
    assert by["f3", "failed"]["reason"] == "checksum_mismatch"
    assert by["f3", "failed"]["size"] == 7
    assert by["f4", "expired"]["ttl"] == 1 and by["f4", "expired"]["idle"] > 1
    # every event the log showed is documented
    ops = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    for event in {d["event"] for d in docs}:
        assert f"`{event}`" in ops, event


def _record(**extra: Any) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "ftserver.x", "levelname": "INFO", "msg": "hello"})
    record.__dict__.update(extra)
    return record


def test_text_format_renders_the_fields() -> None:
    line = logs.TextFormatter("w1").format(
        _record(event="exported", clientId="dev 1", fileId="f", size=5, destination="/a=b")
    )
    assert line.endswith(' [w1]: hello clientId="dev 1" fileId=f size=5 destination="/a=b"'), line
    assert "event" not in line
    assert logs.TextFormatter().format(_record()).endswith(" INFO ftserver.x: hello")


def test_json_format_one_line_with_exception() -> None:
    try:
        raise ValueError("two\nlines")
    except ValueError:
        record = _record(exc_info=sys.exc_info(), fileId="f", clientId="c", reason="r")
    line = logs.JsonFormatter(3).format(record)
    assert "\n" not in line and line.isascii()
    doc = json.loads(line)
    assert list(doc)[:8] == [
        "time",
        "level",
        "worker",
        "logger",
        "event",
        "msg",
        "clientId",
        "fileId",
    ]
    assert doc["worker"] == 3 and doc["event"] == "log" and doc["reason"] == "r"
    assert "ValueError: two\nlines" in doc["exc"]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_relay_keeps_lines_and_wraps_stray_output(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    read, write = os.pipe()
    monkeypatch.setitem(logs._state, "fd", write)
    monkeypatch.setitem(logs._state, "format", fmt)
    logs.relay([b'{"event":"init"}', b"Fatal Python error: Segmentation fault"], 2)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read().decode().split("\n")
    assert out[0] == '{"event":"init"}' and out[2] == ""
    if fmt == "text":
        assert out[1] == "Fatal Python error: Segmentation fault"
    else:
        wrapped = json.loads(out[1])
        assert wrapped["msg"] == "Fatal Python error: Segmentation fault"
        assert wrapped["worker"] == 2 and wrapped["event"] == "worker_output"
        assert wrapped["level"] == "error" and TIME.match(wrapped["time"])


def _events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (r.__dict__["event"], r.__dict__["fileId"])
        for r in caplog.records
        if r.__dict__.get("event") in LIFECYCLE
    ]


async def _call(step: Callable[[], None]) -> None:
    """Run a store command; when the transfer is being reopened from disk, wait for it and
    run it again (what the dispatcher does)."""
    from ftserver.errors import TransferBusy

    try:
        step()
    except TransferBusy as busy:
        assert busy.ready is not None
        await busy.ready
        step()


def test_paused_and_resumed_across_processes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two stores on one data directory stand for two worker processes: the client leaves
    worker A and comes back through worker B, which reopens the transfer from disk; a transfer
    closed for being idle while its client stayed connected is not "resumed" when reopened."""
    import asyncio

    from ftserver.meta import FileMeta
    from ftserver.transfer.store import TransferStore

    caplog.set_level(logging.INFO)
    seg = memoryview(b"y" * 10)

    async def body() -> None:
        a = TransferStore(tmp_path, max_open=8)
        b = TransferStore(tmp_path, max_open=8)
        path = a.segment_path("c", 5, 1 << 30, 1 << 20)
        a.init("c", "moved", FileMeta(name="m", size=20))
        a.segment("c", "moved", 0, seg)
        a.commit()
        a.drop_segment_path("c", path)  # the client left A
        assert _events(caplog) == [("init", "moved"), ("paused", "moved")]
        a.release_client("c")  # it claimed its session from B: A lets the transfer go
        b.segment_path("c", 5, 1 << 30, 1 << 20)
        await _call(lambda: b.segment("c", "moved", 10, seg))
        assert _events(caplog)[2:] == [("resumed", "moved")]
        # idle while connected: closed, reopened by the same connection, not resumed
        b.init("c", "quiet", FileMeta(name="q"))
        b.segment("c", "quiet", 0, seg)
        b.commit()
        await asyncio.sleep(0.05)
        assert b.close_idle(now=time.time() + 3600) == 2
        await _call(lambda: b.segment("c", "quiet", 10, seg))
        await _call(lambda: b.segment("c", "moved", 20, seg))
        assert _events(caplog)[3:] == [("init", "quiet")]
        await a.close()
        await b.close()

    asyncio.run(body())


def test_workers_long_lines_stay_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes write long JSON lines (far beyond the pipe's atomic 4 KiB) to their
    standard error at once; the supervisor's relay copies them to one file: every line whole."""
    import asyncio

    from ftserver.supervisor import _relay_lines

    script = (
        "import json, os, sys\n"
        "for i in range(200):\n"
        "    sys.stderr.write(json.dumps({'w': sys.argv[1], 'i': i, 'pad': 'x' * 20000}) + '\\n')\n"
        "    sys.stderr.flush()\n"
        "print('a last line that is not JSON', file=sys.stderr)\n"
    )
    out = tmp_path / "stderr"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    monkeypatch.setitem(logs._state, "fd", fd)
    monkeypatch.setitem(logs._state, "format", "json")

    async def body() -> None:
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", script, str(w), stderr=asyncio.subprocess.PIPE
            )
            for w in (0, 1)
        ]
        relays = [_relay_lines(p.stderr, w) for w, p in enumerate(procs) if p.stderr]
        await asyncio.gather(*relays, *(p.wait() for p in procs))

    asyncio.run(body())
    os.close(fd)
    docs = records(out)
    assert len(docs) == 2 * 201
    for w in ("0", "1"):
        assert [d["i"] for d in docs if d.get("w") == w] == list(range(200))
    stray = [d for d in docs if d.get("event") == "worker_output"]
    assert sorted(d["worker"] for d in stray) == [0, 1]
    assert all(d["msg"] == "a last line that is not JSON" for d in stray)

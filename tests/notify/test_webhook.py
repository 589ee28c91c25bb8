"""Completion webhooks end to end: a real ftserver POSTs to a real aiohttp receiver that answers
500 to the first deliveries, then is down while files finish and while ftserver restarts.

Every event arrives (at least once), every signature verifies with the secret, the event ids
let the receiver drop repeats, and a fin repeated after its success adds no event.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from bench.macro.services import free_port
from ftharness import FtClient, ServerProcess, find_export, metric, scrape

SECRET = "4b1d9c0e7f2a6b3c8d5e1f0a9b7c6d5e"
WAIT = 30.0


class Receiver:
    """An aiohttp webhook receiver on its own event loop thread; stops and starts again on
    the same port. Answers 500 to its first ``refuse`` requests."""

    def __init__(self, refuse: int) -> None:
        self.port = free_port()
        self.refuse = refuse
        self.refused: list[str] = []
        #: (headers, body) of every request answered 2xx
        self.accepted: list[tuple[dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:
            if self.refuse:
                self.refuse -= 1
                self.refused.append(request.headers.get("X-Ftserver-Event-Id", ""))
                return web.Response(status=500, text="not now")
            self.accepted.append((dict(request.headers), body))
        return web.Response(status=204)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
        self._runner = runner

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> Receiver:
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def events(self) -> dict[str, dict[str, Any]]:
        """Accepted events by id (repeats collapse), each signature checked."""
        with self._lock:
            accepted = list(self.accepted)
        out: dict[str, dict[str, Any]] = {}
        for headers, body in accepted:
            expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(headers["X-Ftserver-Signature"], f"sha256={expected}")
            assert headers["Content-Type"] == "application/json"
            doc = json.loads(body)
            assert headers["X-Ftserver-Event-Id"] == doc["id"]
            assert headers["X-Ftserver-Event"] == doc["event"]
            if doc["id"] in out:
                assert out[doc["id"]] == doc  # a repeat is the same document
            out[doc["id"]] = doc
        return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(refuse=3).start()
    yield r
    r.close()


def wait_for(pred: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {WAIT}s")
        time.sleep(0.05)


def upload(client: FtClient, file_id: str, data: bytes, checksum: str) -> int:
    assert client.command(f"$file/{file_id}/init", json.dumps({"name": f"{file_id}.bin"})) == 0
    for off in range(0, len(data), 4096):
        assert client.command(f"$file/{file_id}/{off}", data[off : off + 4096]) == 0
    return client.command(f"$file/{file_id}/fin/{len(data)}/{checksum}")


def test_every_event_reaches_a_flaky_receiver_signed_across_restarts(
    make_server: Callable[..., ServerProcess], receiver: Receiver, cid: str
) -> None:
    args = (
        "--workers", "1",
        "--set", f"notify.url=http://127.0.0.1:{receiver.port}/hook",
        "--set", f"notify.secret={SECRET}",
        "--set", "notify.retry_max=500ms",
    )  # fmt: skip
    srv = make_server(*args)
    files = {f"f{i}": os.urandom(5000 + i) for i in range(5)}
    sha = {fid: hashlib.sha256(data).hexdigest() for fid, data in files.items()}
    client = FtClient(srv.mqtt_port, cid)
    assert upload(client, "f0", files["f0"], sha["f0"]) == 0
    assert upload(client, "f1", files["f1"], sha["f1"]) == 0
    assert upload(client, "f2", files["f2"], "0" * 64) == 0x80  # checksum_mismatch
    assert client.command(f"$file/f0/fin/{len(files['f0'])}/{sha['f0']}") == 0  # a repeat
    wait_for(lambda: len(receiver.events()) == 3, "3 events at the receiver")
    assert len(receiver.refused) == 3  # the first three attempts got 500, and were retried

    receiver.stop()  # down: connections are refused
    assert upload(client, "f3", files["f3"], sha["f3"]) == 0
    assert upload(client, "f4", files["f4"], sha["f4"]) == 0
    client.close()
    wait_for(
        lambda: metric(scrape(srv.http_port), "ftserver_webhook_pending") == 2,
        "2 events pending",
    )
    assert srv.stop() == 0, srv.stderr()  # SIGTERM with events pending
    refused = srv.stderr().count("Cannot connect to host")
    srv = make_server(*args, data=srv.data_dir)
    # the restarted server tries, and meets the receiver still down
    wait_for(lambda: srv.stderr().count("Cannot connect to host") > refused, "a refused retry")
    receiver.start()
    wait_for(lambda: len(receiver.events()) == 5, "5 events at the receiver")
    wait_for(
        lambda: metric(scrape(srv.http_port), "ftserver_webhook_pending") == 0,
        "an empty outbox",
    )

    events = receiver.events()
    assert set(receiver.refused) <= set(events)
    by_file = {doc["fileId"]: doc for doc in events.values()}
    assert sorted(by_file) == sorted(files)  # one event per transfer: the repeated fin added none
    for fid, doc in by_file.items():
        assert doc["clientId"] == cid and doc["name"] == f"{fid}.bin"
        assert doc["size"] == len(files[fid])
        if fid == "f2":
            assert doc["event"] == "failed"
            assert (doc["reason"], doc["reasonCode"]) == ("checksum_mismatch", 0x80)
            assert doc["checksum"] == "0" * 64 and doc["destination"] is None
        else:
            assert doc["event"] == "exported" and "reason" not in doc
            assert doc["checksum"] == sha[fid]
            path = find_export(srv.exports, cid, fid, f"{fid}.bin")
            assert doc["destination"] == str(path.absolute())
            assert path.read_bytes() == files[fid]
    assert srv.stop() == 0, srv.stderr()


def test_a_full_outbox_drops_the_oldest_and_counts_it(
    make_server: Callable[..., ServerProcess], cid: str
) -> None:
    """Nobody listens at the webhook's port: with notify.max_pending = 2, the third event
    drops the first (a warning, ftserver_notify_dropped_total) and two stay pending."""
    srv = make_server(
        "--workers", "1",
        "--set", f"notify.url=http://127.0.0.1:{free_port()}/hook",
        "--set", f"notify.secret={SECRET}",
        "--set", "notify.max_pending=2",
    )  # fmt: skip
    client = FtClient(srv.mqtt_port, cid)
    for i in range(3):
        data = os.urandom(100)
        assert upload(client, f"d{i}", data, hashlib.sha256(data).hexdigest()) == 0
    client.close()
    samples = scrape(srv.http_port)
    assert metric(samples, "ftserver_notify_dropped_total", sink="webhook") == 1
    assert metric(samples, "ftserver_webhook_pending") == 2
    assert srv.stop() == 0
    assert "full (2 events pending, notify.max_pending): dropped the oldest" in srv.stderr()
    names = sorted(p.name for p in (srv.data_dir / "outbox" / "webhook" / "0").glob("*.json"))
    docs = [json.loads((srv.data_dir / "outbox" / "webhook" / "0" / n).read_bytes()) for n in names]
    assert [d["fileId"] for d in docs] == ["d1", "d2"]

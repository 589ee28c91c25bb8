"""expire_at is enforced (docs/protocol.md §7): the server's collector deletes expired exports and
the API stops listing them; unexpired ones stay."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable

import pytest

from ftharness import FtClient, ServerProcess, find_export


@pytest.mark.parametrize("workers", ["1", "2"])
def test_expired_exports_are_collected(
    make_server: Callable[..., ServerProcess], workers: str
) -> None:
    srv = make_server("--workers", workers, "--set", "transfer.segments_gc_interval=200ms")
    c = FtClient(srv.mqtt_port, f"exp-{workers}")
    past, future = int(time.time()) - 10, int(time.time()) + 3600
    for fid, expire_at in (("old", past), ("new", future)):
        meta = json.dumps({"name": f"{fid}.txt", "expire_at": expire_at})
        assert c.command(f"$file/{fid}/init", meta) == 0
        assert c.command(f"$file/{fid}/0", b"data") == 0
        assert c.command(f"$file/{fid}/fin/4") == 0
    c.close()
    old = find_export(srv.exports, c.client_id, "old", "old.txt")
    new = find_export(srv.exports, c.client_id, "new", "new.txt")
    deadline = time.monotonic() + 10
    while old.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not old.exists()
    assert new.read_bytes() == b"data"
    url = f"http://127.0.0.1:{srv.http_port}/api/v5/file_transfer/files"
    with urllib.request.urlopen(url, timeout=10) as r:
        names = [f["name"] for f in json.loads(r.read())["files"]]
    assert names == ["new.txt"]

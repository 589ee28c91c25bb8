"""First end-to-end: a paho client uploads a file in both modes, both MQTT versions and on
both event loops (uvloop, the default, and asyncio)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import pytest

from ftharness import FtClient, ServerProcess, find_export, read_manifest


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_simple_transfer_all_flavours(make_server: Callable[..., ServerProcess], loop: str) -> None:
    srv = make_server(env={"FTSERVER_EVENT_LOOP": loop})
    for v5 in (True, False):
        for mode in ("$file", "$file-async"):
            cid = f"smoke-{loop}-{v5}-{mode[1:]}"
            c = FtClient(srv.mqtt_port, cid, v5=v5)
            data = os.urandom(50_000)
            try:
                assert c.upload("f1", data, name="a.bin", mode=mode) == 0
                docs = [c.doc()]
                while not docs[-1]["topic"].endswith("/fin/50000"):
                    docs.append(c.doc())
                assert docs[0]["topic"] == f"{mode}/f1/init"
                assert docs[-1]["reason_code"] == 0
                assert docs[-1]["reason_description"] == "success"
                assert len(docs) == 2 + 49  # init, 49 segments, fin: one document each
            finally:
                c.close()
            path = find_export(srv.exports, cid, "f1", "a.bin")
            assert path.read_bytes() == data
            manifest = read_manifest(path)
            assert manifest["checksum"] == hashlib.sha256(data).hexdigest().upper()
            assert manifest["name"] == "a.bin" and manifest["size"] == 50_000
            assert manifest["clientid"] == cid and manifest["fileid"] == "f1"
    assert srv.stop() == 0
    assert "Traceback" not in srv.stderr()

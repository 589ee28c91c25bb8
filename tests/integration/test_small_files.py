"""Many devices each sending one small file at once, over the wire (issue 13, item 6).

A real server (one process, and a supervisor with two workers; both durability modes), real
paho clients in threads: every fin is answered success (synchronous fins in the PUBACK,
asynchronous ones in the response document), every export is byte-identical with a manifest
naming its checksum and nothing else beside it, and nothing is left in the staging area.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from ftharness import FtClient, ServerProcess, find_export, read_manifest

DEVICES = 24


def content(i: int) -> bytes:
    n = 1 + (i * 977) % 16384  # 1 B to 16 KiB
    return (hashlib.sha256(i.to_bytes(4, "big")).digest() * (n // 32 + 1))[:n]


def staged(data_dir: Path) -> list[str]:
    root = data_dir / "staging"
    out = [str(p.relative_to(root)) for p in root.glob("*/*/*")]
    tmp = root / ".tmp"
    return out + (os.listdir(tmp) if tmp.exists() else [])


@pytest.mark.parametrize(("workers", "durability"), [("1", "fast"), ("2", "fast"), ("1", "sync")])
def test_small_files_at_once(
    make_server: Callable[..., ServerProcess], workers: str, durability: str
) -> None:
    srv = make_server("--workers", workers, "--durability", durability)
    results: dict[int, object] = {}

    def device(i: int) -> None:
        c = FtClient(srv.mqtt_port, f"small-{i}", subscribe=i % 2 == 1)
        try:
            data = content(i)
            if i % 2 == 0:
                results[i] = c.upload(f"f{i}", data, name=f"n{i}.bin", segment=4096)
            else:  # asynchronous fin: accepted at once, the result in the response document
                mode = "$file-async"
                results[i] = c.upload(f"f{i}", data, name=f"n{i}.bin", segment=4096, mode=mode)
                doc = c.doc_for(f"{mode}/f{i}/fin/{len(data)}")
                results[i] = (results[i], doc["reason_code"])
        except Exception as exc:  # reported below, with the device
            results[i] = exc
        finally:
            c.close()

    threads = [threading.Thread(target=device, args=(i,)) for i in range(DEVICES)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    want = {i: 0 if i % 2 == 0 else (0, 0) for i in range(DEVICES)}
    assert results == want, srv.stderr()
    for i in range(DEVICES):
        data = content(i)
        path = find_export(srv.exports, f"small-{i}", f"f{i}", f"n{i}.bin")
        assert path.read_bytes() == data
        manifest = read_manifest(path)
        assert manifest["checksum"] == hashlib.sha256(data).hexdigest().upper()
        assert (manifest["clientid"], manifest["fileid"]) == (f"small-{i}", f"f{i}")
        assert sorted(os.listdir(path.parent)) == [f"n{i}.bin", f"n{i}.bin.MANIFEST.json"]
    assert staged(srv.data_dir) == []
    assert srv.stop() == 0

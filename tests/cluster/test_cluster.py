"""Three ftserver nodes behind HAProxy (deploy/haproxy.cfg), exporting to one SeaweedFS
bucket, devices uploading with ftserver's own uploader (docs/cluster.md).

Scaled for CI on two cores: 9 devices with files of a bit over 3 parts of 5 MiB (the issue's
30 devices with 64 MiB files take minutes of CPU here); what is checked does not depend on
the size: every file in the bucket byte-identical with its metadata, the devices of the
killed node resending at most the part they were in, nothing completed twice, no multipart
upload left behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import threading
import time
import urllib.request
from typing import Any

import pytest
from clusterlib import PART, Node, open_uploads, wait_ready

from ftharness import metric, scrape
from ftserver.client import upload
from ftserver.client.api import FilesApi
from ftserver.client.link import MqttSettings
from ftserver.client.options import Timeouts
from ftserver.export.checkpoint import Checkpoint

SIZE = 3 * PART + 123_457
SEGMENT = 256 * 1024
DEVICES = 9
#: segments in flight per device: what MQTT itself republishes after a lost connection
WINDOW = 8


class TailGated(io.BytesIO):
    """The device's file whose last segment is read only once the gate opens."""

    def __init__(self, data: bytes, gate: threading.Event) -> None:
        super().__init__(data)
        self.gate = gate
        self.reached = threading.Event()
        self._last = (len(data) - 1) // SEGMENT * SEGMENT

    def read(self, n: int | None = -1, /) -> bytes:
        if n is not None and n <= SEGMENT and self.tell() == self._last:
            self.reached.set()
            self.gate.wait()
        return super().read(n)


class GatedFile(io.BytesIO):
    """The device's file: reads of one whole segment at or past the middle wait for the
    gate (the hash pass at the start reads 1 MiB chunks, and a shorter last one, and goes
    through). The device's event loop waits with it: its connection stays up (keep-alive
    60 s), with nothing in flight."""

    def __init__(self, data: bytes, gate: threading.Event) -> None:
        super().__init__(data)
        self.gate = gate
        self.reached = threading.Event()
        self._size = len(data)

    def read(self, n: int | None = -1, /) -> bytes:
        if n == SEGMENT and self.tell() >= self._size // 2:
            self.reached.set()
            self.gate.wait()
        return super().read(n)


def run_device(port: int, cid: str, version: int, mode: str, source: Any = None,
               out: dict[str, Any] | None = None, **fields: Any) -> None:  # fmt: skip
    async def go() -> Any:
        return await upload(
            source,
            mqtt=MqttSettings(port=port, client_id=cid, version=version, keepalive=60),
            mode=mode,
            segment_size=SEGMENT,
            window=WINDOW,
            timeouts=Timeouts(command=10.0, reconnect=60.0, reconnect_backoff=(0.2, 1.0)),
            **fields,
        )

    assert out is not None
    try:
        out[cid] = asyncio.run(go())
    except BaseException as exc:  # reported by the test
        out[cid] = exc


def home_of(nodes: list[Node], cid: str) -> list[str]:
    """The nodes whose log names this client's connection."""
    return [n.name for n in nodes if f"'{cid}'" in n.log() or f'"{cid}"' in n.log()]


@pytest.mark.timeout(600)
def test_node_killed_mid_upload(cluster: Any) -> None:
    bucket, nodes, proxy, s3 = cluster
    devices = [
        (f"dev{i:02d}", 5 if i % 3 else 4, "async" if i % 2 else "sync") for i in range(DEVICES)
    ]
    # each device uploads a small file twice: both land on the same node
    out: dict[str, Any] = {}
    for round_ in (1, 2):
        for cid, version, mode in devices:
            run_device(proxy.port, cid, version, mode, io.BytesIO(b"x" * 1000), out,
                       file_id=f"small{round_}", name=f"small{round_}.bin")  # fmt: skip
            assert not isinstance(out[cid], BaseException), out[cid]
    home: dict[str, str] = {}
    for cid, _v, _m in devices:
        found = home_of(nodes, cid)
        assert len(found) == 1, (cid, found)
        home[cid] = found[0]
    by_node = {n.name: [c for c in home if home[c] == n.name] for n in nodes}
    victim = max(nodes, key=lambda n: len(by_node[n.name]))
    assert by_node[victim.name]

    # the big files: every device stops at its middle until the victim is killed
    gate = threading.Event()
    files = {cid: os.urandom(SIZE) for cid, _v, _m in devices}
    sources = {cid: GatedFile(files[cid], gate) for cid in files}
    threads = []
    for i, (cid, version, mode) in enumerate(devices):
        fields: dict[str, Any] = {"file_id": f"big-{cid}", "name": f"{cid}.bin"}
        fields["file_checksum"] = i % 2 == 0
        t = threading.Thread(
            target=run_device,
            args=(proxy.port, cid, version, mode, sources[cid], out),
            kwargs=fields,
        )
        t.start()
        threads.append(t)
    deadline = time.monotonic() + 120
    for src in sources.values():
        assert src.reached.wait(max(1.0, deadline - time.monotonic()))
    # the victim's transfers have their first part in the bucket (its checkpoint says so)
    for cid in by_node[victim.name]:
        key = f".ftserver/transfers/{cid}/big-{cid}"
        while True:
            try:
                doc = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                if doc["hashed"] >= PART:
                    assert doc["node"] == victim.name
                    break
            except s3.exceptions.NoSuchKey:
                pass
            assert time.monotonic() < deadline, (cid, doc if "doc" in dir() else None)
            time.sleep(0.1)
    victim.kill()
    gate.set()
    # its devices reconnect through HAProxy to the other nodes, which take their transfers
    # over from the bucket; the victim comes back while they hold them
    for cid in by_node[victim.name]:
        key = f".ftserver/transfers/{cid}/big-{cid}"
        while True:
            try:
                doc = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                if doc["node"] != victim.name:
                    assert doc["generation"] == 2
                    break
            except s3.exceptions.NoSuchKey:
                break  # adopted and finished already
            assert time.monotonic() < deadline + 120, f"{cid} not adopted"
            time.sleep(0.1)
    # any node shows the transfers in progress across the cluster, from the checkpoints
    alive = next(n for n in nodes if n is not victim)
    url = f"http://127.0.0.1:{alive.http}/api/v5/file_transfer/cluster/transfers?limit=2"
    listed: list[dict[str, Any]] = []
    while url:
        with urllib.request.urlopen(url) as r:
            page = json.load(r)
        listed += page["transfers"]
        cursor = page.get("cursor")
        url = f"{url.split('&')[0]}&following={cursor}" if cursor else ""
    by_cid = {t["clientid"]: t for t in listed if t["fileid"].startswith("big-")}
    for cid in by_node[victim.name]:
        if cid in by_cid:  # (not when it finished meanwhile)
            t = by_cid[cid]
            assert t["node"] != victim.name and t["generation"] == 2, t
            assert t["bytes_in_parts"] >= PART and t["expected_size"] == SIZE, t
    victim.start()
    wait_ready(victim)
    for t in threads:
        t.join(240)
        assert not t.is_alive()

    resent: dict[str, int] = {}
    for cid, _v, _m in devices:
        result = out[cid]
        assert not isinstance(result, BaseException), (cid, result)
        resent[cid] = result.bytes_resent
        obj = s3.get_object(Bucket=bucket, Key=f"{cid}/big-{cid}/{cid}.bin")
        body = obj["Body"].read()
        assert hashlib.sha256(body).digest() == hashlib.sha256(files[cid]).digest(), cid
        meta = obj["Metadata"]
        assert meta["clientid"] == cid and meta["fileid"] == f"big-{cid}"
        assert json.loads(meta["filemeta"])["size"] == SIZE
    moved = by_node[victim.name]
    print(
        f"\ncluster: {len(moved)} of {DEVICES} devices on the killed node; bytes resent per "
        f"transfer (part {PART}): "
        + ", ".join(f"{c}={resent[c]}" + ("*" if c in moved else "") for c in sorted(resent))
    )
    # at most the data not yet in an uploaded part (the part the device was in), besides
    # the segments in flight when the node died (republished by MQTT QoS 1 itself)
    for cid in moved:
        assert resent[cid] <= PART + WINDOW * SEGMENT, (cid, resent[cid])
    # and the adopting nodes asked for no more than what was beyond the uploaded parts
    took = [n.log().count("took over 'dev") for n in nodes if n is not victim]
    assert sum(took) >= len(moved), took
    # each file exported once, on one node
    for cid, _v, _m in devices:
        done = sum(len(re.findall(rf"exported '{cid}'/'big-{cid}' to s3", n.log())) for n in nodes)
        assert done == 1, (cid, done)
    # every node lists every file (they are in the bucket), and says which node it is
    everything = {(f"{cid}", f"{fid}") for cid, _v, _m in devices for fid in ("small1", "small2")}
    everything |= {(cid, f"big-{cid}") for cid, _v, _m in devices}
    for node in nodes:
        api = FilesApi(f"http://127.0.0.1:{node.http}")
        items = list(api.iter_files())
        assert {(f["clientid"], f["fileid"]) for f in items} == everything, node.name
        # S3 exports are downloaded from the bucket: a presigned URL, the same from any node
        assert all(f["uri"].startswith("http://127.0.0.1:") and bucket in f["uri"] for f in items)
        with urllib.request.urlopen(f"http://127.0.0.1:{node.http}/metrics") as r:
            exposition = r.read().decode()
        assert f'ftserver_node_info{{node="{node.name}"}} 1.0' in exposition
    # no transfer state left in the bucket
    left = s3.list_objects_v2(Bucket=bucket, Prefix=".ftserver/transfers/").get("Contents", [])
    assert [o["Key"] for o in left if "%expire" not in o["Key"]] == []


def test_expired_checkpoints_collected_once(cluster: Any) -> None:
    """A transfer abandoned by a node that never came back (its checkpoint not written for
    longer than the TTL): the collectors of the three nodes abort its upload and delete its
    checkpoint, exactly one of them (conditional delete)."""
    bucket, nodes, _proxy, s3 = cluster
    key, ckpt_key = "gone/f/a.bin", ".ftserver/transfers/gone/f"
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    etag = s3.upload_part(
        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * PART
    )["ETag"]
    doc = json.loads(
        Checkpoint(
            "gone", "f", {"name": "a.bin", "size": 3 * PART}, key, 3 * PART, PART, upload_id,
            "node9", parts={1: etag},
        ).to_bytes()
    )  # fmt: skip
    # a fresh one (kept) and the same transfer idle for two days, longer than its TTL
    fresh_key = ".ftserver/transfers/gone/g"
    s3.put_object(Bucket=bucket, Key=fresh_key, Body=json.dumps(doc).encode())
    doc["updated_at"] = time.time() - 2 * 86400
    s3.put_object(Bucket=bucket, Key=ckpt_key, Body=json.dumps(doc).encode())
    deadline = time.monotonic() + 60
    while open_uploads(s3, bucket):
        assert time.monotonic() < deadline, "the expired upload was not aborted"
        time.sleep(0.2)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == [fresh_key]
    time.sleep(2.5)  # two more collector passes everywhere
    acted = [n.name for n in nodes if "checkpoint of 'gone'/'f' expired" in n.log()]
    assert len(acted) == 1, acted
    s3.delete_object(Bucket=bucket, Key=fresh_key)


@pytest.mark.timeout(600)
def test_s3_outage_during_uploads(cluster: Any, seaweed: Any) -> None:
    """SeaweedFS stops before the devices start their files through HAProxy: each node's
    checkpoint lookup fails (the transfer is handled as new there), the streams cannot
    start, the segments are acknowledged all the same; the fins, sent while S3 is still
    away, are answered 0x97 ``s3_unavailable`` and the devices pause; S3 comes back, the
    devices send their fins again: every file is exported whole at fin, byte-identical, and
    nothing is left behind (no upload, no checkpoint), nor a traceback in the nodes' logs."""
    bucket, nodes, proxy, s3 = cluster
    gate = threading.Event()
    files = {f"out{i}": os.urandom(2 * PART + 777) for i in range(4)}
    sources = {cid: TailGated(data, gate) for cid, data in files.items()}
    out: dict[str, Any] = {}
    seaweed.stop(kill=True)
    threads = []
    for i, cid in enumerate(files):
        t = threading.Thread(
            target=run_device,
            args=(proxy.port, cid, 5 if i % 2 else 4, "async" if i < 2 else "sync"),
            kwargs={"source": sources[cid], "out": out, "file_id": "f", "name": "f.bin"},
        )
        t.start()
        threads.append(t)
    for src in sources.values():
        assert src.reached.wait(120)  # everything but the last segment acknowledged
    gate.set()  # the last segments and the fins go while S3 is still away

    def paused() -> float:
        return sum(
            metric(scrape(n.http), "ftserver_transfers_failed_total", reason="s3_unavailable")
            for n in nodes
            if n.srv is not None
        )

    deadline = time.monotonic() + 120
    while paused() < len(files):  # every fin answered 0x97 at least once
        assert time.monotonic() < deadline, "no fin was answered s3_unavailable"
        time.sleep(0.2)
    seaweed.start(buckets=[bucket])
    for t in threads:
        t.join(300)
        assert not t.is_alive()
    for cid, data in files.items():
        assert not isinstance(out[cid], BaseException), (cid, out[cid])
        assert out[cid].pauses >= 1, cid  # the device paused, then finished
        body = s3.get_object(Bucket=bucket, Key=f"{cid}/f/f.bin")["Body"].read()
        assert body == data, cid
    left = s3.list_objects_v2(Bucket=bucket, Prefix=".ftserver/").get("Contents", [])
    assert left == []

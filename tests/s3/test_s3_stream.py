"""Streaming S3 export end to end: parts go to the bucket while the file arrives, the
transfer's checkpoint sits in the bucket, the fin only completes; abort, fencing, expiry.

Real ftserver processes, a real SeaweedFS, paho clients; the bucket is inspected with
botocore directly, and the checkpoint's fields are checked against what the test computes
itself (list_parts, hashlib). The bucket fixture checks that no multipart upload is left.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from s3helpers import s3_args
from seaweed import SeaweedFS, open_uploads

import ftcore
from ftharness import FtClient, ServerProcess

MiB = 1 << 20
SEG = 256 * 1024
PART = 5 * MiB
PREFIX = ".ftserver/transfers/"
#: generous: these wait for background work on a loaded machine, they measure nothing
WAIT = 120.0


def wait_for(what: str, pred: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def send(
    c: FtClient, fid: str, data: bytes, meta: dict[str, Any], segs: range | None = None
) -> None:
    """init + the segments (all, or those whose index is in ``segs``), acknowledged."""
    assert c.command(f"$file/{fid}/init", json.dumps(meta)) == 0
    offsets = list(range(0, len(data), SEG))
    if segs is not None:
        offsets = [offsets[i] for i in segs]
    mids = [c.publish(f"$file/{fid}/{o}", data[o : o + SEG]) for o in offsets]
    for mid in mids:
        assert c.wait_ack(mid) == 0


def the_upload(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    [upload] = [u for u in open_uploads(s3, bucket) if u["Key"] == key]
    return upload


def parts_of(s3: Any, bucket: str, key: str, upload_id: str) -> dict[int, str]:
    """Part number -> ETag of an open upload whose parts were each sent once."""
    answer = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)
    return {int(p["PartNumber"]): p["ETag"] for p in answer.get("Parts") or []}


def checkpoint(s3: Any, bucket: str, cid: str, fid: str) -> dict[str, Any] | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=f"{PREFIX}{cid}/{fid}")["Body"].read()
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise
    doc: dict[str, Any] = json.loads(body)
    return doc


def rchar(pid: int) -> int:
    """Bytes the process read through read()/pread() so far (page-cache hits included)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


def obj_bytes(s3: Any, bucket: str, key: str) -> bytes:
    data: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def stream_args(seaweed: SeaweedFS, bucket: str, **extra: object) -> list[str]:
    return s3_args(
        seaweed,
        bucket,
        **{
            "export.part_size": "5MiB",
            "export.upload_concurrency": 2,
            "server.node": "node-a",
            **extra,
        },
    )


# ------------------------------------------------------------------------------------------


def test_s3_server_supports_conditional_writes(seaweed: SeaweedFS, s3: Any, bucket: str) -> None:
    """What the checkpoints' fencing rests on (ftserver/export/checkpoint.py)."""
    first = s3.put_object(Bucket=bucket, Key="c", Body=b"1", IfNoneMatch="*")["ETag"]
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="c", Body=b"2", IfNoneMatch="*")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    s3.put_object(Bucket=bucket, Key="c", Body=b"3", IfMatch=first)
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="c", Body=b"4", IfMatch=first)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(ClientError) as exc:
        s3.delete_object(Bucket=bucket, Key="c", IfMatch=first)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert obj_bytes(s3, bucket, "c") == b"3"


def test_parts_before_fin_checkpoint_and_a_fin_that_reads_no_file(
    seaweed: SeaweedFS, s3: Any, bucket: str, make_server: Callable[..., ServerProcess], cid: str
) -> None:
    srv = make_server(*stream_args(seaweed, bucket))
    assert srv.proc is not None
    data = os.urandom(4 * PART + 3 * MiB)  # 5 parts, the last one short
    key = f"{cid}/f/big.bin"
    meta = {"name": "big.bin", "size": len(data)}
    c = FtClient(srv.mqtt_port, cid)
    try:
        # the first two parts and half of the third: two parts are uploaded, no fin yet
        send(c, "f", data, meta, range(0, (2 * PART + PART // 2) // SEG))
        upload = wait_for("the multipart upload", lambda: open_uploads(s3, bucket))[0]
        assert upload["Key"] == key
        uid = upload["UploadId"]
        parts = wait_for("two parts", lambda: len(parts_of(s3, bucket, key, uid)) == 2 or None)
        parts = parts_of(s3, bucket, key, uid)
        assert sorted(parts) == [1, 2]
        doc = wait_for(
            "the checkpoint of two parts",
            lambda: (d := checkpoint(s3, bucket, cid, "f")) and len(d["parts"]) == 2 and d,
        )
        assert doc["upload_id"] == uid and doc["key"] == key
        assert doc["parts"] == [[1, parts[1]], [2, parts[2]]]
        assert (doc["node"], doc["generation"], doc["state"]) == ("node-a", 1, "streaming")
        assert (doc["size"], doc["part_size"]) == (len(data), PART)
        assert doc["meta"] == meta and (doc["clientid"], doc["fileid"]) == (cid, "f")
        # the rolling hash at the end of the parts done: what the bytes give
        assert doc["hashed"] == 2 * PART
        state = ftcore.RollingSha256.loads(base64.b64decode(doc["hash_state"]))
        assert state.digest() == hashlib.sha256(data[: 2 * PART]).digest()

        # the rest, out of order: every part is in the bucket before the fin
        rest = range((2 * PART + PART // 2) // SEG, -(-len(data) // SEG))
        send(c, "f", data, meta, range(rest.stop - 1, rest.start - 1, -1))
        wait_for("five parts", lambda: len(parts_of(s3, bucket, key, uid)) == 5 or None)
        wait_for(
            "the checkpoint of five parts",
            lambda: (d := checkpoint(s3, bucket, cid, "f")) and len(d["parts"]) == 5,
        )
        before = rchar(srv.proc.pid)
        assert c.command(f"$file/f/fin/{len(data)}") == 0
        read = rchar(srv.proc.pid) - before
    finally:
        c.close()
    # the fin read no part of the file again (a whole-file export reads 23 MiB)
    assert read < MiB, read
    assert obj_bytes(s3, bucket, key) == data
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-5")
    assert head["Metadata"] == {
        "clientid": cid,
        "fileid": "f",
        "filemeta": json.dumps(meta, separators=(",", ":")),
        "filemeta-vsn": "1",
    }
    sha = hashlib.sha256(data).hexdigest().upper()
    assert s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"] == [
        {"Key": "sha256", "Value": sha}
    ]
    assert checkpoint(s3, bucket, cid, "f") is None  # removed at completion
    # the checkpoint prefix is never listed as an export
    keys = [o["Key"] for o in s3.list_objects(Bucket=bucket).get("Contents", [])]
    assert keys == [key]


def test_abort_leaves_no_upload_nor_checkpoint(
    seaweed: SeaweedFS, s3: Any, bucket: str, make_server: Callable[..., ServerProcess], cid: str
) -> None:
    srv = make_server(*stream_args(seaweed, bucket))
    data = os.urandom(3 * PART)
    c = FtClient(srv.mqtt_port, cid)
    try:
        send(c, "f", data, {"name": "a.bin", "size": len(data)}, range(0, 2 * PART // SEG))
        uid = wait_for("an upload", lambda: open_uploads(s3, bucket))[0]["UploadId"]
        wait_for("a part", lambda: parts_of(s3, bucket, f"{cid}/f/a.bin", uid))
        wait_for("a checkpoint", lambda: checkpoint(s3, bucket, cid, "f"))
        assert c.command("$file/f/abort") == 0
        wait_for("the upload aborted", lambda: open_uploads(s3, bucket) == [])
        wait_for("the checkpoint deleted", lambda: checkpoint(s3, bucket, cid, "f") is None)
        # the fileId starts over
        assert c.command(f"$file/f/fin/{len(data)}") == 0x80
    finally:
        c.close()
    assert "Contents" not in s3.list_objects(Bucket=bucket, Prefix=f"{cid}/")


def test_resent_bytes_over_an_uploaded_part_win(
    seaweed: SeaweedFS, s3: Any, bucket: str, make_server: Callable[..., ServerProcess], cid: str
) -> None:
    """A device that sends other bytes for a range already uploaded: the part goes again
    and the object is the file as it stands at fin (last write wins, as for local exports)."""
    srv = make_server(*stream_args(seaweed, bucket))
    data = bytearray(os.urandom(2 * PART + MiB))
    key = f"{cid}/f/a.bin"
    c = FtClient(srv.mqtt_port, cid)
    try:
        send(c, "f", bytes(data), {"name": "a.bin", "size": len(data)})
        uid = wait_for("an upload", lambda: open_uploads(s3, bucket))[0]["UploadId"]
        wait_for("3 parts", lambda: len(parts_of(s3, bucket, key, uid)) == 3)
        data[SEG : 2 * SEG] = os.urandom(SEG)  # part 1 changes
        assert c.wait_ack(c.publish(f"$file/f/{SEG}", bytes(data[SEG : 2 * SEG]))) == 0
        # a part's ETag is the MD5 of its bytes: part 1 is uploaded again with the new ones
        # (SeaweedFS lists every upload of a part number, within a second of each other)
        new_etag = f'"{hashlib.md5(data[:PART]).hexdigest()}"'
        wait_for(
            "part 1 again",
            lambda: any(
                p["PartNumber"] == 1 and p["ETag"] == new_etag
                for p in s3.list_parts(Bucket=bucket, Key=key, UploadId=uid)["Parts"]
            ),
        )
        assert c.command(f"$file/f/fin/{len(data)}") == 0
    finally:
        c.close()
    assert obj_bytes(s3, bucket, key) == bytes(data)
    sha = hashlib.sha256(data).hexdigest().upper()
    assert s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"][0]["Value"] == sha


def test_fenced_by_a_newer_generation(
    seaweed: SeaweedFS, s3: Any, bucket: str, make_server: Callable[..., ServerProcess], cid: str
) -> None:
    """Another node took the transfer over (its checkpoint has generation 2): this node's
    fin neither completes nor aborts the upload."""
    srv = make_server(*stream_args(seaweed, bucket))
    data = os.urandom(2 * PART + MiB)
    key = f"{cid}/f/a.bin"
    c = FtClient(srv.mqtt_port, cid)
    try:
        send(c, "f", data, {"name": "a.bin", "size": len(data)}, range(0, PART // SEG))
        doc = wait_for(
            "a checkpoint with a part",
            lambda: (d := checkpoint(s3, bucket, cid, "f")) and d["parts"] and d,
        )
        doc.update(node="node-b", generation=2)
        s3.put_object(Bucket=bucket, Key=f"{PREFIX}{cid}/f", Body=json.dumps(doc).encode())
        send(
            c, "f", data, {"name": "a.bin", "size": len(data)}, range(PART // SEG, len(data) // SEG)
        )
        assert c.command(f"$file/f/fin/{len(data)}") == 0x80
        assert c.doc_for(f"$file/f/fin/{len(data)}")["reason_description"] == (
            "s3_transfer_taken_over"
        )
    finally:
        c.close()
    assert [u["UploadId"] for u in open_uploads(s3, bucket)] == [doc["upload_id"]]
    assert checkpoint(s3, bucket, cid, "f") == doc  # untouched
    assert "Contents" not in s3.list_objects(Bucket=bucket, Prefix=f"{cid}/")
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=doc["upload_id"])


def test_expire_at_deletes_s3_exports(
    seaweed: SeaweedFS, s3: Any, bucket: str, make_server: Callable[..., ServerProcess], cid: str
) -> None:
    srv = make_server(
        *stream_args(seaweed, bucket, **{"transfer.segments_gc_interval": "500ms"}),
    )
    soon = int(time.time()) + 8
    small, big, kept = os.urandom(1000), os.urandom(PART + 1234), os.urandom(500)
    c = FtClient(srv.mqtt_port, cid)
    try:
        for fid, data, expire in (("s", small, soon), ("b", big, soon), ("k", kept, None)):
            meta: dict[str, Any] = {"name": f"{fid}.bin", "size": len(data)}
            if expire is not None:
                meta["expire_at"] = expire
            send(c, fid, data, meta)
            assert c.command(f"$file/{fid}/fin/{len(data)}") == 0
    finally:
        c.close()
    markers = [o["Key"] for o in s3.list_objects(Bucket=bucket, Prefix=PREFIX)["Contents"]]
    assert sorted(markers) == [
        f"{PREFIX}%expire/{soon:012d}/{cid}/b/b.bin",
        f"{PREFIX}%expire/{soon:012d}/{cid}/s/s.bin",
    ]
    wait_for(
        "the expired exports deleted",
        lambda: (
            [o["Key"] for o in s3.list_objects(Bucket=bucket).get("Contents", [])]
            == [f"{cid}/k/k.bin"]
        ),
    )
    assert time.time() >= soon
    assert obj_bytes(s3, bucket, f"{cid}/k/k.bin") == kept
    # the local index forgot them too: the fileId can be used again
    c = FtClient(srv.mqtt_port, cid)
    try:
        send(c, "s", b"again", {"name": "s2.bin", "size": 5})
        assert c.command("$file/s/fin/5") == 0
    finally:
        c.close()
    assert obj_bytes(s3, bucket, f"{cid}/s/s2.bin") == b"again"


def test_killed_server_continues_its_upload_from_the_checkpoint(
    seaweed: SeaweedFS,
    s3: Any,
    bucket: str,
    make_server: Callable[..., ServerProcess],
    cid: str,
    tmp_path: Path,
) -> None:
    args = stream_args(seaweed, bucket)
    srv = make_server(*args, data=tmp_path / "data")
    data = os.urandom(3 * PART + MiB)
    meta = {"name": "a.bin", "size": len(data)}
    key = f"{cid}/f/a.bin"
    c = FtClient(srv.mqtt_port, cid)
    try:
        send(c, "f", data, meta, range(0, 2 * PART // SEG))
        doc = wait_for(
            "a checkpoint of two parts",
            lambda: (d := checkpoint(s3, bucket, cid, "f")) and len(d["parts"]) == 2 and d,
        )
    finally:
        c.close()
    srv.kill()
    srv = make_server(*args, data=tmp_path / "data")
    c = FtClient(srv.mqtt_port, cid)
    try:
        send(c, "f", data, meta, range(2 * PART // SEG, len(data) // SEG))
        wait_for(
            "the checkpoint of four parts",
            lambda: (d := checkpoint(s3, bucket, cid, "f")) and len(d["parts"]) == 4,
        )
        after = checkpoint(s3, bucket, cid, "f")
        assert after is not None
        # the same upload, continued by the same node: parts 1 and 2 were not sent again
        assert (after["upload_id"], after["generation"]) == (doc["upload_id"], 1)
        assert after["parts"][:2] == doc["parts"]
        assert c.command(f"$file/f/fin/{len(data)}") == 0
    finally:
        c.close()
    assert obj_bytes(s3, bucket, key) == data
    assert checkpoint(s3, bucket, cid, "f") is None


def test_reconnects_across_workers_continue_one_upload(
    seaweed: SeaweedFS, s3: Any, bucket: str, make_server: Callable[..., ServerProcess], cid: str
) -> None:
    """The client reconnects three times (the kernel picks a worker each time): whichever
    worker holds the transfer continues the same upload from the checkpoint."""
    srv = make_server(*stream_args(seaweed, bucket, **{"server.workers": 2}))
    data = os.urandom(5 * PART + 4321)
    meta = {"name": "a.bin", "size": len(data)}
    key = f"{cid}/f/a.bin"
    n = -(-len(data) // SEG)
    thirds = [range(0, n // 3), range(n // 3, 2 * n // 3), range(2 * n // 3, n)]
    uploads = set()
    for part_range in thirds:
        c = FtClient(srv.mqtt_port, cid)
        try:
            send(c, "f", data, meta, part_range)
            if part_range.stop < n:
                done = part_range.stop * SEG // PART
                doc = wait_for(
                    f"a checkpoint of {done} parts",
                    lambda: (
                        (d := checkpoint(s3, bucket, cid, "f"))
                        and len(d["parts"]) >= done  # noqa: B023
                        and d
                    ),
                )
                uploads.add(doc["upload_id"])
            else:
                assert c.command(f"$file/f/fin/{len(data)}") == 0
        finally:
            c.close()
    assert len(uploads) == 1
    assert obj_bytes(s3, bucket, key) == data
    assert checkpoint(s3, bucket, cid, "f") is None

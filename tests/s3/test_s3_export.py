"""S3 export end to end: real ftserver processes, a real S3 server (SeaweedFS), paho clients.

Every expected key and metadata value is written out here from the protocol's rules
(docs/protocol.md §6), not read back from ftserver's own helpers; the bucket is inspected with
botocore directly. After each test the bucket fixture checks that no multipart upload is
left open.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from s3helpers import s3_args
from seaweed import SeaweedFS, open_uploads

from ftharness import FtClient, ServerProcess
from s3faultproxy import FaultProxy

MiB = 1 << 20
SEG = 64 * 1024


def api(srv: ServerProcess, path: str) -> tuple[int, Any]:
    """GET an API path; (status, parsed JSON body)."""
    url = f"http://127.0.0.1:{srv.http_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:
        data: bytes = r.read()
        return data


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def obj_bytes(s3: Any, bucket: str, key: str) -> bytes:
    data: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def upload(
    c: FtClient,
    fid: str,
    data: bytes,
    name: str,
    *,
    segment: int = SEG,
    shuffle: bool = False,
    fin: bool = True,
) -> int:
    """init + segments (optionally in random order) [+ sync fin]; returns fin's code."""
    meta = {"name": name, "size": len(data)}
    assert c.command(f"$file/{fid}/init", json.dumps(meta)) == 0
    offsets = list(range(0, len(data), segment))
    if shuffle:
        random.Random(len(data)).shuffle(offsets)
    mids = [c.publish(f"$file/{fid}/{o}", data[o : o + segment]) for o in offsets]
    for mid in mids:
        assert c.wait_ack(mid) == 0
    if not fin:
        return 0
    return c.command(f"$file/{fid}/fin/{len(data)}")


def fin_doc(c: FtClient, fid: str, size: int) -> dict[str, Any]:
    return c.doc_for(f"$file/{fid}/fin/{size}", timeout=120)


# ------------------------------------------------------------------------------------------


def test_small_file_single_put_listing_and_presigned_uri(
    seaweed: SeaweedFS, s3: Any, bucket: str, make_server: Callable[..., ServerProcess], cid: str
) -> None:
    srv = make_server(*s3_args(seaweed, bucket, **{"server.workers": 2}))
    data = os.urandom(3000)
    c = FtClient(srv.mqtt_port, cid)
    try:
        assert upload(c, "f1", data, "report 1.bin") == 0
        assert upload(c, "f10", b"ten", "ten.txt") == 0
        # a retransmitted fin and init are answered from the local index
        assert c.command("$file/f1/fin/3000") == 0
        assert c.command("$file/f1/init", json.dumps({"name": "report 1.bin", "size": 3000})) == 0
        assert c.command("$file/f1/init", json.dumps({"name": "other.bin"})) == 0x80
        assert c.command("$file/f1/fin/2999") == 0x80
    finally:
        c.close()

    key = f"{cid}/f1/report 1.bin"
    assert obj_bytes(s3, bucket, key) == data
    head = s3.head_object(Bucket=bucket, Key=key)
    assert "-" not in head["ETag"]  # one PUT, not a multipart upload
    sha = hashlib.sha256(data).hexdigest().upper()
    assert head["Metadata"] == {
        "clientid": cid,
        "fileid": "f1",
        "filemeta": '{"name":"report 1.bin","size":3000}',
        "filemeta-vsn": "1",
        "checksum": sha,
    }
    assert head["ContentLength"] == 3000

    # per-transfer lookup is exact: f1 does not match f10
    status, body = api(srv, f"/api/v5/file_transfer/files/{q(cid)}/f1")
    assert status == 200
    [item] = body["files"]
    assert (item["clientid"], item["fileid"], item["name"], item["size"]) == (
        cid,
        "f1",
        "report 1.bin",
        3000,
    )
    assert item["metadata"]["checksum"] == sha
    assert item["metadata"]["name"] == "report 1.bin"
    assert item["timestamp"].endswith("+00:00")
    assert "X-Amz-Signature=" in item["uri"] and item["uri"].startswith(seaweed.endpoint)
    assert fetch(item["uri"]) == data
    status, body = api(srv, f"/api/v5/file_transfer/files/{q(cid)}/f")
    assert (status, body["code"]) == (404, "FILES_NOT_FOUND")

    # the listing has both; the download path redirects to a presigned URL
    status, body = api(srv, "/api/v5/file_transfer/files")
    assert status == 200 and "cursor" not in body
    assert [(f["fileid"], f["name"]) for f in body["files"]] == [
        ("f1", "report 1.bin"),
        ("f10", "ten.txt"),
    ]
    url = f"http://127.0.0.1:{srv.http_port}/api/v5/file_transfer/file?fileref={q(key)}"
    assert fetch(url) == data
    status, body = api(srv, "/api/v5/file_transfer/file?fileref=" + q(f"{cid}/f1/nope"))
    assert status == 404

    # a local-listing cursor is not an S3 cursor
    status, body = api(srv, "/api/v5/file_transfer/files?following=WyJlIiwiYSJd")
    assert status == 400

    # DELETE removes the object and the local index: the fileId can be used again
    req = urllib.request.Request(
        f"http://127.0.0.1:{srv.http_port}/api/v5/file_transfer/files/{q(cid)}/f1",
        method="DELETE",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 204
    assert "Contents" not in s3.list_objects(Bucket=bucket, Prefix=f"{cid}/f1/")
    c = FtClient(srv.mqtt_port, cid)
    try:
        assert upload(c, "f1", b"again", "other.bin") == 0
    finally:
        c.close()
    assert obj_bytes(s3, bucket, f"{cid}/f1/other.bin") == b"again"


def test_multipart_out_of_order(
    seaweed: SeaweedFS, s3: Any, bucket: str, make_server: Callable[..., ServerProcess], cid: str
) -> None:
    srv = make_server(
        *s3_args(seaweed, bucket, **{"export.part_size": "5MiB", "export.upload_concurrency": 3})
    )
    data = os.urandom(21 * MiB + 12345)  # 5 parts, the last one short
    c = FtClient(srv.mqtt_port, cid)
    try:
        assert upload(c, "big", data, "big.bin", segment=256 * 1024, shuffle=True) == 0
    finally:
        c.close()
    key = f"{cid}/big/big.bin"
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-5")  # a multipart upload of 5 parts
    assert head["ContentLength"] == len(data)
    sha = hashlib.sha256(data).hexdigest().upper()
    # streamed: the metadata was set when the upload began (EMQX's four keys), the verified
    # checksum came at fin and is the object's tag
    assert head["Metadata"] == {
        "clientid": cid,
        "fileid": "big",
        "filemeta": json.dumps({"name": "big.bin", "size": len(data)}, separators=(",", ":")),
        "filemeta-vsn": "1",
    }
    tags = s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    assert tags == [{"Key": "sha256", "Value": sha}]
    assert hashlib.sha256(obj_bytes(s3, bucket, key)).digest() == hashlib.sha256(data).digest()
    status, body = api(srv, f"/api/v5/file_transfer/files/{q(cid)}/big")
    assert status == 200
    assert body["files"][0]["metadata"]["checksum"] == sha


#: (clientId, fileId, name) -> the key docs/protocol.md §6 gives, written out by hand
NASTY = [
    ("dev/1 é", "f%1:a\\b", "nämé 文件 %20.bin", "dev%2F1 é/f%251%3Aa%5Cb/nämé 文件 %20.bin"),
    ("..", ".", ".hidden", "%2E%2E/%2E/.hidden"),
    (" lead", "tab\tx", "🚀 rocket", " lead/tab%09x/🚀 rocket"),
    ("=?UTF-8?B?eA==?=", "設備", "x", "=?UTF-8?B?eA==?=/設備/x"),
]


@pytest.mark.parametrize("case", range(len(NASTY)))
def test_unicode_and_nasty_ids(
    seaweed: SeaweedFS,
    s3: Any,
    bucket: str,
    make_server: Callable[..., ServerProcess],
    case: int,
) -> None:
    client_id, file_id, name, key = NASTY[case]
    srv = make_server(*s3_args(seaweed, bucket))
    data = f"{client_id}|{file_id}|{name}".encode()
    c = FtClient(srv.mqtt_port, client_id)
    try:
        assert upload(c, file_id, data, name) == 0
    finally:
        c.close()
    keys = [o["Key"] for o in s3.list_objects(Bucket=bucket)["Contents"]]
    assert keys == [key]
    assert obj_bytes(s3, bucket, key) == data
    md = s3.head_object(Bucket=bucket, Key=key)["Metadata"]
    # ASCII-printable ids travel raw; others as one RFC 2047 encoded word (S3's documented
    # form for non-ASCII metadata), never changed otherwise
    for header, value in (("clientid", client_id), ("fileid", file_id)):
        got = md[header]
        if value.isascii() and value.isprintable() and value == value.strip() and "=?" not in value:
            assert got == value
        else:
            assert got.startswith("=?UTF-8?B?") and got.endswith("?=")
            assert got[10:-2].encode() == base64.b64encode(value.encode())
    meta = json.loads(md["filemeta"])
    assert meta == {"name": name, "size": len(data)}
    assert md["filemeta"].isascii()
    status, body = api(srv, f"/api/v5/file_transfer/files/{q(client_id)}/{q(file_id)}")
    assert status == 200, body
    [item] = body["files"]
    assert (item["clientid"], item["fileid"], item["name"]) == (client_id, file_id, name)
    assert item["metadata"]["clientid"] == client_id
    assert item["metadata"]["fileid"] == file_id
    assert fetch(item["uri"]) == data


def test_wrong_credentials_then_right_ones(
    seaweed: SeaweedFS,
    s3: Any,
    bucket: str,
    make_server: Callable[..., ServerProcess],
    cid: str,
    tmp_path: Any,
) -> None:
    data_dir = tmp_path / "data"
    data = os.urandom(7 * MiB)  # multipart with 5 MiB parts
    extra = {"export.part_size": "5MiB"}
    srv = make_server(
        *s3_args(seaweed, bucket, **{**extra, "export.secret_access_key": "wrong-secret"}),
        data=data_dir,
    )
    c = FtClient(srv.mqtt_port, cid)
    try:
        assert upload(c, "f", data, "a.bin", fin=False) == 0
        assert c.command(f"$file/f/fin/{len(data)}") == 0x80
        doc = fin_doc(c, "f", len(data))
        assert doc["reason_description"] == "s3_signature_does_not_match"
    finally:
        c.close()
    assert srv.stop() == 0
    assert "wrong-secret" not in srv.stderr()

    srv = make_server(
        *s3_args(seaweed, bucket, **{**extra, "export.access_key_id": "NOSUCHKEY"}),
        data=data_dir,
    )
    c = FtClient(srv.mqtt_port, cid)
    try:
        assert c.command(f"$file/f/fin/{len(data)}") == 0x80
        doc = fin_doc(c, "f", len(data))
        assert doc["reason_description"] == "s3_invalid_access_key_id"
    finally:
        c.close()
    assert srv.stop() == 0

    # the transfer stayed: with the right credentials (from the AWS environment variables
    # this time) a re-sent fin exports it
    from seaweed import ACCESS_KEY, SECRET_KEY

    srv = make_server(
        *s3_args(
            seaweed,
            bucket,
            **{**extra, "export.access_key_id": None, "export.secret_access_key": None},
        ),
        data=data_dir,
        env={"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
    )
    c = FtClient(srv.mqtt_port, cid)
    try:
        assert c.command(f"$file/f/fin/{len(data)}") == 0
    finally:
        c.close()
    assert obj_bytes(s3, bucket, f"{cid}/f/a.bin") == data


def test_missing_bucket_then_created(
    seaweed: SeaweedFS, s3: Any, make_server: Callable[..., ServerProcess], cid: str
) -> None:
    name = f"ft-missing-{os.getpid()}-{random.randrange(1 << 30)}"
    srv = make_server(*s3_args(seaweed, name))
    data = os.urandom(100_000)
    c = FtClient(srv.mqtt_port, cid)
    try:
        assert upload(c, "f", data, "a.bin", fin=False) == 0
        assert c.command(f"$file/f/fin/{len(data)}") == 0x80
        assert fin_doc(c, "f", len(data))["reason_description"] == "s3_no_such_bucket"
        # the API says so too
        status, body = api(srv, "/api/v5/file_transfer/files")
        assert (status, body["code"], body["message"]) == (502, "S3_ERROR", "s3_no_such_bucket")
        s3.create_bucket(Bucket=name)
        assert c.command(f"$file/f/fin/{len(data)}") == 0
    finally:
        c.close()
    assert obj_bytes(s3, name, f"{cid}/f/a.bin") == data
    assert open_uploads(s3, name) == []


def test_s3_stopped_mid_upload_then_restarted(
    seaweed: SeaweedFS, s3: Any, bucket: str, make_server: Callable[..., ServerProcess], cid: str
) -> None:
    proxy = FaultProxy(seaweed.ports["s3.port"]).start()
    try:
        srv = make_server(
            *s3_args(
                seaweed,
                bucket,
                **{
                    "export.endpoint": f"http://127.0.0.1:{proxy.port}",
                    "export.part_size": "5MiB",
                    "export.upload_concurrency": 2,
                },
            )
        )
        data = os.urandom(26 * MiB)
        c = FtClient(srv.mqtt_port, cid)
        try:
            # parts are uploaded while the file arrives: a few go through, then S3 stops
            # answering (the segments are acknowledged all the same: they are on disk)
            proxy.hold_after(12 * MiB)
            assert upload(c, "f", data, "a.bin", segment=256 * 1024, fin=False) == 0
            assert proxy.held.wait(120)
            assert len(open_uploads(s3, bucket)) == 1  # the multipart upload is open
            seaweed.stop(kill=True)
            proxy.cut()
            mid = c.publish(f"$file/f/fin/{len(data)}")
            assert c.wait_ack(mid, timeout=120) == 0x97  # S3 away: wait, send the fin again
            assert fin_doc(c, "f", len(data))["reason_description"] == "s3_unavailable"
            seaweed.start(buckets=[bucket])
            # the upload left open while S3 was down is aborted when the fin is re-sent,
            # which uploads the whole file
            assert c.wait_ack(c.publish(f"$file/f/fin/{len(data)}"), timeout=120) == 0
        finally:
            c.close()
    finally:
        proxy.close()
    key = f"{cid}/f/a.bin"
    assert hashlib.sha256(obj_bytes(s3, bucket, key)).digest() == hashlib.sha256(data).digest()
    assert open_uploads(s3, bucket) == []
    # nor a checkpoint: only the object is left
    assert [o["Key"] for o in s3.list_objects(Bucket=bucket)["Contents"]] == [key]


def test_listing_pages_across_the_1000_key_boundary(
    seaweed: SeaweedFS, s3: Any, bucket: str, make_server: Callable[..., ServerProcess]
) -> None:
    # objects laid out as ftserver writes them, put straight into the bucket
    keys = [f"dev-{i % 7}/file-{i:04d}/n{i}.bin" for i in range(1005)]

    def put(key: str) -> None:
        cid_, fid, name = key.split("/")
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=key.encode(),
            Metadata={
                "clientid": cid_,
                "fileid": fid,
                "filemeta": json.dumps({"name": name}, separators=(",", ":")),
                "filemeta-vsn": "1",
            },
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, keys))
    # objects outside the layout are not listed
    for other in ("README", "a/b", "a/b/c/d", "x//y", "%zz/f/n"):
        s3.put_object(Bucket=bucket, Key=other, Body=b"-")
    expected = sorted(keys)

    srv = make_server(*s3_args(seaweed, bucket))
    for limit in (10000, 1000, 999, 400):
        got: list[str] = []
        cursor = None
        pages = 0
        while True:
            path = f"/api/v5/file_transfer/files?limit={limit}"
            if cursor is not None:
                path += f"&following={cursor}"
            status, body = api(srv, path)
            assert status == 200, body
            pages += 1
            got += [f"{f['clientid']}/{f['fileid']}/{f['name']}" for f in body["files"]]
            assert len(body["files"]) <= limit
            cursor = body.get("cursor")
            if cursor is None:
                break
            assert len(body["files"]) == limit
        assert got == expected, limit
        assert pages == -(-1005 // limit)
    status, body = api(srv, "/api/v5/file_transfer/files?limit=2")
    first = body["files"][0]
    assert first["metadata"] == {
        "name": first["name"],
        "clientid": first["clientid"],
        "fileid": first["fileid"],
        "exported_at": first["metadata"]["exported_at"],
    }
    assert fetch(first["uri"]) == f"{first['clientid']}/{first['fileid']}/{first['name']}".encode()
    status, body = api(srv, "/api/v5/file_transfer/files?following=nonsense")
    assert status == 400

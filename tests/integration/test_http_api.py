"""The HTTP API (docs/protocol.md §7, docs/http-api.md) against a real ftserver process.

Files are uploaded with paho (FtClient) where the point is the whole path, and written into
the exports tree directly where the point is the listing itself (many files, odd ids, damaged
or hostile trees). Requests go through http.client, which sends the target exactly as given
(no normalisation of "%2E%2E" or "/../"), so the server's own decoding is what is tested.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import pytest
from aiohttp import web

from ftharness import FtClient, ServerProcess, find_export, read_manifest
from ftserver.config import Config, ConfigError, load_config
from ftserver.export.layout import MANIFEST_SUFFIX, export_dir_parts, manifest_bytes
from ftserver.http.api import ApiContext, build_app
from ftserver.http.openapi import OPENAPI
from ftserver.meta import FileMeta
from ftserver.names import esc

API = "/api/v5/file_transfer"
TOKEN = "0123456789abcdef0123456789abcdef"


@dataclass
class Resp:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    port: int, target: str, method: str = "GET", headers: dict[str, str] | None = None
) -> Resp:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, target, headers=headers or {})
        r = conn.getresponse()
        return Resp(r.status, r.headers, r.read())
    finally:
        conn.close()


def get_json(port: int, target: str, status: int = 200, **kw: Any) -> Any:
    r = call(port, target, **kw)
    assert r.status == status, (r.status, r.body)
    assert r.headers["Content-Type"].startswith("application/json")
    return r.json()


def seg(s: str) -> str:
    """One percent-encoded path segment ("/" as %2F, non-ASCII as UTF-8 bytes)."""
    return quote(s, safe="")


def transfer_dir(exports: Path, cid: str, fid: str) -> Path:
    return exports.joinpath(*export_dir_parts(cid, fid), esc(cid), esc(fid))


def make_export(
    exports: Path,
    cid: str,
    fid: str,
    name: str,
    data: bytes = b"data",
    *,
    expire_at: int | None = None,
    exported_at: int | None = 1_700_000_000,
    manifest: bytes | None = None,
) -> Path:
    """An export as the local exporter leaves it: the file, then its manifest."""
    d = transfer_dir(exports, cid, fid)
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)
    if manifest is None:
        extra: dict[str, Any] = {"clientid": cid, "fileid": fid}
        if exported_at is not None:
            extra["exported_at"] = exported_at
        meta = FileMeta(name=name, size=len(data), expire_at=expire_at)
        manifest = manifest_bytes(meta, hashlib.sha256(data).hexdigest(), extra)
    (d / (name + MANIFEST_SUFFIX)).write_bytes(manifest)
    return d / name


def key_of(cid: str, fid: str, name: str) -> tuple[str, ...]:
    return (*export_dir_parts(cid, fid), esc(cid), esc(fid), name)


def fileref_of(uri: str) -> str:
    parts = urlsplit(uri)
    assert parts.path == f"{API}/file"
    return parse_qs(parts.query, strict_parsing=True)["fileref"][0]


def list_all(port: int, limit: int, headers: dict[str, str] | None = None) -> list[Any]:
    files: list[Any] = []
    target = f"{API}/files?limit={limit}"
    for _ in range(1000):
        page = get_json(port, target, headers=headers)
        assert len(page["files"]) <= limit
        files += page["files"]
        if "cursor" not in page:
            return files
        target = f"{API}/files?limit={limit}&following={page['cursor']}"
    raise AssertionError("paging did not end")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of this module's own (per-transfer tests, downloads, deletes)."""
    srv = ServerProcess(tmp_path_factory.mktemp("api") / "data", "--workers", "1").start()
    yield srv
    assert srv.stop() == 0, srv.stderr()
    assert "Traceback" not in srv.stderr()


@pytest.fixture
def fresh(make_server: Callable[..., ServerProcess]) -> ServerProcess:
    """A server with an empty data directory, for tests that list everything."""
    return make_server("--workers", "1")


# ------------------------------------------------------------------------------------------
# listing


def test_uploaded_file_is_listed_and_downloadable(fresh: ServerProcess) -> None:
    cid, fid, name = "dev/1 é", "f:1", ".hidden file+x"
    data = os.urandom(20_000)
    c = FtClient(fresh.mqtt_port, cid)
    try:
        assert c.upload(fid, data, name=name, segment=4096) == 0
    finally:
        c.close()
    manifest = read_manifest(find_export(fresh.exports, cid, fid, name))

    page = get_json(fresh.http_port, f"{API}/files")
    assert "cursor" not in page
    [item] = page["files"]
    assert set(item) == {"clientid", "fileid", "name", "size", "timestamp", "uri", "metadata"}
    assert item["clientid"] == cid and item["fileid"] == fid and item["name"] == name
    assert item["size"] == 20_000
    exported = datetime.fromtimestamp(manifest["exported_at"], UTC)
    assert datetime.fromisoformat(item["timestamp"]) == exported
    assert item["metadata"] == manifest
    assert item["metadata"]["checksum"] == hashlib.sha256(data).hexdigest().upper()
    # EMQX's form: /api/v5/file_transfer/file?node=...&fileref=<path below the exports root>
    assert item["uri"].startswith(f"{API}/file?node=")
    assert fileref_of(item["uri"]) == "/".join(key_of(cid, fid, name))
    assert "/" not in urlsplit(item["uri"]).query  # percent-encoded

    r = call(fresh.http_port, item["uri"])
    assert r.status == 200 and r.body == data
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Length"] == "20000"
    assert r.headers["Content-Disposition"].startswith("attachment;")
    assert "filename*=UTF-8''.hidden%20file%2Bx" in r.headers["Content-Disposition"]

    same = get_json(fresh.http_port, f"{API}/files/{seg(cid)}/{seg(fid)}")
    assert same == {"files": [item]}


def test_paging_is_stable_across_inserts_and_deletes(fresh: ServerProcess) -> None:
    exports = fresh.exports
    made = [(f"pg-{i:02d}", f"file-{i}", "n.bin") for i in range(23)]
    # one transfer holding three files: paging must not skip any of them
    made += [("pg-multi", "m", n) for n in ("a", "b", "c")]
    for cid, fid, name in made:
        make_export(exports, cid, fid, name, f"{cid}/{fid}/{name}".encode())
    order = sorted(made, key=lambda t: key_of(*t))

    first = get_json(fresh.http_port, f"{API}/files?limit=7")
    assert [(f["clientid"], f["fileid"], f["name"]) for f in first["files"]] == order[:7]
    cursor = first["cursor"]
    last_key = key_of(*order[6])

    # between pages: one export sorting before the cursor, one after, one after removed
    before = next(
        (f"ins-{i}", "x", "n") for i in range(1000) if key_of(f"ins-{i}", "x", "n") < last_key
    )
    after = next(
        (f"ins-{i}", "y", "n")
        for i in range(1000)
        if key_of(f"ins-{i}", "y", "n") > key_of(*order[10])
    )
    for t in (before, after):
        make_export(exports, *t)
    gone = order[8]
    shutil.rmtree(transfer_dir(exports, gone[0], gone[1]))

    rest: list[Any] = []
    target = f"{API}/files?limit=7&following={cursor}"
    while True:
        page = get_json(fresh.http_port, target)
        rest += page["files"]
        if "cursor" not in page:
            break
        assert len(page["files"]) == 7
        target = f"{API}/files?limit=7&following={page['cursor']}"
    expected = sorted([t for t in order[7:] if t != gone] + [after], key=lambda t: key_of(*t))
    assert [(f["clientid"], f["fileid"], f["name"]) for f in rest] == expected
    assert before not in [(f["clientid"], f["fileid"], f["name"]) for f in rest]

    # the full list in one page equals the concatenation of small pages
    everything = get_json(fresh.http_port, f"{API}/files?limit=10000")
    assert "cursor" not in everything
    assert list_all(fresh.http_port, 4) == everything["files"]
    assert len(everything["files"]) == len(made) + 2 - 1


def test_last_full_page_has_no_cursor(fresh: ServerProcess) -> None:
    for i in range(4):
        make_export(fresh.exports, f"full-{i}", "f", "n")
    page = get_json(fresh.http_port, f"{API}/files?limit=4")
    assert len(page["files"]) == 4 and "cursor" not in page
    page = get_json(fresh.http_port, f"{API}/files?limit=3")
    assert len(page["files"]) == 3 and "cursor" in page
    nxt = get_json(fresh.http_port, f"{API}/files?limit=3&following={page['cursor']}")
    assert len(nxt["files"]) == 1 and "cursor" not in nxt


def test_listing_skips_incomplete_and_foreign_entries(fresh: ServerProcess) -> None:
    exports = fresh.exports
    ok = make_export(exports, "ok", "f", "good")
    d = ok.parent
    (d / "in-progress").write_bytes(b"no manifest yet")
    (d / ".ftserver-0123abcd.tmp").write_bytes(b"half a manifest")
    (d / ".ftserver-0123abcd.part").write_bytes(b"a copy")
    (d / "lost" / "x").parent.mkdir()  # a directory below a transfer is not an export
    (d / "orphan.MANIFEST.json").write_bytes(b'["filemeta",1,{"name":"orphan"}]')
    (exports / "tmp").mkdir()  # EMQX keeps temporary files here
    (exports / "tmp" / "1.f").write_bytes(b"tmp")
    damaged = make_export(exports, "damaged", "f", "d", manifest=b"{not json")
    files = get_json(fresh.http_port, f"{API}/files")["files"]
    by_name = {f["name"]: f for f in files}
    assert set(by_name) == {"good", "d"}
    # a damaged manifest hides only the metadata: the file is complete and downloadable
    assert by_name["d"]["metadata"] == {} and by_name["d"]["clientid"] == "damaged"
    assert (
        by_name["d"]["timestamp"]
        == datetime.fromtimestamp(int(damaged.stat().st_mtime), UTC).isoformat()
    )
    assert call(fresh.http_port, by_name["d"]["uri"]).body == b"data"


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=10001",
        "limit=-1",
        "limit=abc",
        "limit=",
        "limit=1.5",
        "limit=%EF%BC%91",  # a fullwidth digit
        "limit=" + "9" * 5000,
        "following=",
        "following=!!!",
        "following=" + base64.urlsafe_b64encode(b"not json").decode(),
        "following=" + base64.urlsafe_b64encode(b'["e","a"]').decode(),
        "following=" + base64.urlsafe_b64encode(b'["t","a","b","c"]').decode(),
        "following=" + base64.urlsafe_b64encode(b'["e","","","","","",""]').decode(),
        "following=" + base64.urlsafe_b64encode(b'{"e": 1}').decode(),
    ],
)
def test_bad_limit_or_cursor(api: ServerProcess, query: str) -> None:
    body = get_json(api.http_port, f"{API}/files?{query}", status=400)
    assert body["code"] == "BAD_REQUEST" and body["message"]


def test_limit_bounds_accepted(api: ServerProcess) -> None:
    for limit in ("1", "10000", "007"):
        assert "files" in get_json(api.http_port, f"{API}/files?limit={limit}")


# ------------------------------------------------------------------------------------------
# one transfer


@pytest.mark.parametrize(
    ("cid", "fid"),
    [
        ("设备-1", "文件 😀"),
        ("dev/../../etc", "a/b/../c"),
        ("..", "."),
        ("%2F", "%"),
        ("x:y\\z", "?#&="),
    ],
)
def test_transfer_lookup_with_odd_ids(api: ServerProcess, cid: str, fid: str) -> None:
    make_export(api.exports, cid, fid, "odd.bin", b"odd " + cid.encode())
    body = get_json(api.http_port, f"{API}/files/{seg(cid)}/{seg(fid)}")
    [item] = body["files"]
    assert (item["clientid"], item["fileid"], item["name"]) == (cid, fid, "odd.bin")
    r = call(api.http_port, item["uri"])
    assert r.status == 200 and r.body == b"odd " + cid.encode()


def test_transfer_lookup_not_found(api: ServerProcess) -> None:
    make_export(api.exports, "nf-client", "f10", "n")
    for cid, fid in (("nf-client", "f1"), ("nf-client", "f100"), ("nobody", "f10")):
        body = get_json(api.http_port, f"{API}/files/{seg(cid)}/{seg(fid)}", status=404)
        assert body["code"] == "FILES_NOT_FOUND"
    assert get_json(api.http_port, f"{API}/files/nf-client/f10")["files"][0]["fileid"] == "f10"
    # a manifest without its file is no export
    d = make_export(api.exports, "nf-client", "nofile", "n").parent
    (d / "n").unlink()
    assert get_json(api.http_port, f"{API}/files/nf-client/nofile", status=404)


def test_unknown_route_and_method_are_json(api: ServerProcess) -> None:
    body = get_json(api.http_port, f"{API}/nothing", status=404)
    assert body["code"] == "NOT_FOUND"
    r = call(api.http_port, f"{API}/files", method="POST")
    assert r.status == 405 and r.json()["code"] == "METHOD_NOT_ALLOWED"
    assert "GET" in r.headers["Allow"]


# ------------------------------------------------------------------------------------------
# download


def _uri(port: int, cid: str, fid: str) -> str:
    [item] = get_json(port, f"{API}/files/{seg(cid)}/{seg(fid)}")["files"]
    uri: str = item["uri"]
    return uri


def test_download_ranges(api: ServerProcess) -> None:
    data = os.urandom(10_000)
    make_export(api.exports, "range-client", "r", "r.bin", data)
    uri = _uri(api.http_port, "range-client", "r")
    r = call(api.http_port, uri, headers={"Range": "bytes=100-199"})
    assert r.status == 206 and r.body == data[100:200]
    assert r.headers["Content-Range"] == "bytes 100-199/10000"
    r = call(api.http_port, uri, headers={"Range": "bytes=-10"})
    assert r.status == 206 and r.body == data[-10:]
    r = call(api.http_port, uri, headers={"Range": "bytes=9990-"})
    assert r.status == 206 and r.body == data[9990:]
    r = call(api.http_port, uri, headers={"Range": "bytes=10000-"})
    assert r.status == 416
    assert r.headers["Content-Range"] == "bytes */10000"
    r = call(api.http_port, uri, method="HEAD")
    assert r.status == 200 and r.body == b"" and r.headers["Content-Length"] == "10000"
    # a conditional request with the ETag it got
    etag = call(api.http_port, uri).headers["ETag"]
    assert call(api.http_port, uri, headers={"If-None-Match": etag}).status == 304


def test_download_serves_exactly_the_file_not_a_compressed_sibling(api: ServerProcess) -> None:
    make_export(api.exports, "gz-client", "g", "log.txt", b"plain text")
    make_export(api.exports, "gz-client", "g", "log.txt.gz", b"not really gzip")
    uri = next(
        f["uri"]
        for f in get_json(api.http_port, f"{API}/files/gz-client/g")["files"]
        if f["name"] == "log.txt"
    )
    r = call(api.http_port, uri, headers={"Accept-Encoding": "gzip, br"})
    assert r.status == 200 and r.body == b"plain text"
    assert "Content-Encoding" not in r.headers


def test_download_any_node_name(api: ServerProcess) -> None:
    make_export(api.exports, "node-client", "n", "n.bin", b"node")
    ref = quote(fileref_of(_uri(api.http_port, "node-client", "n")), safe="")
    assert call(api.http_port, f"{API}/file?fileref={ref}").body == b"node"
    assert call(api.http_port, f"{API}/file?node=emqx%40other&fileref={ref}").body == b"node"


def test_download_refuses_traversal(api: ServerProcess, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"secret")
    good = make_export(api.exports, "trav-client", "t", "t.bin", b"inside")
    rel = good.relative_to(api.exports).as_posix()
    d = good.parent
    # a symlink inside the tree (with a manifest beside it) pointing outside
    (d / "evil").symlink_to(secret)
    (d / ("evil" + MANIFEST_SUFFIX)).write_bytes(b'["filemeta",1,{"name":"evil"}]')
    (d.parent / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    (d / "pending").write_bytes(b"no manifest")
    (d / ".ftserver-00ff.part").write_bytes(b"temp")
    staging_meta = os.path.relpath(api.data_dir / "staging", api.exports)
    assert call(api.http_port, f"{API}/file?fileref={quote(rel, safe='')}").body == b"inside"
    refused = [
        "",
        "/",
        str(good),  # absolute, although it names the file
        str(secret),
        "../" + "x",
        f"{rel}/..",
        rel.replace("/t/", "/t/../t/"),
        rel.replace("/t/", "/t/./"),
        rel.replace("/t/", "//t/"),
        f"{rel}/",
        "../../" + str(secret).lstrip("/"),
        os.path.relpath(secret, api.exports),
        str(d.relative_to(api.exports) / "evil"),
        str(d.parent.relative_to(api.exports) / "linkdir" / "secret.txt"),
        str(d.relative_to(api.exports) / "pending"),
        str(d.relative_to(api.exports) / ".ftserver-00ff.part"),
        str(d.relative_to(api.exports)),  # a directory
        staging_meta,
        "nonexistent/file",
        f"{rel}\x00",
    ]
    for ref in refused:
        r = call(api.http_port, f"{API}/file?fileref={quote(ref, safe='')}")
        assert r.status == 404, (ref, r.status, r.body)
        assert r.json()["code"] == "NOT_FOUND"
        assert b"secret" not in r.body
    # percent-encoded dots decode to a real ".." component: refused too
    target = rel.split("/", 1)[0] + "/%2E%2E/" + rel.split("/", 1)[0]
    assert call(api.http_port, f"{API}/file?fileref={target}").status == 404
    assert call(api.http_port, f"{API}/file?fileref=%2e%2e%2f%2e%2e%2fetc%2fpasswd").status == 404
    # a literal "%2E%2E" is a legal directory name (esc("..")), not a parent reference
    make_export(api.exports, "..", "dots", "d", b"dot-dot")
    assert call(api.http_port, _uri(api.http_port, "..", "dots")).body == b"dot-dot"
    # the manifest itself may be fetched, as with EMQX
    man = call(api.http_port, f"{API}/file?fileref={quote(rel + MANIFEST_SUFFIX, safe='')}")
    assert man.status == 200 and json.loads(man.body)[0] == "filemeta"


def test_download_missing_fileref_is_400(api: ServerProcess) -> None:
    body = get_json(api.http_port, f"{API}/file", status=400)
    assert body["code"] == "BAD_REQUEST" and "fileref" in body["message"]
    assert get_json(api.http_port, f"{API}/file?node=x", status=400)["code"] == "BAD_REQUEST"


# ------------------------------------------------------------------------------------------
# delete


def test_delete_transfer(api: ServerProcess) -> None:
    cid, fid = "del/client", "del-f"
    path = make_export(api.exports, cid, fid, "gone.bin")
    uri = _uri(api.http_port, cid, fid)
    b1 = api.exports / path.relative_to(api.exports).parts[0]
    neighbour = make_export(api.exports, cid, "keep", "kept.bin")
    r = call(api.http_port, f"{API}/files/{seg(cid)}/{seg(fid)}", method="DELETE")
    assert r.status == 204 and r.body == b""
    assert not path.exists() and not path.parent.exists()
    assert neighbour.exists()
    if not any(b1.rglob("*")):
        assert not b1.exists()  # empty parents are pruned
    assert api.exports.is_dir()
    assert get_json(api.http_port, f"{API}/files/{seg(cid)}/{seg(fid)}", status=404)
    assert call(api.http_port, uri).status == 404
    r = call(api.http_port, f"{API}/files/{seg(cid)}/{seg(fid)}", method="DELETE")
    assert r.status == 404 and r.json()["code"] == "FILES_NOT_FOUND"


def test_delete_removes_all_files_and_prunes_every_empty_parent(fresh: ServerProcess) -> None:
    for name in ("a", "b"):
        make_export(fresh.exports, "solo", "f", name)
    r = call(fresh.http_port, f"{API}/files/solo/f", method="DELETE")
    assert r.status == 204
    assert fresh.exports.is_dir() and list(fresh.exports.iterdir()) == []


# ------------------------------------------------------------------------------------------
# transfers in progress


def test_transfers_in_progress(fresh: ServerProcess) -> None:
    data = os.urandom(64 * 1024)
    c = FtClient(fresh.mqtt_port, "up/loader")
    try:
        meta = {"name": "half.bin", "size": len(data)}
        assert c.command("$file/half/init", json.dumps(meta)) == 0
        for off in range(0, len(data) // 2, 8192):
            assert c.command(f"$file/half/{off}", data[off : off + 8192]) == 0
        # overlapping segment: each byte counts once
        assert c.command("$file/half/4096", data[4096 : 4096 + 8192]) == 0
        # a transfer that has segments but no init yet
        assert c.command("$file/noinit/1000", b"z" * 500) == 0
        started = time.time()
        body = get_json(fresh.http_port, f"{API}/transfers")
        assert "cursor" not in body
        by_fid = {t["fileid"]: t for t in body["transfers"]}
        assert set(by_fid) == {"half", "noinit"}
        half = by_fid["half"]
        assert half["clientid"] == "up/loader" and half["name"] == "half.bin"
        assert half["expected_size"] == len(data)
        assert half["bytes_received"] == len(data) // 2
        activity = datetime.fromisoformat(half["last_activity"]).timestamp()
        assert started - 60 < activity <= started + 1
        noinit = by_fid["noinit"]
        assert noinit["name"] is None and noinit["expected_size"] is None
        assert noinit["bytes_received"] == 500

        page = get_json(fresh.http_port, f"{API}/transfers?limit=1")
        assert len(page["transfers"]) == 1
        nxt = get_json(fresh.http_port, f"{API}/transfers?limit=1&following={page['cursor']}")
        assert "cursor" not in nxt
        assert {page["transfers"][0]["fileid"], nxt["transfers"][0]["fileid"]} == set(by_fid)
        assert get_json(fresh.http_port, f"{API}/transfers?limit=0", status=400)
        # a files cursor is no transfers cursor
        cursor = base64.urlsafe_b64encode(b'["e","A","B","C","D","E","F"]').decode()
        assert get_json(fresh.http_port, f"{API}/transfers?following={cursor}", status=400)

        # the rest arrives: the transfer leaves the list, the file appears
        for off in range(len(data) // 2, len(data), 8192):
            assert c.command(f"$file/half/{off}", data[off : off + 8192]) == 0
        assert c.command(f"$file/half/fin/{len(data)}") == 0
        left = get_json(fresh.http_port, f"{API}/transfers")["transfers"]
        assert [t["fileid"] for t in left] == ["noinit"]
        got = get_json(fresh.http_port, f"{API}/files/up%2Floader/half")["files"]
        assert [f["size"] for f in got] == [len(data)]
    finally:
        c.close()


# ------------------------------------------------------------------------------------------
# health


def test_healthz_and_readyz(api: ServerProcess) -> None:
    assert get_json(api.http_port, "/healthz") == {"status": "ok"}
    assert get_json(api.http_port, "/readyz") == {"status": "ok"}
    assert not [p for p in api.data_dir.iterdir() if p.name.startswith(".ftserver-ready")]


# ------------------------------------------------------------------------------------------
# bearer token


def test_bearer_token(make_server: Callable[..., ServerProcess]) -> None:
    srv = make_server("--workers", "1", "--set", f"http.token={TOKEN}")
    make_export(srv.exports, "tok", "f", "n", b"tok")
    port = srv.http_port
    good = {"Authorization": f"Bearer {TOKEN}"}
    for target in (f"{API}/files", f"{API}/files/tok/f", f"{API}/transfers", f"{API}/nope"):
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": TOKEN},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": f"Bearer {TOKEN[:-1]}"},
        ):
            r = call(port, target, headers=headers)
            assert r.status == 401, (target, headers)
            assert r.json()["code"] == "UNAUTHORIZED"
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = call(port, f"{API}/files/tok/f", method="DELETE")
    assert r.status == 401 and (srv.exports / "/".join(key_of("tok", "f", "n"))).exists()
    [item] = get_json(port, f"{API}/files", headers=good)["files"]
    assert call(port, item["uri"]).status == 401
    assert call(port, item["uri"], headers=good).body == b"tok"
    assert call(port, item["uri"], headers={"authorization": f"bearer {TOKEN}"}).body == b"tok"
    assert call(port, "/api/v5/openapi.json").status == 401
    assert call(port, "/api/v5/openapi.json", headers=good).status == 200
    # health stays open, also behind a path that only looks like the API
    assert get_json(port, "/healthz") == {"status": "ok"}
    assert get_json(port, "/readyz") == {"status": "ok"}
    assert call(port, "/metrics").status == 200  # scrapers need no token
    sneaky = call(port, "/healthz/../api/v5/file_transfer/files")
    assert sneaky.status == 404 and b"tok" not in sneaky.body
    assert call(port, "/api/v5/../healthz").status == 401


def test_non_loopback_listen_needs_a_token() -> None:
    for listen in ("0.0.0.0:18083", "[::]:18083", "192.0.2.10:80", "api.example.com:8080"):
        with pytest.raises(ConfigError) as info:
            load_config(None, {"http.listen": listen})
        message = str(info.value)
        assert message.startswith("http.token:"), message
        assert "http.allow_anonymous" in message and "Bearer" in message
        assert load_config(None, {"http.listen": listen, "http.token": TOKEN}).http.token == TOKEN
        anon = load_config(None, {"http.listen": listen, "http.allow_anonymous": "true"})
        assert anon.http.allow_anonymous is True and anon.http.token == ""
    for listen in ("127.0.0.1:0", "127.1.2.3:80", "[::1]:18083", "localhost:18083"):
        assert load_config(None, {"http.listen": listen}).http.token == ""


def test_token_rules(tmp_path: Path) -> None:
    for bad in ("short", "x" * 15, "has space in the middle!!", "é" * 20, "tab\tinside-the-token"):
        with pytest.raises(ConfigError, match=r"^http\.token: must be at least 16"):
            load_config(None, {"http.token": bad})
    path = tmp_path / "ftserver.toml"
    path.write_text(f'[http]\nlisten = "0.0.0.0:1"\ntoken = "{TOKEN}"\n', encoding="utf-8")
    config = load_config(path, {})
    assert config.http.token == TOKEN and config.http.allow_anonymous is False
    assert TOKEN not in repr(config)  # a secret stays out of logs
    with pytest.raises(ConfigError, match=r"^http\.allow_anonymous: expected true or false"):
        load_config(None, {"http.allow_anonymous": "yes"})
    with pytest.raises(ConfigError, match=r"^http\.token: expected a string"):
        load_config(None, {"http.token": 12345678901234567})


# ------------------------------------------------------------------------------------------
# the application in this process: OpenAPI coverage, readiness failures


def _routes(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        out.add((resource.canonical, route.method.lower()))
    return out


def test_openapi_describes_exactly_the_routes(tmp_path: Path) -> None:
    app = build_app(ApiContext(Config(), tmp_path))
    described = {
        (path, method)
        for path, ops in OPENAPI["paths"].items()
        for method in ops
        if method in ("get", "put", "post", "delete", "head", "patch", "options")
    }
    assert _routes(app) == described
    assert len(described) == 10
    json.dumps(OPENAPI)  # serialisable
    # every $ref points at something that exists
    refs = re.findall(r'"\$ref": "#/components/(\w+)/(\w+)"', json.dumps(OPENAPI))
    assert refs
    for section, name in refs:
        assert name in OPENAPI["components"][section], (section, name)


def test_openapi_served(api: ServerProcess) -> None:
    assert get_json(api.http_port, "/api/v5/openapi.json") == json.loads(json.dumps(OPENAPI))


async def _with_app(ctx: ApiContext, requests: list[str]) -> list[tuple[int, dict[str, Any]]]:
    app = build_app(ctx)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        out = []
        async with aiohttp.ClientSession() as session:
            for path in requests:
                async with session.get(f"http://127.0.0.1:{port}{path}") as r:
                    out.append((r.status, await r.json()))
        return out
    finally:
        await runner.cleanup()


def test_readyz_reports_why(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    ok = asyncio.run(_with_app(ApiContext(Config(), data), ["/readyz", "/healthz"]))
    assert ok == [(200, {"status": "ok"}), (200, {"status": "ok"})]
    assert list(data.iterdir()) == []  # the probe file is gone

    workers_down = ApiContext(Config(), data, workers_ready=lambda: False)
    [(status, body)] = asyncio.run(_with_app(workers_down, ["/readyz"]))
    assert status == 503 and body["status"] == "unavailable"
    assert "worker" in body["reason"]

    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    results = asyncio.run(_with_app(ApiContext(Config(), not_a_dir), ["/readyz", "/healthz"]))
    (status, body), (hstatus, hbody) = results
    assert status == 503 and body["status"] == "unavailable"
    assert str(not_a_dir) in body["reason"] and "not writable" in body["reason"]
    assert (hstatus, hbody) == (200, {"status": "ok"})  # liveness is not readiness


def test_deleted_export_is_forgotten_by_the_server(server: ServerProcess) -> None:
    """After DELETE, a retransmitted fin no longer reports the deleted file as exported."""
    import urllib.request

    cid = "del-then-fin"
    c = FtClient(server.mqtt_port, cid)
    assert c.command("$file/f/init", json.dumps({"name": "d.txt"})) == 0
    assert c.command("$file/f/0", b"abc") == 0
    assert c.command("$file/f/fin/3") == 0
    assert c.command("$file/f/fin/3") == 0  # cached export: idempotent success
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}/api/v5/file_transfer/files/{cid}/f",
        method="DELETE",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 204
    assert c.command("$file/f/fin/3") == 0x80  # nothing staged, no export: incomplete
    docs = [c.doc_for("$file/f/fin/3") for _ in range(3)]
    assert [d["reason_description"] for d in docs] == ["success", "success", "incomplete"]
    c.close()

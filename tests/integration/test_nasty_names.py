"""Hostile and unusual client ids, file ids and names stay inside the exports root, in
EMQX's layout, byte-identical."""

from __future__ import annotations

import json
import os

import pytest

from ftharness import FtClient, ServerProcess, find_export, read_manifest

NAMES = [
    ".hidden",
    "%2F..%2Fetc",
    "100% sure.txt",
    "日本語のファイル名.csv",
    "camera 😀 shot.jpg",
    "x" * 240,
    "é" * 120,  # 240 bytes of UTF-8
    "...",
    "-rf",
]

IDS = [
    ("dev/../../etc", "file/../../passwd"),
    (".", ".."),
    ("..", "."),
    ("%2e%2e", "%"),
    ("client:with:colons", "back\\slash"),
    ("设备-1", "文件"),
    ("emoji-😀", "id 😀 with spaces"),
]


@pytest.mark.parametrize("name", NAMES)
def test_names(server: ServerProcess, cid: str, name: str) -> None:
    c = FtClient(server.mqtt_port, cid)
    data = os.urandom(3000)
    try:
        assert c.upload("n", data, name=name, segment=1000) == 0
    finally:
        c.close()
    path = find_export(server.exports, cid, "n", name)
    assert path.name == name
    assert path.resolve().is_relative_to(server.exports.resolve())
    assert path.read_bytes() == data
    assert read_manifest(path)["name"] == name


@pytest.mark.parametrize(("client_id", "file_id"), IDS)
def test_ids(server: ServerProcess, client_id: str, file_id: str) -> None:
    c = FtClient(server.mqtt_port, client_id, subscribe=False)
    data = b"payload-" + client_id.encode() + b"/" + file_id.encode()
    try:
        # "/" in a fileId would split the topic: such ids reach the server escaped by nobody,
        # so they simply make a different command; we only send ids without "/" as fileIds
        fid = file_id.replace("/", "_")
        assert c.command(f"$file/{fid}/init", json.dumps({"name": "f"})) == 0
        assert c.command(f"$file/{fid}/0", data) == 0
        assert c.command(f"$file/{fid}/fin/{len(data)}") == 0
    finally:
        c.close()
    path = find_export(server.exports, client_id, fid, "f")
    assert path.resolve().is_relative_to(server.exports.resolve())
    assert path.read_bytes() == data
    manifest = read_manifest(path)
    assert manifest["clientid"] == client_id and manifest["fileid"] == fid
    staging = (server.data_dir / "staging").resolve()
    for p in staging.rglob("*"):
        assert p.resolve().is_relative_to(staging)


def test_long_file_id_limit(server: ServerProcess, cid: str) -> None:
    c = FtClient(server.mqtt_port, cid)
    try:
        ok = "a" * 255
        assert c.command(f"$file/{ok}/init", json.dumps({"name": "f"})) == 0
        too_long = "%" * 86  # escapes to 258 bytes
        assert c.command(f"$file/{too_long}/init", json.dumps({"name": "f"})) == 0x80
        assert c.doc_for(f"$file/{too_long}/init")["reason_description"] == "invalid_fileid"
    finally:
        c.close()

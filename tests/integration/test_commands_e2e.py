"""Every command and every malformed topic/payload of docs/protocol.md §2–§3, over the wire, with
its exact reason code and description (PUBACK and response document)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator

import pytest

from ftharness import FtClient, ServerProcess, find_export, read_manifest

SHA_A = hashlib.sha256(b"A" * 10).hexdigest()


@pytest.fixture
def client(server: ServerProcess, cid: str) -> Iterator[FtClient]:
    c = FtClient(server.mqtt_port, cid)
    yield c
    c.close()


def check(c: FtClient, topic: str, payload: bytes | str, code: int, desc: str) -> dict:  # type: ignore[type-arg]
    assert c.command(topic, payload) == code, topic
    doc = c.doc_for(topic)
    assert doc["reason_code"] == code, doc
    assert doc["reason_description"] == desc, doc
    assert doc["vsn"] == "0.1"
    return doc


@pytest.mark.parametrize(
    ("topic", "payload", "code", "desc"),
    [
        ("$file//init", b"{}", 0x80, "invalid_fileid"),
        ("$file/ID/fin", b"", 0x80, "invalid_offset"),
        ("$file/ID", b"", 0x80, "invalid_file_command"),
        ("$file/ID/a/b/c", b"", 0x80, "invalid_file_command"),
        ("$file/ID/-1", b"x", 0x80, "invalid_offset"),
        ("$file/ID/0x10", b"x", 0x80, "invalid_offset"),
        ("$file/ID/1e3", b"x", 0x80, "invalid_offset"),
        ("$file/ID/ 1", b"x", 0x80, "invalid_offset"),
        ("$file/ID/\uff11\uff12", b"x", 0x80, "invalid_offset"),
        ("$file/ID/\u0661", b"x", 0x80, "invalid_offset"),
        ("$file/ID/fin/-5", b"", 0x80, "invalid_size"),
        ("$file/ID/fin/abc", b"", 0x80, "invalid_size"),
        ("$file/ID/fin/10/zz", b"", 0x80, "invalid_checksum"),
        ("$file/ID/fin/10/" + "a" * 63, b"", 0x80, "invalid_checksum"),
        ("$file/ID/0/" + "g" * 64, b"x", 0x80, "invalid_checksum"),
        ("$file/ID/x/" + "a" * 64, b"x", 0x80, "invalid_offset"),
        ("$file/ID/0/" + "a" * 64, b"x", 0x80, "checksum_mismatch"),
        ("$file/ID/init", b"not json", 0x80, "invalid_filemeta_json"),
        ("$file/ID/init", b"[1,2]", 0x80, "invalid_filemeta_json"),
        ("$file/ID/init", b"null", 0x80, "invalid_filemeta_json"),
        ("$file/ID/init", b"42", 0x80, "invalid_filemeta_json"),
        ("$file/ID/init", b"{}", 0x80, "invalid_filemeta"),
        ("$file/ID/init", b'{"name": ""}', 0x80, "invalid_filemeta"),
        ("$file/ID/init", b'{"name": ".."}', 0x80, "invalid_filemeta"),
        ("$file/ID/init", b'{"name": "a/b"}', 0x80, "invalid_filemeta"),
        ("$file/ID/init", b'{"name": "a\\\\b"}', 0x80, "invalid_filemeta"),
        ("$file/ID/init", b'{"name": "a:b"}', 0x80, "invalid_filemeta"),
        ("$file/ID/init", b'{"name": "a\\nb"}', 0x80, "invalid_filemeta"),
        ("$file/ID/init", json.dumps({"name": "x" * 241}).encode(), 0x80, "invalid_filemeta"),
        ("$file/ID/init", b'{"name": "a", "size": -1}', 0x80, "invalid_filemeta"),
        ("$file/ID/init", b'{"name": "a", "size": 1.5}', 0x80, "invalid_filemeta"),
        ("$file/ID/init", b'{"name": "a", "checksum": "xyz"}', 0x80, "invalid_filemeta"),
        ("$file/ID/init", b'{"name": "a", "segments_ttl": 0}', 0x80, "invalid_filemeta"),
        # two levels: a segment with checksum; the (clamped) offset parses, "" is no checksum
        ("$file/ID/99999999999999999999999/", b"", 0x80, "invalid_checksum"),
        ("$file/ID/1/2/3", b"", 0x80, "invalid_file_command"),
        ("$file/ID/68719476737", b"x", 0x83, "file_too_large"),
        ("$file/ID/fin/68719476737", b"", 0x83, "file_too_large"),
        ("$file-async//init", b"{}", 0x80, "invalid_fileid"),
        ("$file-async/ID/-1", b"x", 0x80, "invalid_offset"),
    ],
)
def test_malformed_commands(
    client: FtClient, topic: str, payload: bytes, code: int, desc: str
) -> None:
    check(client, topic, payload, code, desc)


def test_init_init_is_a_valid_init_and_levels_are_kept(client: FtClient) -> None:
    check(client, "$file/init/init", b'{"name": "i"}', 0, "success")
    # an empty level is kept: "$file/a//init" has fileId "a" and rest "/init" -> two levels
    check(client, "$file/a//init", b"x", 0x80, "invalid_offset")


def test_not_a_command_gets_no_matching_subscribers(client: FtClient) -> None:
    assert client.command("$file", b"x") == 0x10
    assert client.command("$filex/a/init", b"x") == 0x10
    assert client.command("devices/telemetry", b"x") == 0x10


def test_qos0_command_gets_invalid_qos_document(client: FtClient) -> None:
    client.publish("$file/q0/init", b'{"name": "q"}', qos=0)
    doc = client.doc_for("$file/q0/init")
    assert doc["reason_code"] == 128 and doc["reason_description"] == "invalid_qos"
    assert doc["packet_id"] == 0
    # and it was not processed: a fin finds no init
    check(client, "$file/q0/fin/0", b"", 0x80, "incomplete")


def test_segments_any_order_overlap_duplicates_before_init(
    server: ServerProcess, client: FtClient
) -> None:
    data = os.urandom(10_000)
    cid = client.client_id
    # before init, overlapping, duplicated, varying sizes, out of order
    plan = [(5000, 3000), (0, 2000), (1500, 4000), (0, 100), (8000, 2000), (7000, 1500)]
    for off, n in plan:
        check(client, f"$file/ooo/{off}", data[off : off + n], 0, "success")
    check(
        client,
        "$file/ooo/9000/" + hashlib.sha256(data[9000:]).hexdigest(),
        data[9000:],
        0,
        "success",
    )
    check(client, "$file/ooo/init", json.dumps({"name": "o.bin"}), 0, "success")
    check(client, "$file/ooo/fin/10000", b"", 0, "success")
    assert find_export(server.exports, cid, "ooo", "o.bin").read_bytes() == data


def test_corrupted_segment_is_not_stored_and_retry_works(
    server: ServerProcess, client: FtClient
) -> None:
    good = b"B" * 100
    digest = hashlib.sha256(good).hexdigest()
    check(client, "$file/cor/init", json.dumps({"name": "c"}), 0, "success")
    check(client, f"$file/cor/0/{digest}", b"X" * 100, 0x80, "checksum_mismatch")
    doc = check(client, "$file/cor/fin/100", b"", 0x80, "incomplete")
    assert doc["missing"] == [[0, 100]]
    check(client, f"$file/cor/0/{digest.upper()}", good, 0, "success")
    check(client, "$file/cor/fin/100", b"", 0, "success")
    assert find_export(server.exports, client.client_id, "cor", "c").read_bytes() == good


def test_incomplete_fin_reports_missing_ranges(client: FtClient) -> None:
    doc = check(client, "$file/gap/fin/10", b"", 0x80, "incomplete")
    assert "missing" not in doc  # nothing known at all: no init
    check(client, "$file/gap/init", json.dumps({"name": "g"}), 0, "success")
    for k in range(0, 40, 2):  # every other byte: 20 gaps, only the first 16 reported
        check(client, f"$file/gap/{k}", b"z", 0, "success")
    doc = check(client, "$file/gap/fin/40", b"", 0x80, "incomplete")
    assert doc["missing"] == [[k + 1, k + 2] for k in range(0, 32, 2)]
    # data complete but no init: incomplete without missing
    check(client, "$file/noinit/0", b"abc", 0, "success")
    doc = check(client, "$file/noinit/fin/3", b"", 0x80, "incomplete")
    assert "missing" not in doc


def test_checksum_precedence(server: ServerProcess, client: FtClient) -> None:
    data = b"A" * 10
    wrong = hashlib.sha256(b"nope").hexdigest()
    # init checksum used when fin has none
    check(client, "$file/ck1/init", json.dumps({"name": "k", "checksum": wrong}), 0, "success")
    check(client, "$file/ck1/0", data, 0, "success")
    check(client, "$file/ck1/fin/10", b"", 0x80, "checksum_mismatch")
    # the transfer stays: a fin with the right checksum wins over init's
    check(client, f"$file/ck1/fin/10/{SHA_A}", b"", 0, "success")
    manifest = read_manifest(find_export(server.exports, client.client_id, "ck1", "k"))
    assert manifest["checksum"] == SHA_A.upper()
    # fin checksum wrong, init right: fin's wins (and fails)
    check(client, "$file/ck2/init", json.dumps({"name": "k", "checksum": SHA_A}), 0, "success")
    check(client, "$file/ck2/0", data, 0, "success")
    check(client, f"$file/ck2/fin/10/{wrong}", b"", 0x80, "checksum_mismatch")
    check(client, "$file/ck2/fin/10", b"", 0, "success")


def test_metadata_conflict_and_idempotence_after_export(
    server: ServerProcess, client: FtClient
) -> None:
    meta = json.dumps({"name": "m.txt", "size": 3, "user_data": {"a": 1}})
    check(client, "$file/md/init", meta, 0, "success")
    check(
        client,
        "$file/md/init",
        json.dumps({"size": "3", "user_data": {"a": 1}, "name": "m.txt"}),
        0,
        "success",
    )
    check(client, "$file/md/init", json.dumps({"name": "other"}), 0x80, "filemeta_conflict")
    check(client, "$file/md/0", b"abc", 0, "success")
    check(client, "$file/md/fin/3", b"", 0, "success")
    path = find_export(server.exports, client.client_id, "md", "m.txt")
    assert path.read_bytes() == b"abc"
    # after export: retransmissions are idempotent
    check(client, "$file/md/init", meta, 0, "success")
    check(client, "$file/md/init", json.dumps({"name": "m2"}), 0x80, "filemeta_conflict")
    check(client, "$file/md/0", b"XYZ", 0, "success")
    check(client, "$file/md/fin/3", b"", 0, "success")
    check(client, "$file/md/fin/3/" + hashlib.sha256(b"abc").hexdigest(), b"", 0, "success")
    check(client, "$file/md/fin/4", b"", 0x80, "filemeta_conflict")
    check(client, "$file/md/fin/3/" + SHA_A, b"", 0x80, "filemeta_conflict")
    check(client, "$file/md/abort", b"", 0, "success")
    assert path.read_bytes() == b"abc"  # untouched


def test_abort_deletes_and_file_id_is_reusable(server: ServerProcess, client: FtClient) -> None:
    check(client, "$file/ab/init", json.dumps({"name": "one"}), 0, "success")
    check(client, "$file/ab/0", b"xxxx", 0, "success")
    staging = list((server.data_dir / "staging").glob(f"*/{client.client_id}/ab"))
    assert len(staging) == 1
    check(client, "$file/ab/abort", b"", 0, "success")
    assert not staging[0].exists()
    check(client, "$file/ab/init", json.dumps({"name": "two"}), 0, "success")
    check(client, "$file/ab/0", b"yy", 0, "success")
    check(client, "$file/ab/fin/2", b"", 0, "success")
    assert find_export(server.exports, client.client_id, "ab", "two").read_bytes() == b"yy"
    check(client, "$file/never/abort", b"", 0, "success")


def test_zero_length_file_and_segment(server: ServerProcess, client: FtClient) -> None:
    check(client, "$file/z/init", json.dumps({"name": "empty"}), 0, "success")
    check(client, "$file/z/5", b"", 0, "success")
    check(client, "$file/z/fin/0", b"", 0, "success")
    assert find_export(server.exports, client.client_id, "z", "empty").read_bytes() == b""


def test_bytes_beyond_size_are_dropped(server: ServerProcess, client: FtClient) -> None:
    check(client, "$file/big/init", json.dumps({"name": "b"}), 0, "success")
    check(client, "$file/big/0", b"0123456789", 0, "success")
    check(client, "$file/big/fin/4", b"", 0, "success")
    assert find_export(server.exports, client.client_id, "big", "b").read_bytes() == b"0123"

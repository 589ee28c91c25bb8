"""The expiry collector of exports and the disk side of the HTTP API, on real directories:
sorted walks and cursors, unesc(), bytes received from a real journal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_http_api import key_of, make_export, transfer_dir

import ftcore
from ftserver.export import tree
from ftserver.export.collector import collect_expired_exports, delete_export
from ftserver.export.layout import MANIFEST_SUFFIX
from ftserver.http.cursor import CursorError, decode_cursor, encode_cursor
from ftserver.names import esc, unesc
from ftserver.storage import journal as jr
from ftserver.storage import listing
from ftserver.storage.staging import staging_bucket

NOW = 1_800_000_000

# ------------------------------------------------------------------------------------------
# collect_expired_exports


def test_collects_only_expired_exports(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    expired = make_export(root, "c1", "old", "old.bin", expire_at=NOW - 1)
    at_now = make_export(root, "c1", "now", "now.bin", expire_at=NOW)
    future = make_export(root, "c2", "new", "new.bin", expire_at=NOW + 3600)
    forever = make_export(root, "c3", "keep", "keep.bin")
    damaged = make_export(root, "c4", "bad", "bad.bin", manifest=b'["filemeta",1,{"expire_at"')
    odd = make_export(
        root, "c5", "str", "s", manifest=b'["filemeta",1,{"name":"s","expire_at":"1"}]'
    )
    flag = make_export(
        root, "c6", "bool", "b", manifest=b'["filemeta",1,{"name":"b","expire_at":true}]'
    )
    assert collect_expired_exports(root, NOW) == 1
    assert not expired.exists()
    assert not expired.with_name(expired.name + MANIFEST_SUFFIX).exists()
    # every directory it left empty is gone, up to the root, which stays
    assert [p for p in root.rglob("*") if p.is_dir() and not any(p.iterdir())] == []
    assert not transfer_dir(root, "c1", "old").exists()
    assert root.is_dir()
    for kept in (at_now, future, forever, damaged, odd, flag):
        assert kept.exists() and kept.with_name(kept.name + MANIFEST_SUFFIX).exists()
    assert collect_expired_exports(root, NOW + 3601) == 2  # at_now and future
    assert not at_now.exists() and not future.exists()
    assert collect_expired_exports(root, NOW + 10**9) == 0


def test_collect_prunes_every_empty_parent(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    make_export(root, "only", "f", "a", expire_at=NOW - 10)
    assert collect_expired_exports(root, NOW) == 1
    assert root.is_dir() and list(root.iterdir()) == []


def test_collect_keeps_the_live_sibling(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    gone = make_export(root, "sib", "f", "gone", expire_at=NOW - 1)
    kept = make_export(root, "sib", "f", "kept", expire_at=NOW + 1)
    assert collect_expired_exports(root, NOW) == 1
    assert not gone.exists() and kept.exists()
    assert sorted(p.name for p in kept.parent.iterdir()) == ["kept", "kept" + MANIFEST_SUFFIX]


def test_collect_does_not_follow_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    victim = make_export(elsewhere, "v", "f", "victim", expire_at=NOW - 1)
    b1 = key_of("v", "f", "victim")[0]
    (root / b1).symlink_to(elsewhere / b1, target_is_directory=True)
    assert collect_expired_exports(root, NOW) == 0
    assert victim.exists()


def test_collect_on_missing_root(tmp_path: Path) -> None:
    assert collect_expired_exports(tmp_path / "nothing", NOW) == 0


def test_collect_ignores_temporary_and_orphan_files(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    live = make_export(root, "t", "f", "live", expire_at=NOW + 100)
    (live.parent / ".ftserver-00aa.tmp").write_bytes(b'["filemeta",1,{"expire_at":1}]')
    (live.parent / MANIFEST_SUFFIX).write_bytes(b'["filemeta",1,{"expire_at":1}]')
    assert collect_expired_exports(root, NOW) == 0
    assert live.exists() and (live.parent / MANIFEST_SUFFIX).exists()


def test_delete_export_order_and_leftovers(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    path = make_export(root, "d", "f", "x")
    path.unlink()  # a manifest whose file is gone still counts as an export to remove
    assert delete_export(path.parent, "x", root) is True
    assert not path.parent.exists()
    # a file without its manifest (an interrupted export) is cleaned up, not counted
    d = transfer_dir(root, "d", "g")
    d.mkdir(parents=True)
    (d / "y").write_bytes(b"y")
    assert delete_export(d, "y", root) is False
    assert not d.exists() and root.is_dir()


# ------------------------------------------------------------------------------------------
# sorted walks and cursors


def _tree(root: Path) -> list[tuple[str, ...]]:
    made = [(f"c{i}", f"f{i % 3}", n) for i in range(12) for n in ("a", ".b")]
    made += [("..", ".", "n"), ("a/b", "%", "n"), ("é", "😀", "n")]
    for t in made:
        make_export(root, *t)
    return sorted(key_of(*t) for t in made)


def test_iter_exports_resumes_after_every_key(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    keys = _tree(root)
    assert [e.key for e in tree.iter_exports(root)] == keys
    for i, key in enumerate(keys):
        assert [e.key for e in tree.iter_exports(root, key)] == keys[i + 1 :]
    # a position that names no item (removed since) resumes at the next key
    missing = (*keys[5][:5], keys[5][5] + "\x00")
    assert [e.key for e in tree.iter_exports(root, missing)] == keys[6:]
    missing_dir = (keys[5][0], keys[5][1], "0" * 36, "x", "y", "z")
    assert [e.key for e in tree.iter_exports(root, missing_dir)] == [
        k for k in keys if k > missing_dir
    ]


def test_export_entries_decode_ids(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    _tree(root)
    ids = {(e.client_id, e.file_id) for e in tree.iter_exports(root)}
    assert {("..", "."), ("a/b", "%"), ("é", "😀")} <= ids
    [entry] = tree.exports_of_transfer(root, "a/b", "%")
    assert entry.relpath == "/".join(key_of("a/b", "%", "n"))
    assert entry.manifest["clientid"] == "a/b"


def test_cursor_roundtrip() -> None:
    key = ("8E", "B5", "7023DA998C12F0B2A6CA586027E48BEC6271", "a%2Fb", "\udcff", "é n")
    cursor = encode_cursor("e", key)
    assert cursor.isascii() and "=" not in cursor and "/" not in cursor and "+" not in cursor
    assert decode_cursor(cursor, "e", 6) == key
    with pytest.raises(CursorError):
        decode_cursor(cursor, "t", 6)
    with pytest.raises(CursorError):
        decode_cursor(cursor, "e", 3)
    for bad in ("", "a", "====", "é", "x" * 20000, cursor + "!"):
        with pytest.raises(CursorError):
            decode_cursor(bad, "e", 6)


# ------------------------------------------------------------------------------------------
# unesc


@pytest.mark.parametrize(
    ("escaped", "raw"),
    [("%2E%2E", ".."), ("%2E", "."), ("a%2Fb", "a/b"), ("%25", "%"), ("%c3%a9", "é"), ("x", "x")],
)
def test_unesc(escaped: str, raw: str) -> None:
    assert unesc(escaped) == raw


@pytest.mark.parametrize("bad", ["%", "%2", "%G0", "a%zz", "%FF", "%C3"])
def test_unesc_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        unesc(bad)


@given(st.text())
def test_unesc_inverts_esc(s: str) -> None:
    assert unesc(esc(s)) == s


# ------------------------------------------------------------------------------------------
# in-progress transfers from a real journal


def _staging(data_dir: Path, cid: str, fid: str) -> Path:
    d = data_dir / "staging" / staging_bucket(cid) / esc(cid) / esc(fid)
    d.mkdir(parents=True)
    return d


def test_transfer_bytes_received_from_checkpoint_and_ranges(tmp_path: Path) -> None:
    d = _staging(tmp_path, "dev/1", "f")
    (d / "meta").write_bytes(json.dumps({"name": "n.bin", "size": 100_000}).encode())
    with ftcore.Assembler(d / "data") as asm:
        asm.place(0, b"a" * 4000)
        asm.place(10_000, b"b" * 1000)
        state = asm.dumps()
    records = [
        jr.range_record(0, 4000, None),  # before the checkpoint, covered by it
        jr.checkpoint_record(state),
        jr.range_record(3000, 2000, b"\x00" * 16),  # overlaps: 1000 new bytes
        jr.range_record(50_000, 10, None),
    ]
    (d / "journal").write_bytes(jr.HEADER + b"".join(records) + b"\x03torn")
    os.utime(d / "journal", (NOW, NOW))
    [t] = list(listing.iter_transfers(tmp_path))
    assert (t.client_id, t.file_id, t.name, t.expected_size) == ("dev/1", "f", "n.bin", 100_000)
    assert t.bytes_received == 4000 + 1000 + 1000 + 10
    assert t.last_activity == NOW


def test_transfer_exporting_and_bare(tmp_path: Path) -> None:
    d = _staging(tmp_path, "c", "exporting")
    records = [jr.range_record(0, 10, None), jr.exporting_record(700, "exports/x")]
    (d / "journal").write_bytes(jr.HEADER + b"".join(records))
    bare = _staging(tmp_path, "c", "bare")
    (bare / "journal").write_bytes(jr.HEADER)
    _staging(tmp_path, "c", "nojournal")  # not (yet) a transfer
    got = {t.file_id: t for t in listing.iter_transfers(tmp_path)}
    assert set(got) == {"exporting", "bare"}
    assert got["exporting"].bytes_received == 700
    assert got["bare"].bytes_received == 0 and got["bare"].name is None
    keys = sorted(t.key for t in got.values())
    assert [t.key for t in listing.iter_transfers(tmp_path, keys[0])] == keys[1:]

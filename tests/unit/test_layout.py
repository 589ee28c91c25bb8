"""EMQX's export layout (docs/protocol.md §6): esc(), the bucket hash, paths, manifest, S3 names."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftserver.export.layout import (
    MANIFEST_SUFFIX,
    export_dir_parts,
    export_relpath,
    manifest_bytes,
    manifest_relpath,
    parse_manifest,
    s3_key,
    s3_metadata,
)
from ftserver.meta import FileMeta, parse_filemeta
from ftserver.names import esc, esc_len, is_printable
from ftserver.storage.staging import staging_bucket, staging_relpath

SUM = "a1" * 32

# ------------------------------------------------------------------------------------------
# esc()

ESC_VECTORS = [
    # EMQX's own published escape vectors (emqx_ft_fs_util_tests)
    ("just.file", "just.file"),
    (".hidden", ".hidden"),
    (".~what", ".~what"),
    ("100%.file", "100%25.file"),
    ("..", "%2E%2E"),
    ("...", "..."),
    ("/etc/passwd", "%2Fetc%2Fpasswd"),
    ("\x01\x02\n ", "%01%02%0A "),
    # docs/protocol.md §6
    (".", "%2E"),
    ("%", "%25"),
    ("%2E", "%252E"),
    (":", "%3A"),
    ("\\", "%5C"),
    ("/", "%2F"),
    ("a/b:c\\d%e", "a%2Fb%3Ac%5Cd%25e"),
    ("\n", "%0A"),
    ("\x00", "%00"),
    ("\x1f", "%1F"),
    ("\x7f", "%7F"),
    ("\x80", "%C2%80"),  # C1 control: two UTF-8 bytes
    ("\x9f", "%C2%9F"),
    ("\u00a0", "\u00a0"),
    ("\ud7ff", "\ud7ff"),
    ("\ue000", "\ue000"),
    ("\ufffd", "\ufffd"),
    ("\ufffe", "%EF%BF%BE"),
    ("\uffff", "%EF%BF%BF"),
    ("\U00010000", "\U00010000"),
    ("\U0010ffff", "\U0010ffff"),
    ("🎉", "🎉"),
    ("client-1", "client-1"),
    ("日本語 ファイル", "日本語 ファイル"),
    ("é", "é"),
    (" ", " "),
    ("", ""),
    ("a\tb", "a%09b"),
    ("./..", ".%2F.."),
    (". ", ". "),
    ("~", "~"),
    ("\ud800", "%ED%A0%80"),  # a lone surrogate: never from MQTT, but esc() stays total
]


@pytest.mark.parametrize(("raw", "escaped"), ESC_VECTORS, ids=[repr(r) for r, _ in ESC_VECTORS])
def test_esc_vectors(raw: str, escaped: str) -> None:
    assert esc(raw) == escaped
    assert esc_len(raw) == len(escaped.encode("utf-8", "surrogatepass"))


def test_esc_uppercase_hex() -> None:
    assert esc("\x0a\x1b\x9b") == "%0A%1B%C2%9B"
    # U+00AD (soft hyphen) is in U+00A0..U+D7FF: printable by the protocol's definition,
    # although Python's str.isprintable() says otherwise
    assert esc("\xad") == "\xad"
    assert not "\xad".isprintable()


def _oracle_printable(ch: str) -> bool:
    cp = ord(ch)
    return (
        0x20 <= cp <= 0x7E
        or 0xA0 <= cp <= 0xD7FF
        or 0xE000 <= cp <= 0xFFFD
        or 0x10000 <= cp <= 0x10FFFF
    )


def _oracle_esc(s: str) -> str:
    """An independent rendering of the §6 rule (byte-oriented, via bytes.hex)."""
    if s in (".", ".."):
        return "".join("%" + b.hex().upper() for b in [b"."] * len(s))
    out = []
    for ch in s:
        if ch in "%:\\/" or not _oracle_printable(ch):
            hexed = ch.encode("utf-8", "surrogatepass").hex().upper()
            out.append("".join("%" + hexed[i : i + 2] for i in range(0, len(hexed), 2)))
        else:
            out.append(ch)
    return "".join(out)


def _unesc(s: str) -> str:
    """Inverse of esc(), written for the test: %XX sequences are bytes, the rest is text."""
    data = bytearray()
    i = 0
    while i < len(s):
        if s[i] == "%":
            data.append(int(s[i + 1 : i + 3], 16))
            i += 3
        else:
            data += s[i].encode("utf-8", "surrogatepass")
            i += 1
    return data.decode("utf-8", "surrogatepass")


def test_is_printable_matches_oracle_everywhere() -> None:
    for cp in range(0x110000):
        assert is_printable(cp) == _oracle_printable(chr(cp)), hex(cp)


ANY_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)
TRICKY_TEXT = st.text(
    st.sampled_from(list(".%:/\\ \x00\n\x7f\x80é🎉\ufffe\ud800aZ09")), max_size=12
)


@given(ANY_TEXT | TRICKY_TEXT)
def test_esc_properties(s: str) -> None:
    e = esc(s)
    assert e == _oracle_esc(s)
    assert "/" not in e and "\\" not in e and ":" not in e and "\x00" not in e
    assert e not in (".", "..")
    assert all(_oracle_printable(ch) for ch in e)
    assert _unesc(e) == s
    assert esc_len(s) == len(e.encode("utf-8", "surrogatepass"))


@given(ANY_TEXT | TRICKY_TEXT, ANY_TEXT | TRICKY_TEXT)
def test_esc_injective(a: str, b: str) -> None:
    if a != b:
        assert esc(a) != esc(b)


def test_esc_injective_on_near_collisions() -> None:
    samples = [".", "..", "%2E", "%2E%2E", "%252E", "/", "%2F", "%", "%25", "\n", "%0A"]
    assert len({esc(s) for s in samples}) == len(samples)


# ------------------------------------------------------------------------------------------
# bucket hash


def test_export_dir_parts_spec_vector() -> None:
    assert export_dir_parts("client-1", "file-id-1") == (
        "8E",
        "B5",
        "7023DA998C12F0B2A6CA586027E48BEC6271",
    )


def _oracle_parts(cid: str, fid: str) -> tuple[str, str, str]:
    term = bytes([131, 104, 2])
    for part in (cid.encode(), fid.encode()):
        term += struct.pack(">BI", 109, len(part)) + part
    digest = hashlib.sha1(term).hexdigest().upper()
    return digest[0:2], digest[2:4], digest[4:40]


@given(
    st.text(st.characters(codec="utf-8"), max_size=30),
    st.text(st.characters(codec="utf-8"), max_size=30),
)
def test_export_dir_parts_shape(cid: str, fid: str) -> None:
    b1, b2, b3 = export_dir_parts(cid, fid)
    assert (len(b1), len(b2), len(b3)) == (2, 2, 36)
    assert all(c in "0123456789ABCDEF" for c in b1 + b2 + b3)
    assert (b1, b2, b3) == _oracle_parts(cid, fid)


def test_export_dir_parts_uses_utf8_byte_length() -> None:
    # the length field counts bytes, not characters
    assert export_dir_parts("é", "f") == _oracle_parts("é", "f")
    assert export_dir_parts("é", "f") != export_dir_parts("e", "f")
    # order matters: (cid, fid) is a tuple
    assert export_dir_parts("a", "b") != export_dir_parts("b", "a")
    # the boundary between the two is part of the hash
    assert export_dir_parts("ab", "c") != export_dir_parts("a", "bc")


# ------------------------------------------------------------------------------------------
# paths


def test_export_relpath() -> None:
    assert export_relpath("client-1", "file-id-1", "x.bin") == PurePosixPath(
        "8E/B5/7023DA998C12F0B2A6CA586027E48BEC6271/client-1/file-id-1/x.bin"
    )


def test_export_relpath_escapes_ids_not_name() -> None:
    path = export_relpath("dev/1", "..", "100%.txt")
    assert path.parts[3:] == ("dev%2F1", "%2E%2E", "100%.txt")
    assert len(path.parts) == 6


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/abs", "a\x00b"])
def test_export_relpath_refuses_unsafe_name(name: str) -> None:
    with pytest.raises(ValueError):
        export_relpath("c", "f", name)
    with pytest.raises(ValueError):
        s3_key("c", "f", name)


def test_manifest_relpath() -> None:
    path = manifest_relpath("client-1", "file-id-1", "x.bin")
    assert path == export_relpath("client-1", "file-id-1", "x.bin").with_name("x.bin.MANIFEST.json")
    assert MANIFEST_SUFFIX == ".MANIFEST.json"


def test_staging_bucket() -> None:
    assert staging_bucket("client-1") == hashlib.sha1(b"client-1").hexdigest()[:2].upper()
    assert staging_bucket("é") == hashlib.sha1("é".encode()).hexdigest()[:2].upper()
    assert len({staging_bucket(f"c{i}") for i in range(2000)}) > 200  # spreads


def test_staging_relpath() -> None:
    bucket = staging_bucket("dev:1")
    assert staging_relpath(bucket, "dev:1", "f/1") == PurePosixPath(
        "staging", bucket, "dev%3A1", "f%2F1"
    )
    assert staging_relpath("00", ".", "..").parts == ("staging", "00", "%2E", "%2E%2E")


@pytest.mark.parametrize("bucket", ["", ".", "..", "a/b", "a\x00"])
def test_staging_relpath_refuses_unsafe_bucket(bucket: str) -> None:
    with pytest.raises(ValueError):
        staging_relpath(bucket, "c", "f")


@given(ANY_TEXT.filter(bool), ANY_TEXT.filter(bool))
def test_paths_never_escape(cid: str, fid: str) -> None:
    for path in (export_relpath(cid, fid, "n"), staging_relpath(staging_bucket(cid), cid, fid)):
        assert not path.is_absolute()
        assert ".." not in path.parts and "." not in path.parts
    assert len(export_relpath(cid, fid, "n").parts) == 6
    assert len(staging_relpath("AB", cid, fid).parts) == 4


# ------------------------------------------------------------------------------------------
# manifest


def test_manifest_bytes() -> None:
    meta = parse_filemeta(
        json.dumps(
            {"name": "é.bin", "size": "3", "segments_ttl": 60, "user_data": {"k": [1]}}
        ).encode()
    )
    data = manifest_bytes(meta, SUM, {"clientid": "c", "fileid": "f", "exported_at": 17})
    assert (
        data
        == (
            '["filemeta",1,{"name":"é.bin","size":3,"segments_ttl":60,"user_data":{"k":[1]},'
            '"checksum":"' + SUM.upper() + '","clientid":"c","fileid":"f","exported_at":17}]'
        ).encode()
    )
    assert parse_manifest(data)["checksum"] == SUM.upper()


def test_manifest_checksum_replaces_init_checksum() -> None:
    meta = FileMeta("a", checksum="B" * 64)
    doc = json.loads(manifest_bytes(meta, "c" * 64, {}))
    assert doc == ["filemeta", 1, {"name": "a", "checksum": "C" * 64}]


def test_manifest_readable_as_filemeta() -> None:
    meta = FileMeta("a", size=3, expire_at=9)
    obj = parse_manifest(manifest_bytes(meta, SUM, {"clientid": "c"}))
    again = parse_filemeta(json.dumps(obj).encode())
    assert again == FileMeta("a", size=3, expire_at=9, checksum=SUM.upper())


@pytest.mark.parametrize(
    "key", ["name", "size", "checksum", "expire_at", "segments_ttl", "user_data"]
)
def test_manifest_extra_cannot_replace_emqx_keys(key: str) -> None:
    with pytest.raises(ValueError):
        manifest_bytes(FileMeta("a"), SUM, {key: 1})


@pytest.mark.parametrize("checksum", ["", "a" * 63, "a" * 65, "g" * 64, "ａ" * 64])
def test_manifest_refuses_bad_checksum(checksum: str) -> None:
    with pytest.raises(ValueError):
        manifest_bytes(FileMeta("a"), checksum, {})


def test_parse_manifest_emqx_written() -> None:
    # as EMQX writes it (jiffy: compact; key order is EMQX's map order)
    data = b'["filemeta",1,{"checksum":"' + SUM.upper().encode() + b'","name":"x","size":5}]'
    assert parse_manifest(data) == {"checksum": SUM.upper(), "name": "x", "size": 5}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{}",
        b"[]",
        b'["filemeta",1]',
        b'["filemeta",2,{}]',
        b'["filemeta",true,{}]',
        b'["filemeta","1",{}]',
        b'["other",1,{}]',
        b'["filemeta",1,[]]',
        b'["filemeta",1,{},4]',
        b"\xff",
        b"[" * 100_000,
    ],
)
def test_parse_manifest_rejects(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_manifest(data)


# ------------------------------------------------------------------------------------------
# S3


def test_s3_key() -> None:
    assert s3_key("client-1", "file-id-1", "x.bin") == "client-1/file-id-1/x.bin"
    assert s3_key("a/b", "f1", "n%") == "a%2Fb/f1/n%"
    assert s3_key(".", "..", "n") == "%2E/%2E%2E/n"


@given(ANY_TEXT.filter(bool), ANY_TEXT.filter(bool))
def test_s3_key_prefix_is_exact(cid: str, fid: str) -> None:
    key = s3_key(cid, fid, "name")
    assert key.count("/") == 2
    c, f, n = key.split("/")
    assert (_unesc(c), _unesc(f), n) == (cid, fid, "name")


def test_s3_metadata() -> None:
    meta = parse_filemeta('{"name": "日本.txt", "size": 4, "user_data": "🎉"}'.encode())
    headers = s3_metadata("dev-é", "f1", meta)
    assert set(headers) == {
        "x-amz-meta-clientid",
        "x-amz-meta-fileid",
        "x-amz-meta-filemeta",
        "x-amz-meta-filemeta-vsn",
    }
    assert headers["x-amz-meta-clientid"] == "dev-é"
    assert headers["x-amz-meta-fileid"] == "f1"
    assert headers["x-amz-meta-filemeta-vsn"] == "1"
    filemeta = headers["x-amz-meta-filemeta"]
    assert filemeta.isascii()
    assert "\\u65e5\\u672c.txt" in filemeta
    assert "\\ud83c\\udf89" in filemeta  # astral: a UTF-16 surrogate pair
    assert json.loads(filemeta) == {"name": "日本.txt", "size": 4, "user_data": "🎉"}
    assert parse_filemeta(filemeta.encode()) == meta

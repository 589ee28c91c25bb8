"""Init metadata, PROTOCOL.md §3: JSON shape, each field's rule, normal form, equality."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftserver import errors
from ftserver.meta import (
    MAX_NAME_BYTES,
    FileMeta,
    check_name,
    filemeta_from_obj,
    parse_filemeta,
)

SUM = "0123456789abcdef" * 4


def meta(**fields: Any) -> FileMeta:
    return parse_filemeta(json.dumps(fields).encode())


def bad_meta(**fields: Any) -> None:
    with pytest.raises(errors.InvalidFileMeta) as info:
        meta(**fields)
    assert type(info.value) is errors.InvalidFileMeta
    assert info.value.description == "invalid_filemeta" and info.value.reason_code == 0x80


# ------------------------------------------------------------------------------------------
# the payload must be a JSON object


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"{",
        b'{"name": "a",}',
        b"[]",
        b'["name", "a"]',
        b"42",
        b'"name"',
        b"null",
        b"true",
        b'\xef\xbb\xbf{"name": "a"}',  # UTF-8 BOM
        b'{"name": "\xff"}',  # not UTF-8
        b'{"name": "a"} x',
        b'{"name": "a", "x": NaN}',
        b'{"name": "a", "x": Infinity}',
        b'{"name": "a", "x": -Infinity}',
        b'{"name": "a", "x": 1e400}',
        b'{"name": "a", "x": ' + b"1" * 5000 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    ],
    ids=lambda p: repr(p[:30]),
)
def test_not_a_json_object(payload: bytes) -> None:
    with pytest.raises(errors.InvalidFileMetaJson) as info:
        parse_filemeta(payload)
    assert type(info.value) is errors.InvalidFileMetaJson
    assert info.value.description == "invalid_filemeta_json"


def test_accepts_bytes_like() -> None:
    raw = b'{"name": "a.txt"}'
    expected = FileMeta("a.txt")
    assert parse_filemeta(raw) == expected
    assert parse_filemeta(bytearray(raw)) == expected
    assert parse_filemeta(memoryview(b"xx" + raw)[2:]) == expected


def test_whitespace_around_json() -> None:
    assert parse_filemeta(b' \n\t{"name": "a"}\r\n ') == FileMeta("a")


# ------------------------------------------------------------------------------------------
# fields


def test_minimal() -> None:
    m = meta(name="report.csv")
    assert m.name == "report.csv"
    assert (m.size, m.checksum, m.expire_at, m.segments_ttl) == (None, None, None, None)
    assert m.user_data is None and not m.has_user_data


def test_all_fields() -> None:
    m = meta(
        name="r.bin",
        size=10,
        checksum=SUM,
        expire_at=1_700_000_000,
        segments_ttl=600,
        user_data={"k": [1, "two", None]},
    )
    assert m.size == 10
    assert m.checksum == SUM.upper()
    assert m.checksum_bytes == bytes.fromhex(SUM)
    assert m.expire_at == 1_700_000_000
    assert m.segments_ttl == 600
    assert m.user_data == {"k": [1, "two", None]} and m.has_user_data


def test_unknown_keys_ignored() -> None:
    assert meta(name="a", colour="blue", nested={"x": [1]}) == meta(name="a")


def test_null_counts_as_absent() -> None:
    m = meta(name="a", size=None, checksum=None, expire_at=None, segments_ttl=None, user_data=None)
    assert m == FileMeta("a")
    assert not m.has_user_data
    assert m.to_json_obj() == {"name": "a"}


def test_name_required() -> None:
    bad_meta()
    bad_meta(size=1)
    bad_meta(name=None)


@pytest.mark.parametrize("field", ["size", "expire_at", "segments_ttl"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [(12, 12), ("12", 12), (" 12 ", 12), ("012", 12), ("\t7\n", 7), (2**70, 2**70)],
)
def test_integer_fields_accept(field: str, value: object, expected: int) -> None:
    assert getattr(meta(name="a", **{field: value}), field) == expected


@pytest.mark.parametrize("field", ["size", "expire_at", "segments_ttl"])
@pytest.mark.parametrize(
    "value",
    [
        -1,
        "-1",
        True,
        False,
        1.5,
        12.0,
        1e3,
        "1e3",
        "1.5",
        "12.0",
        "+12",
        "1_000",
        "0x10",
        "",
        "   ",
        "１２",
        "١٢",
        "1 2",
        [],
        [12],
        {},
        {"v": 1},
        "9" * 5000,
    ],
)
def test_integer_fields_reject(field: str, value: object) -> None:
    bad_meta(name="a", **{field: value})


def test_zero_allowed_except_segments_ttl() -> None:
    assert meta(name="a", size=0).size == 0
    assert meta(name="a", expire_at="0").expire_at == 0
    assert meta(name="a", segments_ttl=1).segments_ttl == 1
    bad_meta(name="a", segments_ttl=0)
    bad_meta(name="a", segments_ttl="0")


def test_checksum_rules() -> None:
    assert meta(name="a", checksum=SUM.upper()).checksum == SUM.upper()
    assert meta(name="a", checksum="aBcD" * 16).checksum == "ABCD" * 16
    for bad in (SUM[:-1], SUM + "0", "g" * 64, " " + SUM[1:], "ａ" * 64, 1, ["x"], True):
        bad_meta(name="a", checksum=bad)


def test_user_data_any_json() -> None:
    for value in (0, False, "", [], {}, [None], {"a": {"b": [1.5, "é", True]}}):
        m = meta(name="a", user_data=value)
        assert m.has_user_data and m.user_data == value
        assert m.to_json_obj()["user_data"] == value


def test_user_data_lone_surrogate_is_invalid() -> None:
    with pytest.raises(errors.InvalidFileMeta):
        parse_filemeta(b'{"name": "a", "user_data": "\\ud800"}')
    with pytest.raises(errors.InvalidFileMeta):
        parse_filemeta(b'{"name": "a", "user_data": {"\\udfff": 1}}')
    # a proper surrogate pair is fine
    assert meta(name="a", user_data="😀").user_data == "😀"
    assert parse_filemeta(b'{"name": "a", "user_data": "\\ud83d\\ude00"}').user_data == "😀"


def test_unknown_key_content_does_not_matter() -> None:
    assert parse_filemeta(b'{"name": "a", "junk": "\\ud800"}') == FileMeta("a")


def test_duplicate_keys_last_wins() -> None:
    m = parse_filemeta(b'{"name": "first", "name": "second", "size": 1, "size": 2}')
    assert (m.name, m.size) == ("second", 2)
    m = parse_filemeta(b'{"name": "a", "user_data": {"k": 1, "k": 2}}')
    assert m.user_data == {"k": 2}
    # the last occurrence is the one validated
    with pytest.raises(errors.InvalidFileMeta):
        parse_filemeta(b'{"name": "a", "name": ""}')
    assert parse_filemeta(b'{"name": "", "name": "a"}') == FileMeta("a")


# ------------------------------------------------------------------------------------------
# name rules


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "report 2024.csv",
        "%",
        "100%.txt",
        "%2F",
        ".hidden",
        "...",
        ". ",
        "a.",
        "日本語のファイル.txt",
        "🎉🎉.bin",
        "\u00a0",  # first printable code point above ASCII
        "\ud7ff",
        "\ue000",
        "\ufffd",
        "\U00010000",
        "\U0010ffff",
        "~!@#$^&*()[]{}<>|?\"'`=+,;",
        "a" * MAX_NAME_BYTES,
        "é" * (MAX_NAME_BYTES // 2),
        "🎉" * (MAX_NAME_BYTES // 4),
    ],
)
def test_name_allowed(name: str) -> None:
    assert meta(name=name).name == name  # never rewritten
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "a/b",
        "/",
        "/etc/passwd",
        "../x",
        "a\\b",
        "C:",
        "a:b",
        "a\x00b",
        "\x01",
        "tab\there",
        "new\nline",
        "\x7f",
        "\x80",  # C1 control
        "\x9f",
        "\ufffe",
        "\uffff",
        "a" * (MAX_NAME_BYTES + 1),
        "é" * (MAX_NAME_BYTES // 2) + "a",  # 241 bytes, 121 characters
        "🎉" * (MAX_NAME_BYTES // 4 + 1),  # 244 bytes, 61 characters
        "ab" * 100 + "日" * 14,  # 242 bytes, 214 characters
    ],
)
def test_name_refused(name: str) -> None:
    bad_meta(name=name)
    with pytest.raises(errors.InvalidFileMeta):
        check_name(name)


@pytest.mark.parametrize("name", [1, 1.5, True, [], ["a"], {"a": 1}])
def test_name_must_be_string(name: object) -> None:
    bad_meta(name=name)


def test_name_lone_surrogate_refused() -> None:
    with pytest.raises(errors.InvalidFileMeta):
        parse_filemeta(b'{"name": "a\\ud800b"}')


def test_name_limit_is_bytes_not_characters() -> None:
    assert len("é" * 120) == 120 and len(("é" * 120).encode()) == MAX_NAME_BYTES
    assert meta(name="é" * 120).name == "é" * 120
    bad_meta(name="é" * 121)


# ------------------------------------------------------------------------------------------
# normal form and equality (the filemeta_conflict rule)


def test_equal_after_normalisation() -> None:
    a = meta(name="a", size=12, checksum=SUM, expire_at=5, segments_ttl=60)
    b = meta(name="a", size="012", checksum=SUM.upper(), expire_at=" 5 ", segments_ttl="60")
    assert a == b and hash(a) == hash(b)
    assert meta(name="a") == meta(name="a", user_data=None, extra="ignored")


def test_user_data_key_order_ignored() -> None:
    a = parse_filemeta(b'{"name": "a", "user_data": {"x": 1, "y": [1, {"p": 1, "q": 2}]}}')
    b = parse_filemeta(b'{"user_data": {"y": [1, {"q": 2, "p": 1}], "x": 1}, "name": "a"}')
    assert a == b and hash(a) == hash(b)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ({"name": "a"}, {"name": "b"}),
        ({"name": "a"}, {"name": "A"}),
        ({"name": "a"}, {"name": "a", "size": 0}),
        ({"name": "a", "size": 1}, {"name": "a", "size": 2}),
        ({"name": "a", "checksum": SUM}, {"name": "a"}),
        ({"name": "a", "checksum": SUM}, {"name": "a", "checksum": "f" * 64}),
        ({"name": "a", "expire_at": 1}, {"name": "a", "expire_at": 2}),
        ({"name": "a", "segments_ttl": 1}, {"name": "a", "segments_ttl": 2}),
        ({"name": "a"}, {"name": "a", "user_data": {}}),
        ({"name": "a", "user_data": 1}, {"name": "a", "user_data": 1.0}),
        ({"name": "a", "user_data": 1}, {"name": "a", "user_data": True}),
        ({"name": "a", "user_data": 0}, {"name": "a", "user_data": False}),
        ({"name": "a", "user_data": "1"}, {"name": "a", "user_data": 1}),
        ({"name": "a", "user_data": [1, 2]}, {"name": "a", "user_data": [2, 1]}),
        ({"name": "a", "user_data": {"k": 1}}, {"name": "a", "user_data": {"k": 2}}),
        ({"name": "a", "user_data": {"k": None}}, {"name": "a", "user_data": {}}),
    ],
)
def test_different_metadata(left: dict[str, Any], right: dict[str, Any]) -> None:
    assert meta(**left) != meta(**right)


def test_not_equal_to_other_types() -> None:
    assert FileMeta("a") != {"name": "a"}
    assert FileMeta("a") != "a"


def test_to_json_obj_canonical() -> None:
    m = meta(
        user_data={"z": 1},
        segments_ttl="9",
        expire_at="8",
        checksum=SUM,
        size=" 7",
        name="n",
        other=1,
    )
    obj = m.to_json_obj()
    assert obj == {
        "name": "n",
        "size": 7,
        "checksum": SUM.upper(),
        "expire_at": 8,
        "segments_ttl": 9,
        "user_data": {"z": 1},
    }
    assert list(obj) == ["name", "size", "checksum", "expire_at", "segments_ttl", "user_data"]
    assert meta(name="n", size=1).to_json_obj() == {"name": "n", "size": 1}


def test_to_json_obj_is_a_copy() -> None:
    m = meta(name="a", user_data={"k": [1]})
    obj = m.to_json_obj()
    user_data = obj["user_data"]
    assert isinstance(user_data, dict)
    items = user_data["k"]
    assert isinstance(items, list)
    items.append(2)
    assert m.user_data == {"k": [1]}


def test_to_json_bytes() -> None:
    m = meta(name="é", size=1)
    assert m.to_json_bytes() == '{"name":"é","size":1}'.encode()


def test_filemeta_from_manifest_object() -> None:
    obj: dict[str, Any] = {"name": "a", "checksum": SUM, "clientid": "c", "fileid": "f"}
    assert filemeta_from_obj(obj) == FileMeta("a", checksum=SUM.upper())


# ------------------------------------------------------------------------------------------
# properties

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=10,
)
NAME = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/\\:\x7f\ufffe\uffff"),
    min_size=1,
    max_size=30,
).filter(lambda s: s not in (".", ".."))
UINT = st.integers(min_value=1, max_value=2**64)


@given(
    NAME,
    st.none() | UINT,
    st.none() | st.text("0123456789abcdefABCDEF", min_size=64, max_size=64),
    st.none() | UINT,
    st.none() | UINT,
    JSON,
    st.booleans(),
)
def test_roundtrip_through_canonical_json(
    name: str,
    size: int | None,
    checksum: str | None,
    expire_at: int | None,
    ttl: int | None,
    user_data: Any,
    as_strings: bool,
) -> None:
    def num(v: int | None) -> object:
        return f" {v}" if as_strings and v is not None else v

    payload = {
        "name": name,
        "size": num(size),
        "checksum": checksum,
        "expire_at": num(expire_at),
        "segments_ttl": num(ttl),
        "user_data": user_data,
    }
    m = parse_filemeta(json.dumps(payload).encode())
    assert m.name == name and m.size == size and m.expire_at == expire_at
    assert m.checksum == (checksum.upper() if checksum else None)
    assert m.has_user_data == (user_data is not None)
    again = parse_filemeta(m.to_json_bytes())
    assert again == m and hash(again) == hash(m)
    assert again.to_json_obj() == m.to_json_obj()


# An independent reading of docs/protocol.md §3, written from the text and sharing no code
# with ftserver.meta: what a payload is (an error class, or the fields a FileMeta must have).
# "JSON" is RFC 8259 JSON: the standard library's decoder with its extensions (the NaN and
# Infinity literals, numbers beyond a double) turned off; numeric strings may have JSON
# whitespace around the digits, as ftserver.meta documents.

Expected = dict[str, Any] | type[errors.FtError]


def _oracle_printable(cp: int) -> bool:
    return (
        0x20 <= cp <= 0x7E
        or 0xA0 <= cp <= 0xD7FF
        or 0xE000 <= cp <= 0xFFFD
        or 0x10000 <= cp <= 0x10FFFF
    )


def _oracle_name(value: object) -> bool:
    if not isinstance(value, str) or not all(_oracle_printable(ord(c)) for c in value):
        return False
    return (
        0 < len(value.encode("utf-8")) <= 240
        and value not in (".", "..")
        and not any(c in value for c in "/\\:")
    )


def _oracle_uint(value: object, minimum: int) -> tuple[bool, int | None]:
    """(valid, the integer or None when absent)."""
    if value is None:
        return True, None
    if isinstance(value, str):
        digits = value.strip(" \t\n\r")
        if not digits or any(c not in "0123456789" for c in digits):
            return False, None
        value = int(digits)
    if type(value) is not int or value < minimum:  # bool and float are not integers here
        return False, None
    return True, value


def _oracle_utf8_able(value: object) -> bool:
    """No lone surrogate anywhere (keys included): the value can be written as UTF-8."""
    if isinstance(value, str):
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list):
        return all(_oracle_utf8_able(v) for v in value)
    if isinstance(value, dict):
        return all(_oracle_utf8_able(k) and _oracle_utf8_able(v) for k, v in value.items())
    return True


def oracle_object(obj: dict[str, Any]) -> Expected:
    """The fields §3 gives a decoded JSON object (absent ones left out), or the error."""
    out: dict[str, Any] = {}
    if not _oracle_name(obj.get("name")):
        return errors.InvalidFileMeta
    out["name"] = obj["name"]
    for key, minimum in (("size", 0), ("expire_at", 0), ("segments_ttl", 1)):
        ok, number = _oracle_uint(obj.get(key), minimum)
        if not ok:
            return errors.InvalidFileMeta
        if number is not None:
            out[key] = number
    checksum = obj.get("checksum")
    if checksum is not None:
        if not (
            isinstance(checksum, str)
            and len(checksum) == 64
            and all(c in "0123456789abcdefABCDEF" for c in checksum)
        ):
            return errors.InvalidFileMeta
        out["checksum"] = checksum.upper()
    user_data = obj.get("user_data")
    if user_data is not None:
        if not _oracle_utf8_able(user_data):
            return errors.InvalidFileMeta
        out["user_data"] = user_data
    return out


def _not_json(literal: str) -> float:
    raise ValueError(literal)


def _double(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value


def oracle_payload(payload: bytes) -> Expected:
    try:
        text = payload.decode("utf-8")
        obj = json.loads(text, parse_constant=_not_json, parse_float=_double)
    except (ValueError, RecursionError):
        return errors.InvalidFileMetaJson
    if not isinstance(obj, dict):
        return errors.InvalidFileMetaJson
    return oracle_object(obj)


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True)


def check_meaning(m: FileMeta, expected: dict[str, Any]) -> None:
    """``m`` says what the input said, and normalising it again changes nothing."""
    assert m.name == expected["name"]
    assert m.size == expected.get("size")
    assert m.checksum == expected.get("checksum")
    assert m.expire_at == expected.get("expire_at")
    assert m.segments_ttl == expected.get("segments_ttl")
    assert m.has_user_data == ("user_data" in expected)
    if m.has_user_data:  # kept as it is: same JSON, same types (1, 1.0 and true differ)
        assert _canonical(m.user_data) == _canonical(expected["user_data"])
    else:
        assert m.user_data is None
    obj = m.to_json_obj()
    assert set(obj) == set(expected)  # null and absent are the same: left out
    again = parse_filemeta(m.to_json_bytes())
    assert again == m and hash(again) == hash(m)
    assert again.to_json_bytes() == m.to_json_bytes()


def check_against_oracle(payload: bytes, expected: Expected) -> None:
    try:
        m = parse_filemeta(payload)
    except (errors.InvalidFileMetaJson, errors.InvalidFileMeta) as exc:
        assert type(exc) is expected, f"{payload!r}: {type(exc).__name__}, spec: {expected}"
        return
    assert isinstance(expected, dict), f"{payload!r} accepted, spec: {expected}"
    check_meaning(m, expected)


def test_oracle_agrees_with_the_spec_examples() -> None:
    """The oracle itself, on the spec's own examples (so that agreeing with it means
    something)."""
    assert oracle_payload(b"[]") is errors.InvalidFileMetaJson
    assert oracle_payload(b'{"name": "a", "x": NaN}') is errors.InvalidFileMetaJson
    assert oracle_payload(b'{"name": "a", "x": 1e400}') is errors.InvalidFileMetaJson
    assert oracle_payload(b'\xef\xbb\xbf{"name": "a"}') is errors.InvalidFileMetaJson
    assert oracle_payload(b'{"name": "a", "size": " 012 ", "checksum": null}') == {
        "name": "a",
        "size": 12,
    }
    assert oracle_payload(b'{"name": "a", "size": 12.0}') is errors.InvalidFileMeta
    assert oracle_payload(b'{"name": "a", "segments_ttl": "0"}') is errors.InvalidFileMeta
    assert oracle_payload(b'{"name": "a:b"}') is errors.InvalidFileMeta
    assert oracle_object({"name": "é" * 120}) == {"name": "é" * 120}
    assert oracle_object({"name": "é" * 121}) is errors.InvalidFileMeta
    assert oracle_object({"name": "a", "user_data": ["\ud800"]}) is errors.InvalidFileMeta
    assert oracle_object({"name": "a", "checksum": "aB" * 32}) == {
        "name": "a",
        "checksum": "AB" * 32,
    }


# each field: a valid value three times in four (else few objects would be accepted at all)
GOOD_NAME = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\:"),
    min_size=1,
    max_size=20,
) | st.sampled_from(["é" * 120, "a" * 240, "日本語.txt", "%2F", ". ", "\xa0", "..."])
BAD_NAME = st.one_of(
    st.text(max_size=6),
    st.sampled_from([".", "..", "a/b", "a\\b", "C:", "\x7f", "\x85", "\ufffe", "\ud800"]),
    st.sampled_from(["é" * 121, "a" * 241, ""]),
    st.none() | st.booleans() | st.integers() | st.lists(st.just("a"), max_size=1),
)
#: around the digits of a numeric string: JSON whitespace, and now and then other whitespace
#: (which the oracle refuses)
PADDING = st.sampled_from(["", "", " ", "  ", "\t", "\n ", "\r", "\x0b", "\x0c", "\xa0"])
GOOD_UINT = st.one_of(
    st.integers(min_value=0, max_value=2**70),
    st.sampled_from([0, 1, "0", "1", " 0 "]),
    st.builds(
        lambda before, zeros, n, after: f"{before}{'0' * zeros}{n}{after}",
        PADDING,
        st.integers(0, 3),
        st.integers(0, 10**12),
        PADDING,
    ),
    st.none(),
)
BAD_UINT = st.one_of(
    st.integers(max_value=-1),
    st.sampled_from(["", " ", "-1", "+1", "1e3", "1.5", "12.0", "0x10", "1_000", "1 2"]),
    st.sampled_from(["１２", "١", "²", "\x0b1", "\x0c1"]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans() | st.lists(st.integers(0, 9), max_size=1),
)
GOOD_SUM = st.one_of(
    st.binary(min_size=32, max_size=32).map(bytes.hex),
    st.binary(min_size=32, max_size=32).map(lambda b: b.hex()[:20].upper() + b.hex()[20:]),
    st.none(),
)
BAD_SUM = st.one_of(
    st.sampled_from([0, 63, 65]).flatmap(
        lambda n: st.text("0123456789abcdefABCDEF", min_size=n, max_size=n)
    ),
    st.text("0123456789abcdefg ", min_size=64, max_size=64),
    st.integers() | st.lists(st.just("ab"), max_size=1),
)
BAD_USER_DATA = st.sampled_from(["\ud800", {"\udfff": 1}, ["ok", "\ud83d"]])


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four (one_of would weigh every branch of both alike)."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda ok: good if ok else bad)


FIELD_VALUES = {
    "name": mostly(GOOD_NAME, BAD_NAME),
    "size": mostly(GOOD_UINT, BAD_UINT),
    "checksum": mostly(GOOD_SUM, BAD_SUM),
    "expire_at": mostly(GOOD_UINT, BAD_UINT),
    "segments_ttl": mostly(GOOD_UINT, BAD_UINT),
    "user_data": mostly(JSON, BAD_USER_DATA),
    "x": JSON | BAD_USER_DATA,  # an unknown key: whatever it holds does not matter
}
OBJECTS = st.one_of(
    st.fixed_dictionaries(
        {"name": FIELD_VALUES["name"]},
        optional={k: v for k, v in FIELD_VALUES.items() if k != "name"},
    ),
    st.fixed_dictionaries({}, optional=FIELD_VALUES),
)


def _encode(obj: object, ascii_only: bool) -> bytes:
    # surrogatepass: a lone surrogate written raw is bytes that are not UTF-8
    return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


ENCODED = st.builds(_encode, OBJECTS, st.booleans())
PAYLOADS = mostly(
    ENCODED,
    st.one_of(
        st.binary(max_size=64),
        # damaged objects: cut short, a byte changed, something after the object
        st.builds(
            lambda raw, i: raw[: i % (len(raw) + 1)],
            st.builds(_encode, OBJECTS, st.booleans()),
            st.integers(0),
        ),
        st.builds(
            lambda raw, i, byte: raw[: i % len(raw)] + bytes([byte]) + raw[i % len(raw) + 1 :],
            st.builds(_encode, OBJECTS, st.booleans()),
            st.integers(0),
            st.integers(0, 255),
        ),
        st.builds(
            lambda raw, tail: raw + tail,
            st.builds(_encode, OBJECTS, st.just(True)),
            st.sampled_from([b" x", b"}", b"\xef\xbb\xbf", b" \n"]),
        ),
        st.builds(lambda raw: b"\xef\xbb\xbf" + raw, st.builds(_encode, OBJECTS, st.just(True))),
        # JSON that is not an object
        st.builds(_encode, JSON.filter(lambda v: not isinstance(v, dict)), st.booleans()),
        st.sampled_from(
            [
                b'{"name": "a", "x": NaN}',
                b'{"name": "a", "x": -Infinity}',
                b'{"name": "a", "x": 1e400}',
            ]
        ),
    ),
)


@given(PAYLOADS)
def test_random_payload_only_ft_errors(payload: bytes) -> None:
    """Any payload: refused with the class §3 predicts (invalid_filemeta_json for what is not
    a JSON object, invalid_filemeta for a field that breaks its rule), or accepted as a
    FileMeta that says what the payload said."""
    check_against_oracle(payload, oracle_payload(payload))


@given(OBJECTS)
def test_random_objects_only_ft_errors(obj: dict[str, Any]) -> None:
    """Any JSON object: refused with invalid_filemeta exactly when a field breaks its rule;
    otherwise name, size, checksum (upper-cased), expire_at, segments_ttl and user_data mean
    what the object said, numeric strings read as integers, null counts as absent."""
    check_against_oracle(_encode(obj, True), oracle_object(obj))

"""The topic grammar of PROTOCOL.md §2: every row of the dispatch order, both prefixes."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftserver import errors
from ftserver.transfer.commands import (
    INT_CLAMP,
    Abort,
    Fin,
    Init,
    Segment,
    check_file_size,
    check_segment_checksum,
    parse_command,
    parse_sha256_hex,
    parse_uint,
)

PREFIXES = [("$file/", False), ("$file-async/", True)]

SUM_LOWER = "ab" * 32
SUM_UPPER = "AB" * 32
SUM_BYTES = b"\xab" * 32


@pytest.fixture(params=PREFIXES, ids=["sync", "async"])
def prefix(request: pytest.FixtureRequest) -> tuple[str, bool]:
    result: tuple[str, bool] = request.param
    return result


# ------------------------------------------------------------------------------------------
# not a command at all


@pytest.mark.parametrize(
    "topic",
    [
        "$file",
        "$file-async",
        "$files/x/init",
        "$file-asyncx/x/init",
        "file/x/init",
        "/$file/x/init",
        "$FILE/x/init",
        "$file-response/client",
        "$file\\x\\init",
        "sensors/temperature",
        "",
        "$SYS/broker",
    ],
)
def test_not_a_command(topic: str) -> None:
    assert parse_command(topic) is None


# ------------------------------------------------------------------------------------------
# valid commands


def test_init(prefix: tuple[str, bool]) -> None:
    p, is_async = prefix
    assert parse_command(f"{p}file-1/init") == Init("file-1", is_async)


def test_init_named_init(prefix: tuple[str, bool]) -> None:
    """`$file/init/init` is a valid init of the transfer called `init`."""
    p, is_async = prefix
    assert parse_command(f"{p}init/init") == Init("init", is_async)


def test_abort(prefix: tuple[str, bool]) -> None:
    p, is_async = prefix
    assert parse_command(f"{p}f/abort") == Abort("f", is_async)


def test_segment(prefix: tuple[str, bool]) -> None:
    p, is_async = prefix
    assert parse_command(f"{p}f/1024") == Segment("f", 1024, None, is_async)


def test_segment_zero_and_leading_zeros(prefix: tuple[str, bool]) -> None:
    p, _ = prefix
    cmd = parse_command(f"{p}f/0")
    assert isinstance(cmd, Segment) and cmd.offset == 0
    cmd = parse_command(f"{p}f/000042")
    assert isinstance(cmd, Segment) and cmd.offset == 42


def test_segment_with_checksum_either_case(prefix: tuple[str, bool]) -> None:
    p, is_async = prefix
    for text in (SUM_LOWER, SUM_UPPER, "aB" * 32):
        assert parse_command(f"{p}f/7/{text}") == Segment("f", 7, SUM_BYTES, is_async)


def test_fin(prefix: tuple[str, bool]) -> None:
    p, is_async = prefix
    assert parse_command(f"{p}f/fin/100") == Fin("f", 100, None, is_async)
    assert parse_command(f"{p}f/fin/0") == Fin("f", 0, None, is_async)


def test_fin_with_checksum(prefix: tuple[str, bool]) -> None:
    p, is_async = prefix
    assert parse_command(f"{p}f/fin/100/{SUM_UPPER}") == Fin("f", 100, SUM_BYTES, is_async)


def test_fin_named_fileid(prefix: tuple[str, bool]) -> None:
    """The words init, fin, abort are fine as fileIds: only the rest decides."""
    p, is_async = prefix
    assert parse_command(f"{p}fin/fin/3") == Fin("fin", 3, None, is_async)
    assert parse_command(f"{p}abort/abort") == Abort("abort", is_async)
    assert parse_command(f"{p}fin/0") == Segment("fin", 0, None, is_async)


@pytest.mark.parametrize(
    "file_id",
    ["a", "f.txt", "日本語", "🎉", "with space", "%41", "a:b", "a\\b", "x" * 255, "é" * 127],
)
def test_fileid_any_nonempty_level(prefix: tuple[str, bool], file_id: str) -> None:
    p, is_async = prefix
    assert parse_command(f"{p}{file_id}/init") == Init(file_id, is_async)


def test_checksum_is_raw_bytes() -> None:
    digest = hashlib.sha256(b"x").digest()
    cmd = parse_command(f"$file/f/0/{digest.hex()}")
    assert isinstance(cmd, Segment) and cmd.checksum == digest


def test_commands_are_frozen() -> None:
    cmd = parse_command("$file/f/1")
    assert cmd is not None
    with pytest.raises(AttributeError):
        cmd.file_id = "g"  # type: ignore[misc]
    assert not hasattr(cmd, "__dict__")  # slotted


# ------------------------------------------------------------------------------------------
# the dispatch order, row by row

INVALID = [
    # 1. empty fileId
    ("/init", errors.InvalidFileId),
    ("//init", errors.InvalidFileId),
    ("", errors.InvalidFileId),
    ("/0", errors.InvalidFileId),
    ("/fin/12", errors.InvalidFileId),
    ("/a/b/c/d", errors.InvalidFileId),
    # 3. fin with a bad size or checksum
    ("ID/fin/x", errors.InvalidSize),
    ("ID/fin/", errors.InvalidSize),
    ("ID/fin/-1", errors.InvalidSize),
    ("ID/fin/x/zz", errors.InvalidSize),
    ("ID/fin/12/zz", errors.InvalidChecksum),
    ("ID/fin/12/", errors.InvalidChecksum),
    (f"ID/fin/12/{SUM_LOWER}0", errors.InvalidChecksum),
    (f"ID/fin/12/{SUM_LOWER[:-1]}", errors.InvalidChecksum),
    (f"ID/fin/12/{SUM_LOWER[:-1]}g", errors.InvalidChecksum),
    # 5. one level: a segment with a bad offset
    ("ID/fin", errors.InvalidOffset),
    ("ID/", errors.InvalidOffset),
    ("ID/-1", errors.InvalidOffset),
    ("ID/+1", errors.InvalidOffset),
    ("ID/ 1", errors.InvalidOffset),
    ("ID/1 ", errors.InvalidOffset),
    ("ID/0x10", errors.InvalidOffset),
    ("ID/1e3", errors.InvalidOffset),
    ("ID/1_000", errors.InvalidOffset),
    ("ID/1.0", errors.InvalidOffset),
    ("ID/１２", errors.InvalidOffset),  # fullwidth digits
    ("ID/١٢", errors.InvalidOffset),  # Arabic-Indic digits
    ("ID/²", errors.InvalidOffset),  # superscript two: str.isdigit() is true
    ("ID/INIT", errors.InvalidOffset),
    ("ID/Abort", errors.InvalidOffset),
    # 6. two levels: a segment with checksum; offset first, then checksum
    ("ID/x/zz", errors.InvalidOffset),
    ("ID/init/x", errors.InvalidOffset),
    ("ID/abort/x", errors.InvalidOffset),
    ("ID//x", errors.InvalidOffset),
    (f"ID/-5/{SUM_LOWER}", errors.InvalidOffset),
    ("ID/5/zz", errors.InvalidChecksum),
    ("ID/5/", errors.InvalidChecksum),
    (f"ID/5/{SUM_LOWER[:-2]} 0", errors.InvalidChecksum),
    (f"ID/5/{'ａ' * 64}", errors.InvalidChecksum),  # fullwidth 'a'
    # 7. anything else
    ("ID", errors.InvalidFileCommand),
    ("ID/a/b/c", errors.InvalidFileCommand),
    ("ID/1/2/3", errors.InvalidFileCommand),
    (f"ID/fin/12/{SUM_LOWER}/x", errors.InvalidFileCommand),
    ("ID/init/a/b", errors.InvalidFileCommand),
    ("ID///", errors.InvalidFileCommand),
]


@pytest.mark.parametrize(("rest", "error"), INVALID, ids=[r for r, _ in INVALID])
def test_dispatch_errors(prefix: tuple[str, bool], rest: str, error: type[errors.FtError]) -> None:
    p, _ = prefix
    with pytest.raises(error) as info:
        parse_command(p + rest)
    # exactly this class, not a sibling that happens to share a base
    assert type(info.value) is error
    assert info.value.reason_code == 0x80


def test_error_descriptions_are_emqx_names() -> None:
    expected = {
        "ID/init/a/b": "invalid_file_command",
        "/init": "invalid_fileid",
        "ID/x": "invalid_offset",
        "ID/fin/x": "invalid_size",
        "ID/fin/1/x": "invalid_checksum",
    }
    for rest, description in expected.items():
        with pytest.raises(errors.FtError) as info:
            parse_command("$file/" + rest)
        assert info.value.description == description


# ------------------------------------------------------------------------------------------
# fileId length after escaping


def test_fileid_255_escaped_bytes_ok() -> None:
    assert parse_command("$file/" + "a" * 255 + "/init") == Init("a" * 255)


def test_fileid_256_bytes_too_long() -> None:
    with pytest.raises(errors.InvalidFileId):
        parse_command("$file/" + "a" * 256 + "/init")


def test_fileid_limit_counts_escaped_form() -> None:
    # ':' escapes to '%3A': 85 of them are 255 bytes, 86 are 258
    assert parse_command("$file/" + ":" * 85 + "/init") == Init(":" * 85)
    with pytest.raises(errors.InvalidFileId):
        parse_command("$file/" + ":" * 86 + "/init")
    # a control character escapes to 3 bytes as well
    with pytest.raises(errors.InvalidFileId):
        parse_command("$file/" + "\x01" * 86 + "/init")


def test_fileid_limit_counts_utf8_bytes() -> None:
    # 'é' is printable, kept as is, 2 bytes of UTF-8: 127 fit (254), 128 do not (256)
    assert parse_command("$file/" + "é" * 127 + "/0") == Segment("é" * 127, 0)
    with pytest.raises(errors.InvalidFileId):
        parse_command("$file/" + "é" * 128 + "/0")
    # U+FFFE is not printable: 3 UTF-8 bytes, each escaped to 3 characters = 9 bytes
    assert parse_command("$file/" + "\ufffe" * 28 + "/0") == Segment("\ufffe" * 28, 0)
    with pytest.raises(errors.InvalidFileId):
        parse_command("$file/" + "\ufffe" * 29 + "/0")


def test_fileid_dot_names_are_valid() -> None:
    """'.' and '..' are legal fileIds: esc() turns them into %2E and %2E%2E."""
    assert parse_command("$file/./init") == Init(".")
    assert parse_command("$file/../init") == Init("..")


def test_fileid_checked_before_rest() -> None:
    with pytest.raises(errors.InvalidFileId):
        parse_command("$file/" + "a" * 300 + "/x/y/z/w")


# ------------------------------------------------------------------------------------------
# integers and checksums


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("7", 7),
        ("0007", 7),
        ("18446744073709551616", 2**64),
        ("99999999999999999999", 99999999999999999999),
        ("0" * 40 + "12", 12),
        ("0" * 40, 0),
        ("1" + "0" * 20, INT_CLAMP),
        ("9" * 5000, INT_CLAMP),
    ],
)
def test_parse_uint_values(text: str, value: int) -> None:
    assert parse_uint(text) == value


@pytest.mark.parametrize(
    "text", ["", "-0", "+0", " 1", "1 ", "0x1", "1e2", "1_0", "١", "１", "٣", "²", "1.", "⑴"]
)
def test_parse_uint_rejects(text: str) -> None:
    assert parse_uint(text) is None


def test_int_clamp_exceeds_any_configurable_file_size() -> None:
    from ftserver.config import MAX_FILE_SIZE_CAP

    assert INT_CLAMP > MAX_FILE_SIZE_CAP


def test_huge_offset_is_file_too_large_not_invalid() -> None:
    cmd = parse_command("$file/f/" + "9" * 10_000)
    assert isinstance(cmd, Segment)
    with pytest.raises(errors.FileTooLarge):
        check_file_size(2**63 - 1, cmd.offset, 0)


@given(st.integers(min_value=0, max_value=10**20 - 1), st.integers(min_value=0, max_value=30))
def test_parse_uint_roundtrip(value: int, zeros: int) -> None:
    assert parse_uint("0" * zeros + str(value)) == value


@given(st.text(max_size=30))
def test_parse_uint_agrees_with_ascii_oracle(text: str) -> None:
    oracle_ok = text != "" and all(c in "0123456789" for c in text)
    result = parse_uint(text)
    assert (result is not None) == oracle_ok
    if oracle_ok and len(text.lstrip("0")) <= 20:
        assert result == int(text)


def test_parse_sha256_hex() -> None:
    assert parse_sha256_hex(SUM_LOWER) == SUM_BYTES
    assert parse_sha256_hex("0" * 64) == bytes(32)
    assert parse_sha256_hex("0" * 63) is None
    assert parse_sha256_hex("0" * 65) is None
    assert parse_sha256_hex("0" * 62 + " 0") is None
    assert parse_sha256_hex(" " + "0" * 63) is None
    assert parse_sha256_hex("g" + "0" * 63) is None
    assert parse_sha256_hex("é" + "0" * 63) is None


# ------------------------------------------------------------------------------------------
# checks after parsing


def test_check_segment_checksum() -> None:
    payload = b"hello segment"
    good = Segment("f", 0, hashlib.sha256(payload).digest())
    check_segment_checksum(good, payload)
    check_segment_checksum(good, memoryview(bytearray(payload)))
    with pytest.raises(errors.ChecksumMismatch) as info:
        check_segment_checksum(good, payload + b"!")
    assert info.value.description == "checksum_mismatch" and info.value.reason_code == 0x80
    check_segment_checksum(Segment("f", 0, None), b"anything")


def test_check_segment_checksum_from_topic() -> None:
    payload = b"\x00" * 100
    topic = f"$file/f/0/{hashlib.sha256(payload).hexdigest().upper()}"
    cmd = parse_command(topic)
    assert isinstance(cmd, Segment)
    check_segment_checksum(cmd, payload)
    with pytest.raises(errors.ChecksumMismatch):
        check_segment_checksum(cmd, payload[:-1])


def test_check_file_size() -> None:
    check_file_size(100, 0, 100)
    check_file_size(100, 100, 0)
    check_file_size(100, 60, 40)
    with pytest.raises(errors.FileTooLarge) as info:
        check_file_size(100, 60, 41)
    assert info.value.reason_code == 0x83 and info.value.description == "file_too_large"
    with pytest.raises(errors.FileTooLarge):
        check_file_size(100, 101, 0)  # a fin whose size is over the limit


# ------------------------------------------------------------------------------------------
# properties

LEVEL = st.one_of(
    st.sampled_from(["init", "fin", "abort", "", "0", "12", SUM_LOWER, "-1", "１"]),
    st.text(max_size=12),
)


FUZZ = settings(max_examples=int(os.environ.get("FTSERVER_FUZZ_EXAMPLES", "100")), deadline=None)


@FUZZ
@given(st.lists(LEVEL, max_size=6), st.sampled_from(["$file/", "$file-async/", "$file", ""]))
def test_parse_never_raises_anything_but_fterror(levels: list[str], head: str) -> None:
    topic = head + "/".join(levels)
    try:
        cmd = parse_command(topic)
    except errors.FtError:
        return
    if cmd is not None:
        assert topic.startswith(("$file/", "$file-async/"))
        assert cmd.is_async == topic.startswith("$file-async/")


# An independent reading of docs/protocol.md §2 (the spec table and the dispatch order, the
# integer, checksum and fileId rules, and §6's escaping for the fileId's length), written from
# the text and sharing no code with the parser. A command is a plain tuple here:
# ("init" | "abort", fileId, async), ("segment", fileId, offset, checksum bytes or None, async),
# ("fin", fileId, size, checksum bytes or None, async).

#: the documented clamp: offsets and sizes above 20 significant digits read as 10**20
ORACLE_CLAMP = 10**20


def _oracle_uint(text: str) -> int | None:
    if not text or any(c not in "0123456789" for c in text):
        return None
    return min(int(text), ORACLE_CLAMP)


def _oracle_sha256(text: str) -> bytes | None:
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        return None
    return bytes(int(text[i : i + 2], 16) for i in range(0, 64, 2))


def _oracle_printable(cp: int) -> bool:
    return (
        0x20 <= cp <= 0x7E
        or 0xA0 <= cp <= 0xD7FF
        or 0xE000 <= cp <= 0xFFFD
        or 0x10000 <= cp <= 0x10FFFF
    )


def _oracle_escaped_bytes(file_id: str) -> int:
    if file_id in (".", ".."):
        return 3 * len(file_id)
    total = 0
    for ch in file_id:
        n = len(ch.encode("utf-8", "surrogatepass"))
        total += 3 * n if ch in "%:\\/" or not _oracle_printable(ord(ch)) else n
    return total


OracleResult = tuple[object, ...] | type[errors.FtError] | None


def oracle(topic: str) -> OracleResult:
    """What docs/protocol.md §2 says ``topic`` is: None (not a command), an error class, or a
    command tuple."""
    if topic.startswith("$file/"):
        head, is_async = "$file/", False
    elif topic.startswith("$file-async/"):
        head, is_async = "$file-async/", True
    else:
        return None
    file_id, *rest = topic[len(head) :].split("/")
    # 1. the fileId level is empty (or too long once escaped)
    if not file_id or _oracle_escaped_bytes(file_id) > 255:
        return errors.InvalidFileId
    # 2. init
    if rest == ["init"]:
        return ("init", file_id, is_async)
    # 3. fin/size[/checksum]
    if len(rest) in (2, 3) and rest[0] == "fin":
        size = _oracle_uint(rest[1])
        if size is None:
            return errors.InvalidSize
        fin_sum = _oracle_sha256(rest[2]) if len(rest) == 3 else None
        if len(rest) == 3 and fin_sum is None:
            return errors.InvalidChecksum
        return ("fin", file_id, size, fin_sum, is_async)
    # 4. abort
    if rest == ["abort"]:
        return ("abort", file_id, is_async)
    # 5. and 6. a segment, without or with checksum: the offset first
    if len(rest) in (1, 2):
        offset = _oracle_uint(rest[0])
        if offset is None:
            return errors.InvalidOffset
        seg_sum = _oracle_sha256(rest[1]) if len(rest) == 2 else None
        if len(rest) == 2 and seg_sum is None:
            return errors.InvalidChecksum
        return ("segment", file_id, offset, seg_sum, is_async)
    # 7. anything else
    return errors.InvalidFileCommand


def as_tuple(cmd: object) -> tuple[object, ...]:
    """A parsed command in the oracle's terms."""
    if isinstance(cmd, Init):
        return ("init", cmd.file_id, cmd.is_async)
    if isinstance(cmd, Abort):
        return ("abort", cmd.file_id, cmd.is_async)
    if isinstance(cmd, Segment):
        return ("segment", cmd.file_id, cmd.offset, cmd.checksum, cmd.is_async)
    assert isinstance(cmd, Fin)
    return ("fin", cmd.file_id, cmd.size, cmd.checksum, cmd.is_async)


def rebuild(cmd: object) -> str:
    """A topic for ``cmd``, written from its fields (lowercase hex, no leading zeros)."""
    fields = as_tuple(cmd)
    head = "$file-async/" if fields[-1] else "$file/"
    kind, file_id = fields[0], fields[1]
    if kind in ("init", "abort"):
        return f"{head}{file_id}/{kind}"
    number, digest = fields[2], fields[3]
    tail = "" if digest is None else "/" + bytes(digest).hex()  # type: ignore[call-overload]
    middle = f"fin/{number}" if kind == "fin" else f"{number}"
    return f"{head}{file_id}/{middle}{tail}"


def test_oracle_agrees_with_the_spec_examples(prefix: tuple[str, bool]) -> None:
    """The oracle itself, on the spec's own examples (so that agreeing with it means
    something)."""
    p, a = prefix
    assert oracle(f"{p}init/init") == ("init", "init", a)
    assert oracle(f"{p}ID/fin") is errors.InvalidOffset
    assert oracle(f"{p}ID/fin/x") is errors.InvalidSize
    assert oracle(f"{p}ID/007/{SUM_UPPER}") == ("segment", "ID", 7, SUM_BYTES, a)
    assert oracle(f"{p}ID/fin/9/{SUM_LOWER}") == ("fin", "ID", 9, SUM_BYTES, a)
    assert oracle(f"{p}ID/5/zz") is errors.InvalidChecksum
    assert oracle(f"{p}ID/a/b/c") is errors.InvalidFileCommand
    assert oracle(f"{p}" + ":" * 85 + "/abort") == ("abort", ":" * 85, a)
    assert oracle(f"{p}" + ":" * 86 + "/abort") is errors.InvalidFileId
    assert oracle(f"{p}" + "9" * 30 + "/" + "9" * 30) == (
        "segment",
        "9" * 30,
        ORACLE_CLAMP,
        None,
        a,
    )
    assert oracle("$file") is None and oracle("$FILE/x/init") is None


DIGITS = st.one_of(
    st.integers(min_value=0, max_value=10**22).map(str),
    st.builds(lambda z, n: "0" * z + str(n), st.integers(0, 25), st.integers(0, 10**6)),
    st.sampled_from(["-1", "+1", " 1", "1 ", "0x10", "1e3", "1_0", "١٢", "１", "²", "1.0"]),
)
HEXISH = st.one_of(
    st.binary(min_size=32, max_size=32).map(bytes.hex),
    st.binary(min_size=32, max_size=32).map(lambda b: b.hex().upper()[:31] + b.hex()[31:]),
    st.sampled_from([63, 65, 0, 128]).flatmap(
        lambda n: st.text("0123456789abcdefABCDEF", min_size=n, max_size=n)
    ),
    st.builds(
        lambda digest, i, bad: digest.hex()[:i] + bad + digest.hex()[i + 1 :],
        st.binary(min_size=32, max_size=32),
        st.integers(0, 63),
        st.sampled_from(["g", " ", "ａ", "é", "/", "-"]),
    ),
)
FILE_ID = st.one_of(
    st.text(st.characters(blacklist_characters="/"), max_size=12),
    st.sampled_from(["init", "fin", "abort", ".", "..", "a" * 255, "a" * 256, ":" * 85, ":" * 86]),
    st.sampled_from(["é" * 127, "é" * 128, "\ufffe" * 28, "\ufffe" * 29, "%" * 85, "%" * 86]),
)
TOPIC_LEVEL = st.one_of(
    st.sampled_from(["init", "fin", "abort", "", "INIT", "Fin"]),
    DIGITS,
    HEXISH,
    st.text(max_size=8),
)
STRUCTURED_TOPIC = st.builds(
    lambda head, file_id, levels: head + "/".join([file_id, *levels]),
    # mostly commands (the random text covers everything else)
    st.sampled_from(["$file/", "$file-async/"] * 4 + ["$file", "$file-asyncx/"]),
    FILE_ID,
    st.one_of(
        # the shapes of the spec table, with good and bad numbers and checksums ...
        st.sampled_from([["init"], ["abort"]]),
        st.tuples(DIGITS).map(list),
        st.tuples(DIGITS, HEXISH).map(list),
        st.tuples(st.just("fin"), DIGITS).map(list),
        st.tuples(st.just("fin"), DIGITS, HEXISH).map(list),
        # ... and any levels
        st.lists(TOPIC_LEVEL, max_size=4),
    ),
)


@FUZZ
@given(st.one_of(st.text(max_size=60), STRUCTURED_TOPIC, STRUCTURED_TOPIC, STRUCTURED_TOPIC))
def test_parse_random_text(topic: str) -> None:
    """Every topic means what the spec says: a refusal is the one the dispatch order predicts,
    and an accepted command's fields are the topic's (fileId the second level, numbers the
    decimal digits, checksums the 32 bytes of the hex) and round-trip through a topic rebuilt
    from them."""
    expected = oracle(topic)
    try:
        cmd = parse_command(topic)
    except errors.FtError as exc:
        assert type(exc) is expected, f"{topic!r}: {type(exc).__name__}, spec: {expected}"
        assert exc.reason_code == 0x80
        return
    if expected is None:
        assert cmd is None
        return
    assert cmd is not None and as_tuple(cmd) == expected, f"{topic!r}: {cmd}, spec: {expected}"
    assert cmd.file_id == topic.split("/")[1]
    again = parse_command(rebuild(cmd))
    assert again == cmd


@given(
    st.text(st.characters(blacklist_characters="/"), min_size=1, max_size=20),
    st.integers(min_value=0, max_value=2**64),
    st.booleans(),
)
def test_segment_roundtrip(file_id: str, offset: int, is_async: bool) -> None:
    p = "$file-async/" if is_async else "$file/"
    assert parse_command(f"{p}{file_id}/{offset}") == Segment(file_id, offset, None, is_async)


@given(
    st.text(st.characters(blacklist_characters="/"), min_size=1, max_size=20),
    st.integers(min_value=0, max_value=2**64),
    st.binary(min_size=32, max_size=32),
)
def test_fin_roundtrip(file_id: str, size: int, digest: bytes) -> None:
    assert parse_command(f"$file/{file_id}/fin/{size}/{digest.hex()}") == Fin(file_id, size, digest)

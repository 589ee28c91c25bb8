"""Names on disk and in object storage, identical to EMQX's (PROTOCOL.md §6).

Everything here is pure: strings in, strings (or paths, or bytes) out, no IO. Existing EMQX
tooling finds ftserver's exports only if these names match EMQX's byte for byte, so each
function states the exact rule it implements and the tests check EMQX's published vectors.

- :func:`esc` makes a clientId or fileId safe as one path component; :func:`unesc` reverses it.
- :func:`export_dir_parts` / :func:`export_relpath` give the local exporter's layout
  ``<B1>/<B2>/<B3>/<esc(clientId)>/<esc(fileId)>/<name>``.
- :func:`staging_relpath` gives ftserver's own staging directory for an unfinished transfer.
- :func:`manifest_bytes` renders the ``<name>.MANIFEST.json`` sidecar.
- :func:`s3_key` / :func:`s3_metadata` give the S3 exporter's object key and metadata.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ftserver.transfer.meta import FileMeta, JsonValue

__all__ = [
    "MANIFEST_SUFFIX",
    "MANIFEST_VSN",
    "S3_FILEMETA_VSN",
    "esc",
    "esc_len",
    "export_dir_parts",
    "export_relpath",
    "is_printable",
    "manifest_bytes",
    "manifest_relpath",
    "parse_manifest",
    "s3_key",
    "s3_metadata",
    "staging_bucket",
    "staging_relpath",
    "unesc",
]

#: suffix of the sidecar holding an export's metadata (``<name>.MANIFEST.json``)
MANIFEST_SUFFIX = ".MANIFEST.json"
#: version in the manifest prelude ``["filemeta", 1, {...}]``
MANIFEST_VSN = 1
#: value of ``x-amz-meta-filemeta-vsn`` on S3 objects
S3_FILEMETA_VSN = "1"

#: characters that are always percent-encoded by :func:`esc`, printable or not
_UNSAFE = frozenset("%:\\/")

#: keys EMQX writes in a manifest's object; ftserver's extra keys must not collide with them
_EMQX_META_KEYS = frozenset(("name", "size", "checksum", "expire_at", "segments_ttl", "user_data"))


def _is_hex(s: str) -> bool:
    return s.isascii() and all(c in "0123456789abcdefABCDEF" for c in s)


# Term-encoding prelude of EMQX's transfer hash: VERSION_MAGIC (131), SMALL_TUPLE_EXT (104),
# arity 2. Each element follows as BINARY_EXT (109), a 4-byte big-endian length, the bytes.
_TERM_TUPLE2 = b"\x83\x68\x02"
_TERM_BINARY = b"\x6d"


def is_printable(cp: int) -> bool:
    """Whether code point ``cp`` is printable in the sense of PROTOCOL.md §3 and §6.

    Printable means U+0020–U+007E, U+00A0–U+D7FF, U+E000–U+FFFD or U+10000–U+10FFFF (the
    ranges EMQX takes from Erlang's ``io_lib:printable_unicode_list/1``). Note that this is
    not Python's ``str.isprintable``, which differs outside ASCII (it rejects U+00A0, for
    instance).
    """
    if cp < 0x7F:
        return cp >= 0x20
    if cp < 0xD800:
        return cp >= 0xA0
    if cp < 0x10000:
        return 0xE000 <= cp <= 0xFFFD
    return cp <= 0x10FFFF


def _needs_no_escape(s: str) -> bool:
    """Fast check for the common case: printable ASCII with no unsafe character."""
    # For ASCII strings str.isprintable() is exactly U+0020..U+007E.
    return (
        s.isascii()
        and s.isprintable()
        and "%" not in s
        and ":" not in s
        and "\\" not in s
        and "/" not in s
        and s != "."
        and s != ".."
    )


def _pct(ch: str) -> str:
    # surrogatepass keeps esc() total (and injective) even for lone surrogates, which a
    # Python str may hold although no MQTT string can.
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))


def esc(s: str) -> str:
    """Escape ``s`` (a clientId or fileId) into one safe path component, as EMQX does.

    ``%``, ``:``, ``\\``, ``/`` and every non-printable code point (:func:`is_printable`)
    become ``%XX`` for each of their UTF-8 bytes, in uppercase hex; the exact names ``.`` and
    ``..`` become ``%2E`` and ``%2E%2E``; every other code point is kept. Because ``%`` itself
    is escaped, the mapping is injective: two different identifiers never share a directory.
    The result never contains ``/`` or NUL and is never ``.``, ``..`` or empty (unless ``s``
    is empty).
    """
    if _needs_no_escape(s):
        return s
    if s == "." or s == "..":
        return "%2E" * len(s)
    out: list[str] = []
    for ch in s:
        if ch in _UNSAFE or not is_printable(ord(ch)):
            out.append(_pct(ch))
        else:
            out.append(ch)
    return "".join(out)


def unesc(s: str) -> str:
    """The clientId or fileId whose :func:`esc` is ``s``: the inverse of :func:`esc`.

    Every ``%XX`` (hex digits, either case) stands for one byte; each run of them is decoded
    as UTF-8 (``surrogatepass``, as :func:`esc` encodes), so ``%2E%2E`` gives ``..`` and
    ``a%2Fb`` gives ``a/b``; every other character stands for itself. Raises ``ValueError``
    for a ``%`` not followed by two hex digits or bytes that are not UTF-8: such a directory
    was not made by :func:`esc` (nor by EMQX). ``unesc(esc(s)) == s`` for every ``s``.
    """
    if "%" not in s:
        return s
    out: list[str] = []
    pending = bytearray()
    i, n = 0, len(s)
    while i < n:
        ch = s[i]
        if ch == "%":
            hexpair = s[i + 1 : i + 3]
            if len(hexpair) != 2 or not _is_hex(hexpair):
                raise ValueError(f"bad escape at {i} in {s!r}")
            pending.append(int(hexpair, 16))
            i += 3
            continue
        if pending:
            out.append(_decode_escaped(pending, s))
            pending.clear()
        out.append(ch)
        i += 1
    if pending:
        out.append(_decode_escaped(pending, s))
    return "".join(out)


def _decode_escaped(raw: bytearray, whole: str) -> str:
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise ValueError(f"escaped bytes are not UTF-8 in {whole!r}") from None


def esc_len(s: str) -> int:
    """The length in UTF-8 bytes of ``esc(s)``, computed cheaply for the common cases.

    Both the fileId rule (PROTOCOL.md §2) and the clientId rule (§1) limit the escaped form to
    255 bytes; this runs for every segment, so it avoids building the escaped string when it
    can.
    """
    if s.isascii():
        if s.isprintable():
            if s == "." or s == "..":
                return 3 * len(s)
            return len(s) + 2 * (s.count("%") + s.count(":") + s.count("\\") + s.count("/"))
        return len(esc(s))  # ASCII in, ASCII out
    return len(esc(s).encode("utf-8", "surrogatepass"))


def _transfer_hash_hex(client_id: str, file_id: str) -> str:
    """Uppercase hex SHA-1 of EMQX's term encoding of the tuple ``{ClientId, FileId}``."""
    h = hashlib.sha1(_TERM_TUPLE2, usedforsecurity=False)
    for part in (client_id, file_id):
        raw = part.encode("utf-8", "surrogatepass")
        h.update(_TERM_BINARY)
        h.update(len(raw).to_bytes(4, "big"))
        h.update(raw)
    return h.hexdigest().upper()


def export_dir_parts(client_id: str, file_id: str) -> tuple[str, str, str]:
    """The three bucket directories ``(B1, B2, B3)`` of a transfer's local export.

    They split (2, 2, 36 characters) the uppercase hex SHA-1 of ``83 68 02``, then for the
    clientId and the fileId in turn ``6D``, the UTF-8 length as 4-byte big-endian, the UTF-8
    bytes: the hash EMQX takes of ``term_to_binary({ClientId, FileId})``. The buckets spread
    millions of exports over 65 536 directories.
    """
    digest = _transfer_hash_hex(client_id, file_id)
    return digest[:2], digest[2:4], digest[4:]


def _check_name(name: str) -> None:
    """Refuse a file name that would escape its directory (defence in depth).

    Names are validated by :func:`ftserver.transfer.meta.parse_filemeta` long before they get
    here; this only guards against a caller that skipped it. A path must never be built from
    an unchecked name.
    """
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise ValueError(f"unsafe export file name: {name!r}")


def export_relpath(client_id: str, file_id: str, name: str) -> PurePosixPath:
    """Path of an exported file relative to the exports root, EMQX's layout.

    ``<B1>/<B2>/<B3>/<esc(clientId)>/<esc(fileId)>/<name>``; ``name`` is used as it is (the
    protocol never rewrites it) and must already satisfy the name rules of PROTOCOL.md §3.
    """
    _check_name(name)
    b1, b2, b3 = export_dir_parts(client_id, file_id)
    return PurePosixPath(b1, b2, b3, esc(client_id), esc(file_id), name)


def manifest_relpath(client_id: str, file_id: str, name: str) -> PurePosixPath:
    """Path of the ``<name>.MANIFEST.json`` sidecar beside :func:`export_relpath`."""
    path = export_relpath(client_id, file_id, name)
    return path.with_name(path.name + MANIFEST_SUFFIX)


def staging_bucket(client_id: str) -> str:
    """The staging bucket of a client: the first two uppercase hex digits of SHA-1(clientId).

    ftserver's own choice (the staging area is not shared with EMQX): keyed on the clientId
    alone, so that all transfers of one client sit under one directory (cheap to list when a
    session is taken over) while the ``staging/`` directory itself has at most 256 entries.
    """
    return (
        hashlib.sha1(client_id.encode("utf-8", "surrogatepass"), usedforsecurity=False)
        .hexdigest()[:2]
        .upper()
    )


def staging_relpath(bucket: str, client_id: str, file_id: str) -> PurePosixPath:
    """Directory of an unfinished transfer relative to the data directory.

    ``staging/<bucket>/<esc(clientId)>/<esc(fileId)>`` (ARCHITECTURE.md, "State on disk");
    ``bucket`` is normally :func:`staging_bucket` of ``client_id``: it is taken as given (so
    that a store can be migrated) but must be one plain path component.
    """
    if not bucket or bucket in (".", "..") or "/" in bucket or "\x00" in bucket:
        raise ValueError(f"unsafe staging bucket: {bucket!r}")
    return PurePosixPath("staging", bucket, esc(client_id), esc(file_id))


def _dumps(obj: object, *, ascii_only: bool) -> str:
    return json.dumps(obj, ensure_ascii=ascii_only, separators=(",", ":"), allow_nan=False)


def manifest_bytes(meta: FileMeta, checksum_hex: str, extra: Mapping[str, JsonValue]) -> bytes:
    """The content of an export's ``.MANIFEST.json``: ``["filemeta", 1, {...}]`` in UTF-8.

    The object holds the init metadata (:meth:`FileMeta.to_json_obj`), then ``checksum``: the
    whole file's SHA-256 (verified or computed) in uppercase hex, which replaces any checksum
    given at init; then ftserver's ``extra`` keys (``clientid``, ``fileid``, ``exported_at``,
    …). An extra key may not replace one of EMQX's keys: that would break EMQX tooling, so it
    is a programming error (``ValueError``). Compact JSON, non-ASCII kept as UTF-8, as EMQX
    writes it.
    """
    if len(checksum_hex) != 64 or not _is_hex(checksum_hex):
        raise ValueError(f"checksum must be 64 hex digits, got {checksum_hex!r}")
    obj = meta.to_json_obj()
    obj["checksum"] = checksum_hex.upper()
    for key, value in extra.items():
        if key in _EMQX_META_KEYS:
            raise ValueError(f"extra manifest key {key!r} would replace EMQX's")
        obj[key] = value
    return _dumps(["filemeta", MANIFEST_VSN, obj], ascii_only=False).encode("utf-8")


def parse_manifest(data: bytes) -> dict[str, JsonValue]:
    """The metadata object of a manifest written by EMQX or by :func:`manifest_bytes`.

    Raises ``ValueError`` when ``data`` is not ``["filemeta", 1, {...}]`` JSON; the caller
    (listing, download) decides whether a bad manifest hides the file or only its metadata.
    """
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"manifest is not UTF-8 JSON: {exc}") from None
    if (
        not isinstance(doc, list)
        or len(doc) != 3
        or doc[0] != "filemeta"
        or type(doc[1]) is not int
        or doc[1] != MANIFEST_VSN
        or not isinstance(doc[2], dict)
    ):
        raise ValueError('manifest is not ["filemeta", 1, {...}]')
    result: dict[str, JsonValue] = doc[2]
    return result


def s3_key(client_id: str, file_id: str, name: str) -> str:
    """The S3 object key of an export: ``<esc(clientId)>/<esc(fileId)>/<name>``.

    Since :func:`esc` never emits ``/``, the key has exactly three ``/``-separated parts, and
    a per-transfer lookup can list the exact prefix ``<esc(cid)>/<esc(fid)>/`` (so fileId
    ``f1`` never matches ``f10``).
    """
    _check_name(name)
    return f"{esc(client_id)}/{esc(file_id)}/{name}"


def s3_metadata(client_id: str, file_id: str, meta: FileMeta) -> dict[str, str]:
    """User metadata of an S3 export, as EMQX sets it (header name → value).

    ``x-amz-meta-clientid`` and ``x-amz-meta-fileid`` carry the raw identifiers (as EMQX
    does; an S3 client that needs ASCII header values must encode them itself),
    ``x-amz-meta-filemeta`` the init metadata as compact JSON with every non-ASCII character
    escaped as ``\\uXXXX`` (so the value is plain ASCII), and ``x-amz-meta-filemeta-vsn`` is
    ``"1"``.
    """
    return {
        "x-amz-meta-clientid": client_id,
        "x-amz-meta-fileid": file_id,
        "x-amz-meta-filemeta": _dumps(meta.to_json_obj(), ascii_only=True),
        "x-amz-meta-filemeta-vsn": S3_FILEMETA_VSN,
    }

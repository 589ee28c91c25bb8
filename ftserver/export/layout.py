"""Names on disk and in object storage, identical to EMQX's (PROTOCOL.md §6).

Everything here is pure: strings in, strings (or paths, or bytes) out, no IO. Existing EMQX
tooling finds ftserver's exports only if these names match EMQX's byte for byte, so each
function states the exact rule it implements and the tests check EMQX's published vectors.

- the escaping of a clientId or fileId into one path component is :mod:`ftserver.names`.
- :func:`export_dir_parts` / :func:`export_relpath` give the local exporter's layout
  ``<B1>/<B2>/<B3>/<esc(clientId)>/<esc(fileId)>/<name>``.
- :func:`manifest_bytes` renders the ``<name>.MANIFEST.json`` sidecar.
- :func:`s3_key` / :func:`s3_metadata` give the S3 exporter's object key and metadata.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from ftserver.names import esc

if TYPE_CHECKING:
    from ftserver.meta import FileMeta, JsonValue

__all__ = [
    "MANIFEST_SUFFIX",
    "MANIFEST_VSN",
    "S3_FILEMETA_VSN",
    "export_dir_parts",
    "export_relpath",
    "manifest_bytes",
    "manifest_relpath",
    "parse_manifest",
    "s3_key",
    "s3_metadata",
]

#: suffix of the sidecar holding an export's metadata (``<name>.MANIFEST.json``)
MANIFEST_SUFFIX = ".MANIFEST.json"
#: version in the manifest prelude ``["filemeta", 1, {...}]``
MANIFEST_VSN = 1
#: value of ``x-amz-meta-filemeta-vsn`` on S3 objects
S3_FILEMETA_VSN = "1"

#: keys EMQX writes in a manifest's object; ftserver's extra keys must not collide with them
_EMQX_META_KEYS = frozenset(("name", "size", "checksum", "expire_at", "segments_ttl", "user_data"))


def _is_hex(s: str) -> bool:
    return s.isascii() and all(c in "0123456789abcdefABCDEF" for c in s)


# Term-encoding prelude of EMQX's transfer hash: VERSION_MAGIC (131), SMALL_TUPLE_EXT (104),
# arity 2. Each element follows as BINARY_EXT (109), a 4-byte big-endian length, the bytes.
_TERM_TUPLE2 = b"\x83\x68\x02"
_TERM_BINARY = b"\x6d"


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

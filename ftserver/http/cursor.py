"""Paging cursors of the HTTP API: an opaque, URL-safe rendering of a listing position.

A cursor is the sort key of the last item of a page (its path components below the listed
root) plus a tag naming the listing, as compact JSON in unpadded base64url. It names a
position, not an offset, so it stays valid while items are added or removed: the next page
starts at the first item whose key sorts after it, wherever that is now.

A cursor is only ever compared with directory names, never joined into a path, so a forged
one can at worst start a listing at an odd place; it is still checked for shape so that a
damaged one is a 400, not a silently empty page.
"""

from __future__ import annotations

import base64
import binascii
import json

__all__ = ["CursorError", "decode_cursor", "encode_cursor"]

#: longest cursor accepted (key components are at most 255 bytes each; JSON may escape them)
MAX_CURSOR_LENGTH = 16384


class CursorError(ValueError):
    """The ``following`` parameter is not a cursor of this listing."""


def encode_cursor(kind: str, key: tuple[str, ...]) -> str:
    """The cursor of the position just after ``key`` in listing ``kind``."""
    # ensure_ascii keeps names that are not UTF-8 (surrogate-escaped) round-tripping
    text = json.dumps([kind, *key], ensure_ascii=True, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode("ascii")).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, kind: str, length: int) -> tuple[str, ...]:
    """The key of a cursor made by :func:`encode_cursor` for listing ``kind``, with
    ``length`` components. Raises :class:`CursorError` for anything else."""
    if not cursor or len(cursor) > MAX_CURSOR_LENGTH or not cursor.isascii():
        raise CursorError("invalid cursor")
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        raw = base64.b64decode(padded, altchars=b"-_", validate=True)
        doc = json.loads(raw.decode("ascii"))
    except (binascii.Error, UnicodeDecodeError, ValueError, RecursionError):
        raise CursorError("invalid cursor") from None
    if (
        not isinstance(doc, list)
        or len(doc) != length + 1
        or doc[0] != kind
        or not all(isinstance(part, str) and part for part in doc[1:])
    ):
        raise CursorError("invalid cursor")
    return tuple(doc[1:])

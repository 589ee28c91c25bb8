"""The file-transfer topic grammar (PROTOCOL.md §2): topic string → command.

:func:`parse_command` runs for every segment, so it only splits strings and compares them: no
regular expressions, no allocation beyond the split and the command object.

The dispatch order is the protocol's, first match wins::

    level 2 (fileId) empty or too long     → invalid_fileid
    rest = init                            → Init
    rest = fin/SIZE[/SHA256]               → Fin (invalid_size, then invalid_checksum)
    rest = abort                           → Abort
    rest = OFFSET                          → Segment (invalid_offset)
    rest = OFFSET/SHA256                   → Segment (invalid_offset, then invalid_checksum)
    anything else                          → invalid_file_command

so ``$file/ID/fin`` is a segment with a bad offset and ``$file/init/init`` a valid init of the
transfer ``init``. Limits and checksums are checked afterwards, by the caller, in this order:
:func:`check_file_size` (before any state of the transfer is looked at), then
:func:`check_segment_checksum`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TypeAlias

from ftserver.errors import (
    ChecksumMismatch,
    FileTooLarge,
    InvalidChecksum,
    InvalidFileCommand,
    InvalidFileId,
    InvalidOffset,
    InvalidSize,
)
from ftserver.names import esc_len
from ftserver.topics import ASYNC_PREFIX, SYNC_PREFIX

__all__ = [
    "ASYNC_PREFIX",
    "INT_CLAMP",
    "MAX_FILEID_ESCAPED_BYTES",
    "SYNC_PREFIX",
    "Abort",
    "Command",
    "Fin",
    "Init",
    "Segment",
    "check_file_size",
    "check_segment_checksum",
    "parse_command",
    "parse_sha256_hex",
    "parse_uint",
]

#: longest fileId, in bytes of its escaped form (it becomes a directory name)
MAX_FILEID_ESCAPED_BYTES = 255

#: Offsets and sizes with more than 20 significant digits are read as this value. It is
#: larger than any configurable maximum file size (at most 2**63 - 1), so such a command ends
#: in ``file_too_large`` exactly as its true value would, while parsing stays linear in the
#: topic's length (Python's ``int()`` is quadratic, and refuses over 4 300 digits).
INT_CLAMP = 10**20
_MAX_EXACT_DIGITS = 20

_ALWAYS_FITS = MAX_FILEID_ESCAPED_BYTES // 12
_ASCII_ALWAYS_FITS = MAX_FILEID_ESCAPED_BYTES // 3
_SYNC_LEN = len(SYNC_PREFIX)
_ASYNC_LEN = len(ASYNC_PREFIX)


@dataclass(frozen=True, slots=True)
class Init:
    """``$file/{fileId}/init``: the payload is the file's metadata (see ``meta.py``)."""

    file_id: str
    is_async: bool = False


@dataclass(frozen=True, slots=True)
class Segment:
    """``$file/{fileId}/{offset}[/{sha256}]``: the payload is the bytes at ``offset``.

    ``checksum`` is the 32-byte SHA-256 the payload must have, or ``None``.
    """

    file_id: str
    offset: int
    checksum: bytes | None = None
    is_async: bool = False


@dataclass(frozen=True, slots=True)
class Fin:
    """``$file/{fileId}/fin/{size}[/{sha256}]``: assemble and export; the payload is ignored.

    ``checksum`` is the 32-byte SHA-256 of the whole file, or ``None`` (then init's is used).
    """

    file_id: str
    size: int
    checksum: bytes | None = None
    is_async: bool = False


@dataclass(frozen=True, slots=True)
class Abort:
    """``$file/{fileId}/abort``: discard the transfer's staging data."""

    file_id: str
    is_async: bool = False


Command: TypeAlias = Init | Segment | Fin | Abort


def parse_uint(text: str) -> int | None:
    """A non-negative decimal integer made of ASCII digits only, or ``None``.

    Leading zeros are allowed; a sign, spaces, ``_``, hex, exponents and other scripts' digits
    (``١``, ``１``, which ``str.isdigit`` and ``int`` accept) are not. Values with more than 20
    significant digits read as :data:`INT_CLAMP`.
    """
    # On an ASCII string, isdigit() is true only for 0-9; '' is not a digit string.
    if not text.isdigit() or not text.isascii():
        return None
    if len(text) > _MAX_EXACT_DIGITS:
        text = text.lstrip("0")
        if len(text) > _MAX_EXACT_DIGITS:
            return INT_CLAMP
        if not text:
            return 0
    return int(text)


def parse_sha256_hex(text: str) -> bytes | None:
    """Exactly 64 hex digits (either case) as 32 raw bytes, or ``None``."""
    if len(text) != 64:
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    # fromhex skips ASCII whitespace between pairs: with 64 characters, any such space
    # leaves fewer than 32 bytes.
    return raw if len(raw) == 32 else None


def parse_command(topic: str) -> Command | None:
    """Parse a PUBLISH topic into a file-transfer command.

    Returns ``None`` when the topic is not a file-transfer command at all (it does not start
    with ``$file/`` or ``$file-async/``; ``$file`` alone is an ordinary topic). Raises, in the
    protocol's dispatch order (module docstring), :class:`InvalidFileId`,
    :class:`InvalidSize`, :class:`InvalidChecksum`, :class:`InvalidOffset` or
    :class:`InvalidFileCommand` for a malformed command. Levels are split on every ``/``;
    empty levels are kept (``$file/ID//x`` has an empty offset, hence ``invalid_offset``).
    """
    if topic.startswith(SYNC_PREFIX):
        is_async = False
        levels = topic[_SYNC_LEN:].split("/")
    elif topic.startswith(ASYNC_PREFIX):
        is_async = True
        levels = topic[_ASYNC_LEN:].split("/")
    else:
        return None

    file_id = levels[0]
    if not file_id:
        raise InvalidFileId()
    # A code point escapes to at most 12 bytes (4 UTF-8 bytes, 3 characters each), an ASCII
    # one to at most 3: short ids (most of them) skip computing the escaped length.
    n_chars = len(file_id)
    if (
        n_chars > _ALWAYS_FITS
        and (n_chars > _ASCII_ALWAYS_FITS or not file_id.isascii())
        and esc_len(file_id) > MAX_FILEID_ESCAPED_BYTES
    ):
        raise InvalidFileId()

    n = len(levels)
    if n == 2:
        word = levels[1]
        if word == "init":
            return Init(file_id, is_async)
        if word == "abort":
            return Abort(file_id, is_async)
        offset = parse_uint(word)
        if offset is None:
            raise InvalidOffset()
        return Segment(file_id, offset, None, is_async)

    if n == 3 or n == 4:
        if levels[1] == "fin":
            size = parse_uint(levels[2])
            if size is None:
                raise InvalidSize()
            checksum = None
            if n == 4:
                checksum = parse_sha256_hex(levels[3])
                if checksum is None:
                    raise InvalidChecksum()
            return Fin(file_id, size, checksum, is_async)
        if n == 3:
            offset = parse_uint(levels[1])
            if offset is None:
                raise InvalidOffset()
            checksum = parse_sha256_hex(levels[2])
            if checksum is None:
                raise InvalidChecksum()
            return Segment(file_id, offset, checksum, is_async)

    raise InvalidFileCommand()


def check_file_size(limit: int, offset: int, length: int) -> None:
    """Raise :class:`FileTooLarge` (0x83) when ``offset + length`` exceeds ``limit``.

    For a segment pass its offset and payload length; for fin pass ``(size, 0)``. This check
    comes right after parsing, before any state of the transfer is looked at (PROTOCOL.md §2):
    a file that can never fit is cancelled whatever the transfer holds, and a hostile offset
    never reaches the storage layer.
    """
    if offset + length > limit:
        raise FileTooLarge()


def check_segment_checksum(cmd: Segment, payload: bytes | bytearray | memoryview) -> None:
    """Raise :class:`ChecksumMismatch` when a segment's payload does not match its checksum.

    A segment without a checksum always passes. Called after :func:`check_file_size` and
    before the payload is stored: a segment that fails is not stored.
    """
    if cmd.checksum is not None and hashlib.sha256(payload).digest() != cmd.checksum:
        raise ChecksumMismatch()

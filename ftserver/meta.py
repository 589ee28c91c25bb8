"""The init command's metadata (docs/protocol.md §3): parsing, validation, normal form.

:func:`parse_filemeta` turns an init payload into a :class:`FileMeta` or raises
:class:`~ftserver.errors.InvalidFileMetaJson` (the payload is not a JSON object) or
:class:`~ftserver.errors.InvalidFileMeta` (a field breaks its rule). A :class:`FileMeta` is
the normal form: integers as ``int`` even when sent as numeric strings, the checksum in
uppercase, ``null`` fields absent. Two inits are "identical" (the ``filemeta_conflict`` rule)
exactly when their :class:`FileMeta` values are equal.

Decisions where the protocol is silent:

- **Duplicate keys** in a JSON object: the last one wins, at every level. That is what EMQX's
  JSON decoder (jiffy, since 0.15) and Python's do, so a device that works with EMQX works
  here; rejecting them would gain nothing since the stored form is re-serialised anyway.
- **Numbers JSON cannot carry**: ``NaN``/``Infinity`` literals and numbers that overflow a
  double (``1e400``) make the payload ``invalid_filemeta_json``, as do integers too long for
  Python to convert (over 4 300 digits).
- **Numeric strings** in integer fields: ASCII digits with optional surrounding ASCII
  whitespace (``" 12 "``, ``"012"``); no sign, no ``_``, no other scripts' digits, no
  exponent. JSON floats are refused even when integral (``12.0``), as EMQX refuses
  non-integers; booleans are refused although Python counts them as ints.
- **Lone surrogates** (``"\\ud800"``): in ``name`` they are non-printable (name rule); in
  ``user_data`` they cannot be written as UTF-8, so the field is ``invalid_filemeta``. Unknown
  keys are ignored whatever they hold.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import TypeAlias

from ftserver.errors import InvalidFileMeta, InvalidFileMetaJson
from ftserver.names import is_printable

__all__ = [
    "MAX_NAME_BYTES",
    "FileMeta",
    "JsonValue",
    "check_name",
    "filemeta_from_obj",
    "parse_filemeta",
]

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"

#: longest file name, in UTF-8 bytes (leaves room for ``.MANIFEST.json`` within 255 bytes)
MAX_NAME_BYTES = 240

_WS = " \t\n\r"
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True, eq=False)
class FileMeta:
    """The validated, normalised metadata of one transfer.

    ``user_data`` is any JSON value; ``has_user_data`` tells a present value from an absent
    one (a JSON ``null`` counts as absent, so ``user_data`` is ``None`` exactly when
    ``has_user_data`` is false). Treat ``user_data`` as read-only.

    Equality is "identical metadata field by field after normalisation": numeric strings and
    ints compare by value, checksums without regard to case, ``user_data`` by its canonical
    JSON (object key order does not matter; ``1``, ``1.0`` and ``true`` differ, as they do in
    JSON).
    """

    name: str
    size: int | None = None
    checksum: str | None = None
    expire_at: int | None = None
    segments_ttl: int | None = None
    user_data: JsonValue = None
    has_user_data: bool = False

    def _key(self) -> tuple[object, ...]:
        user = _canonical(self.user_data) if self.has_user_data else None
        return (self.name, self.size, self.checksum, self.expire_at, self.segments_ttl, user)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FileMeta):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def checksum_bytes(self) -> bytes | None:
        """The init checksum as 32 raw bytes (what a rolling SHA-256 digest is compared to)."""
        return None if self.checksum is None else bytes.fromhex(self.checksum)

    def to_json_obj(self) -> dict[str, JsonValue]:
        """The canonical JSON object of this metadata: present keys only, in a fixed order.

        This is what goes into the export manifest (before the exporter sets ``checksum`` to
        the verified one) and what the staging area persists; :func:`filemeta_from_obj` of it
        gives back an equal :class:`FileMeta`.
        """
        obj: dict[str, JsonValue] = {"name": self.name}
        if self.size is not None:
            obj["size"] = self.size
        if self.checksum is not None:
            obj["checksum"] = self.checksum
        if self.expire_at is not None:
            obj["expire_at"] = self.expire_at
        if self.segments_ttl is not None:
            obj["segments_ttl"] = self.segments_ttl
        if self.has_user_data:
            obj["user_data"] = copy.deepcopy(self.user_data)
        return obj

    def to_json_bytes(self) -> bytes:
        """:meth:`to_json_obj` as compact UTF-8 JSON (what the staging ``meta`` file holds)."""
        return json.dumps(
            self.to_json_obj(), ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")


def _canonical(value: JsonValue) -> str:
    """Canonical JSON text of a value: sorted keys, compact, UTF-8-able (or ValueError)."""
    text = json.dumps(
        value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    text.encode("utf-8")  # raises UnicodeEncodeError (a ValueError) on lone surrogates
    return text


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text}")
    return value


def parse_filemeta(payload: bytes | bytearray | memoryview) -> FileMeta:
    """Parse and validate an init payload (docs/protocol.md §3).

    Raises :class:`InvalidFileMetaJson` when the payload is not UTF-8, not JSON, or JSON that
    is not an object; :class:`InvalidFileMeta` when a field breaks its rule. Unknown keys are
    ignored and a ``null`` value counts as absent.
    """
    try:
        text = str(payload, "utf-8")
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        raise InvalidFileMetaJson() from None
    if not isinstance(obj, dict):
        raise InvalidFileMetaJson()
    return filemeta_from_obj(obj)


def filemeta_from_obj(obj: dict[str, JsonValue]) -> FileMeta:
    """Validate an already decoded metadata object (an init payload, a stored manifest).

    Raises :class:`InvalidFileMeta` on the first field that breaks its rule; unknown keys
    (a manifest's ``clientid``, say) are ignored.
    """
    name = check_name(obj.get("name"))
    size = _uint_field(obj.get("size"), 0)
    checksum = _checksum_field(obj.get("checksum"))
    expire_at = _uint_field(obj.get("expire_at"), 0)
    segments_ttl = _uint_field(obj.get("segments_ttl"), 1)
    user_data = obj.get("user_data")
    has_user_data = user_data is not None
    if has_user_data:
        try:
            _canonical(user_data)
        except (ValueError, RecursionError):
            raise InvalidFileMeta() from None
    return FileMeta(
        name=name,
        size=size,
        checksum=checksum,
        expire_at=expire_at,
        segments_ttl=segments_ttl,
        user_data=user_data,
        has_user_data=has_user_data,
    )


def check_name(name: object) -> str:
    """Check an export file name against the rules of docs/protocol.md §3, in their order.

    A string; at most :data:`MAX_NAME_BYTES` bytes of UTF-8; not empty; not ``.`` or ``..``;
    every code point printable and none of ``/``, ``\\``, ``:``. The name is returned as is:
    it is never rewritten. Raises :class:`InvalidFileMeta`.
    """
    if not isinstance(name, str):
        raise InvalidFileMeta()
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidFileMeta()
    if not name or name == "." or name == "..":
        raise InvalidFileMeta()
    if "/" in name or "\\" in name or ":" in name:
        raise InvalidFileMeta()
    # For ASCII strings str.isprintable() is exactly U+0020..U+007E, our ASCII rule.
    if name.isascii():
        if not name.isprintable():
            raise InvalidFileMeta()
    elif not all(is_printable(ord(ch)) for ch in name):
        raise InvalidFileMeta()
    return name


def _uint_field(value: JsonValue, minimum: int) -> int | None:
    """An integer field: a JSON integer or a numeric string, at least ``minimum``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidFileMeta()
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        digits = value.strip(_WS)
        if not digits or not digits.isascii() or not digits.isdigit():
            raise InvalidFileMeta()
        try:
            number = int(digits)
        except ValueError:  # more digits than int() converts
            raise InvalidFileMeta() from None
    else:
        raise InvalidFileMeta()
    if number < minimum:
        raise InvalidFileMeta()
    return number


def _checksum_field(value: JsonValue) -> str | None:
    """A SHA-256 checksum: exactly 64 hex characters, either case; stored uppercase."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 64 or not _HEX.issuperset(value):
        raise InvalidFileMeta()
    return value.upper()

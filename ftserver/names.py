"""The name rules shared by the wire, the disk and object storage (docs/protocol.md §1, §3, §6).

- :func:`is_printable`: the printable code points of EMQX (Erlang's
  ``io_lib:printable_unicode_list/1``), used by the fileId, file-name and clientId rules;
- :func:`esc` / :func:`unesc`: a clientId or fileId as one safe path component and back,
  byte for byte as EMQX names its directories;
- :func:`esc_len`: the length of the escaped form, cheap enough for every segment.

Pure functions, no IO; the lowest layer of ftserver with :mod:`ftserver.errors`.
"""

from __future__ import annotations

__all__ = ["esc", "esc_len", "is_printable", "unesc"]

#: characters that are always percent-encoded by :func:`esc`, printable or not
_UNSAFE = frozenset("%:\\/")


def _is_hex(s: str) -> bool:
    return s.isascii() and all(c in "0123456789abcdefABCDEF" for c in s)


def is_printable(cp: int) -> bool:
    """Whether code point ``cp`` is printable in the sense of docs/protocol.md §3 and §6.

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

    Both the fileId rule (docs/protocol.md §2) and the clientId rule (§1) limit the escaped form to
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

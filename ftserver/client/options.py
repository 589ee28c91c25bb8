"""How to upload: every setting of an upload in one value, checked once when it is built.

:class:`UploadOptions` is what :func:`ftserver.client.upload` and ``ftserver upload`` build
(the CLI from its arguments, an application once for many files, changing a field with
``dataclasses.replace``); the upload's parts read their settings from it instead of taking a
dozen parameters each. :class:`UploadFields` names the same fields for the keyword form of
:func:`~ftserver.client.upload` (``upload(path, window=8)``), which overrides the given options
field by field. A test keeps the two lists equal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypedDict

DEFAULT_SEGMENT_SIZE: Final = 256 * 1024
DEFAULT_WINDOW: Final = 16
DEFAULT_MAX_RETRIES: Final = 5

Mode = Literal["sync", "async"]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Every timeout and backoff of an upload, in seconds."""

    #: one connection attempt (TCP, TLS, CONNACK); also SUBACK
    connect: float = 30.0
    #: a command without result is resent (or a stalled connection reconnected) after this
    command: float = 30.0
    #: a fin without result: the server assembles and exports meanwhile (its own limit,
    #: ``transfer.assemble_timeout``, is 5 minutes by default)
    fin: float = 360.0
    #: the connection down for longer than this ends the upload (ConnectionFailed)
    reconnect: float = 120.0
    #: no command succeeding for longer than this ends the upload (UploadTimeout)
    stall: float = 600.0
    #: after a failure PUBACK (MQTT 5), how long to wait for the response document that says
    #: why (and, for fin, what is missing)
    doc_grace: float = 5.0
    #: reconnect backoff: first delay, maximum delay
    reconnect_backoff: tuple[float, float] = (0.2, 10.0)
    #: 0x97 backoff: first pause, longest pause
    pause_backoff: tuple[float, float] = (0.5, 30.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadOptions:
    """The settings of one upload (or of many: only ``file_id`` and ``name`` name one file).

    Raises ``ValueError`` when built with a value no upload could use.
    """

    #: the transfer's file id; None: a random UUID (a resumed upload keeps the recorded one)
    file_id: str | None = None
    #: the exported file's name; None: the path's base name
    name: str | None = None
    #: "sync" (``$file/...``, results in the PUBACK) or "async" (``$file-async/...``)
    mode: Mode = "sync"
    #: bytes per segment
    segment_size: int = DEFAULT_SEGMENT_SIZE
    #: segments in flight at most (also capped by the server's Receive Maximum)
    window: int = DEFAULT_WINDOW
    #: each segment's SHA-256 in its topic
    segment_checksums: bool = False
    #: the whole file's SHA-256 in the init metadata (read once more, first, in a thread)
    file_checksum: bool = True
    #: where progress is recorded; None: nowhere
    state_file: str | os.PathLike[str] | None = None
    #: continue the upload recorded in ``state_file`` if it matches
    resume: bool = False
    #: MQTT 5: receive response documents there instead of ``$file-response/{clientId}``
    response_topic: str | None = None
    #: init metadata (docs/protocol.md §3)
    expire_at: int | None = None
    segments_ttl: int | None = None
    user_data: Any = None
    #: resends of one segment after 0x80
    max_retries: int = DEFAULT_MAX_RETRIES
    timeouts: Timeouts = field(default_factory=Timeouts)

    def __post_init__(self) -> None:
        if self.mode not in ("sync", "async"):
            raise ValueError(f"mode must be 'sync' or 'async', not {self.mode!r}")
        if self.segment_size < 1 or self.window < 1 or self.max_retries < 0:
            raise ValueError("segment_size and window must be positive, max_retries >= 0")
        if self.file_id is not None:
            check_file_id(self.file_id)

    @property
    def state_path(self) -> Path | None:
        return Path(self.state_file) if self.state_file is not None else None

    def init_meta(self, name: str, size: int, checksum: str | None) -> dict[str, Any]:
        """The init metadata of a new transfer of ``size`` bytes called ``name``."""
        meta: dict[str, Any] = {"name": name, "size": size}
        if checksum is not None:
            meta["checksum"] = checksum
        if self.expire_at is not None:
            meta["expire_at"] = self.expire_at
        if self.segments_ttl is not None:
            meta["segments_ttl"] = self.segments_ttl
        if self.user_data is not None:
            meta["user_data"] = self.user_data
        return meta


class UploadFields(TypedDict, total=False):
    """The fields of :class:`UploadOptions`, as keyword arguments of ``upload()``."""

    file_id: str | None
    name: str | None
    mode: Mode
    segment_size: int
    window: int
    segment_checksums: bool
    file_checksum: bool
    state_file: str | os.PathLike[str] | None
    resume: bool
    response_topic: str | None
    expire_at: int | None
    segments_ttl: int | None
    user_data: Any
    max_retries: int
    timeouts: Timeouts | None


def check_file_id(file_id: str) -> None:
    """``ValueError`` unless ``file_id`` can be a topic level (non-empty, no / + # NUL)."""
    if not file_id or any(ch in file_id for ch in "/+#\0"):
        raise ValueError(f"invalid file id {file_id!r}: it must be non-empty, without / + # NUL")

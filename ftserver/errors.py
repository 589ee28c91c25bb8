"""The one exception tree of ftserver.

Every error that can reach a client carries the MQTT reason code and the description that
PROTOCOL.md §4 names for it. Exactly one boundary (the command dispatcher) turns them into
PUBACK/PUBREC reason codes and response documents; the HTTP layer maps ``http_status``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class FtError(Exception):
    """Base of every ftserver error."""

    reason_code: ClassVar[int] = 0x80
    http_status: ClassVar[int] = 500
    default_description: ClassVar[str] = "internal_error"

    def __init__(self, description: str | None = None, **extra: Any) -> None:
        self.description = description or self.default_description
        #: extra keys merged into the response document (e.g. ``missing``)
        self.extra = extra
        super().__init__(self.description)


class CommandError(FtError):
    """0x80: the command failed; for a segment, resend it."""

    reason_code = 0x80
    http_status = 400


class InvalidFileId(CommandError):
    default_description = "invalid_fileid"


class InvalidFileCommand(CommandError):
    default_description = "invalid_file_command"


class InvalidOffset(CommandError):
    default_description = "invalid_offset"


class InvalidSize(CommandError):
    default_description = "invalid_size"


class InvalidChecksum(CommandError):
    default_description = "invalid_checksum"


class ChecksumMismatch(CommandError):
    default_description = "checksum_mismatch"


class InvalidFileMetaJson(CommandError):
    default_description = "invalid_filemeta_json"


class InvalidFileMeta(CommandError):
    default_description = "invalid_filemeta"


class FileMetaConflict(CommandError):
    default_description = "filemeta_conflict"
    http_status = 409


class Incomplete(CommandError):
    default_description = "incomplete"


class AssembleTimeout(CommandError):
    default_description = "timeout"
    http_status = 504


class InvalidQos(CommandError):
    default_description = "invalid_qos"


class StorageError(CommandError):
    """An OS-level storage failure; the description is the POSIX errno name (``enospc``)."""

    http_status = 507

    @classmethod
    def from_oserror(cls, exc: OSError) -> StorageError:
        import errno

        name = errno.errorcode.get(exc.errno or 0, "eio").lower()
        return cls(name)


class InternalError(CommandError):
    default_description = "internal_error"


class Cancel(FtError):
    """0x83: the transfer can never succeed."""

    reason_code = 0x83
    http_status = 413


class FileTooLarge(Cancel):
    default_description = "file_too_large"


class TooManyTransfers(Cancel):
    default_description = "too_many_transfers"
    http_status = 429


class Pause(FtError):
    """0x97: wait, then resend the same command."""

    reason_code = 0x97
    http_status = 503


class StorageFull(Pause):
    default_description = "storage_full"
    http_status = 507


class QuotaExceeded(Pause):
    default_description = "quota_exceeded"
    http_status = 429


class NotAuthorized(FtError):
    reason_code = 0x87
    http_status = 403
    default_description = "not_authorized"

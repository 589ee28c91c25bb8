"""The one exception tree of ftserver, and the one boundary that turns exceptions into answers.

Every error that can reach a client carries the MQTT reason code and the description that the
protocol names for it (docs/protocol.md). :func:`outcome_of` is the boundary: whatever was
raised while a command ran, it gives the :class:`Outcome` the client is told (PUBACK/PUBREC
reason code and response document), logging what was not an expected refusal once, with the
transfer's identifiers. The HTTP layer maps ``http_status`` the same way.
:func:`storage_errors` is the one place an ``OSError`` becomes a :class:`StorageError`.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

log = logging.getLogger("ftserver.errors")


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
        name = errno.errorcode.get(exc.errno or 0, "eio").lower()
        err = cls(name)
        err.cause = exc
        return err

    #: the OS error behind it (logged by the boundary)
    cause: OSError | None = None


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


class TransferBusy(Pause):
    """The transfer is not ready here yet: open in another process (a worker that had the
    client before, or one still exporting it), or being recovered from disk off the event
    loop. The dispatcher waits for ``ready`` (when given; else it polls) and runs the command
    again. It never reaches the client: past ``assemble_timeout`` the command is answered
    :class:`AssembleTimeout` (0x80 ``timeout``)."""

    default_description = "transfer_busy"

    def __init__(self, ready: Awaitable[object] | None = None) -> None:
        super().__init__()
        #: completes when the transfer may be ready (None: poll)
        self.ready = ready


class ServerBusy(Pause):
    """The server is out of a resource it sizes itself (descriptors: the cache of open
    transfers is full of transfers in flight, or the process hit ``EMFILE``): nothing is
    wrong with the command, resend it later."""

    default_description = "server_busy"


#: the errnos that mean "this process (or the system) has no descriptor left"
NO_DESCRIPTOR = frozenset({errno.EMFILE, errno.ENFILE})


class StorageFull(Pause):
    default_description = "storage_full"
    http_status = 507


class BackendUnavailable(Pause):
    """The export's destination (S3) cannot be reached, broke the connection, timed out or
    says it is overloaded: nothing is wrong with the transfer, whose data stays staged; the
    device waits and sends the fin again (a 0x80 would make it give up)."""

    default_description = "s3_unavailable"


class QuotaExceeded(Pause):
    default_description = "quota_exceeded"
    http_status = 429


class NotAuthorized(FtError):
    reason_code = 0x87
    http_status = 403
    default_description = "not_authorized"


@contextmanager
def storage_errors() -> Iterator[None]:
    """Run a block of storage IO: an ``OSError`` leaves it as a :class:`StorageError`."""
    try:
        yield
    except OSError as exc:
        if exc.errno in NO_DESCRIPTOR:
            raise ServerBusy() from exc
        raise StorageError.from_oserror(exc) from exc


class RateLimitedLog:
    """Log one kind of event at most once per ``interval`` seconds: the first at once, then
    a line saying how many more happened meanwhile. A flood of refusals (a fleet reconnecting
    at once) stays visible without drowning the log."""

    def __init__(self, logger: logging.Logger, level: int, interval: float = 10.0) -> None:
        self.logger = logger
        self.level = level
        self.interval = interval
        self._last = -interval
        self._suppressed = 0

    def __call__(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        self._last = now
        if self._suppressed:
            msg += " (and %d more like it in the last %.0f s)"
            args = (*args, self._suppressed, self.interval)
            self._suppressed = 0
        self.logger.log(self.level, msg, *args)


_busy_log = RateLimitedLog(log, logging.WARNING)
_client_log = RateLimitedLog(log, logging.INFO)


# -- the boundary ------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """What a command's client is told: reason code, description, extra document keys."""

    reason_code: int
    description: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.reason_code < 0x80


SUCCESS = Outcome(0, "success")


def outcome_of(
    exc: BaseException, *, what: str = "command", client_id: str = "", file_id: str = ""
) -> Outcome:
    """The outcome that answers a command which raised ``exc``.

    An :class:`FtError` is an answer in itself; a storage failure is logged (it is the
    server's, not the client's); anything else is a bug: logged with its traceback and the
    transfer's identifiers, and answered 0x80 ``internal_error``.
    """
    if isinstance(exc, FtError):
        if isinstance(exc, ServerBusy):
            _busy_log(
                "%s for client %r file %r: server_busy (%s); the client will resend it",
                what,
                client_id,
                file_id,
                exc.__cause__ or "no room for one more open transfer",
            )
        elif isinstance(exc, StorageError):
            log.warning(
                "%s for client %r file %r failed: storage error %s (%s)",
                what,
                client_id,
                file_id,
                exc.description,
                exc.cause or exc.__cause__,
            )
        elif exc.reason_code == CommandError.reason_code:
            _client_log(
                "%s for client %r file %r refused: %s", what, client_id, file_id, exc.description
            )
        return Outcome(exc.reason_code, exc.description, dict(exc.extra))
    log.error(
        "%s for client %r file %r failed: internal error",
        what,
        client_id,
        file_id,
        exc_info=exc,
    )
    return Outcome(InternalError.reason_code, InternalError.default_description)

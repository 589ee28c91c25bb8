"""The errors an upload can end with.

Every error carries what the server said when it said something: the EIP-0021 reason code and
its description (``file_too_large``, ``filemeta_conflict``, ...), plus the transfer it concerns.
"""

from __future__ import annotations


class UploadError(Exception):
    """Base of every error of :mod:`ftserver.client`.

    ``reason_code`` and ``description`` are the server's result when one caused the error
    (0 and ``""`` otherwise); ``client_id`` and ``file_id`` name the transfer.
    """

    def __init__(
        self,
        message: str,
        *,
        reason_code: int = 0,
        description: str = "",
        client_id: str = "",
        file_id: str = "",
    ) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        self.description = description
        self.client_id = client_id
        self.file_id = file_id


class UploadCancelled(UploadError):
    """The server answered 0x83: this transfer can never succeed (``file_too_large``,
    ``too_many_transfers``). Nothing is resent."""


class UploadRejected(UploadError):
    """The server refused a command for good: an error on init or fin that resending cannot
    fix (``invalid_filemeta``, ``filemeta_conflict``, ...), a segment refused more times than
    the retry budget allows, 0x87 (not authorized), or an MQTT broker that does not handle file
    transfer at all (0x10, no matching subscribers)."""


class UploadTimeout(UploadError):
    """No progress for longer than the configured stall timeout."""


class ConnectionFailed(UploadError):
    """The MQTT connection could not be made, or was refused (CONNACK), or stayed down longer
    than the reconnect timeout. The upload can be resumed later from its state file."""

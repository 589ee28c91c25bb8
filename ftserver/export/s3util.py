"""Small pieces shared by the S3 exporter and its streaming uploads: what an S3 failure is
called, the part size of a file, and the record of an abort that could not reach S3."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Final

from ftserver.config import S3_MAX_PART
from ftserver.errors import BackendUnavailable, StorageError

__all__ = [
    "MAX_PARTS",
    "PART_ROUNDING",
    "is_gone",
    "part_size_for",
    "precondition_failed",
    "remember_abort",
    "s3_error",
]

#: S3's largest number of parts in one multipart upload
MAX_PARTS: Final = 10_000
#: parts are rounded up to a whole MiB when a file needs more than MAX_PARTS of part_size
PART_ROUNDING: Final = 1 << 20


def _snake(code: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", code)
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_").lower()[:48]


def s3_error(exc: BaseException) -> StorageError | BackendUnavailable:
    """The :class:`StorageError` that tells a client (and the log) what went wrong with S3.

    - an error answer from S3: ``s3_`` + its code in snake case (``NoSuchBucket`` →
      ``s3_no_such_bucket``, ``AccessDenied`` → ``s3_access_denied``,
      ``SignatureDoesNotMatch`` → ``s3_signature_does_not_match``); a bare HTTP status
      (HEAD answers have no body) → ``s3_http_<status>``
    - S3 could not be reached, the connection broke, or a request timed out →
      ``s3_unavailable``
    - no credentials in the configuration nor the AWS chain → ``s3_no_credentials``
    - anything else from the S3 client → ``s3_error``; a local read error → its POSIX name
    """
    from botocore import exceptions as bx  # type: ignore[import-untyped]

    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, OSError) and not isinstance(exc, bx.BotoCoreError):
        return StorageError.from_oserror(exc)
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if not code or code.isdigit():
            return StorageError(f"s3_http_{code or status or 'error'}")
        if code in ("SlowDown", "ServiceUnavailable", "RequestTimeout", "InternalError"):
            return BackendUnavailable()
        return StorageError("s3_" + (_snake(code) or "error"))
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return StorageError("s3_no_credentials")
    if isinstance(exc, bx.HTTPClientError | bx.ConnectionError | TimeoutError):
        return BackendUnavailable()
    if isinstance(exc, bx.BotoCoreError):
        return StorageError("s3_error")
    return StorageError("s3_error")


def is_gone(exc: BaseException, *codes: str) -> bool:
    from botocore import exceptions as bx

    if not isinstance(exc, bx.ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code") or "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in codes or (status == 404 and code in ("", "404"))


def precondition_failed(exc: BaseException) -> bool:
    """Whether S3 refused a conditional request (412 ``PreconditionFailed``, or 409
    ``ConditionalRequestConflict`` when another conditional write was in progress)."""
    from botocore import exceptions as bx

    if not isinstance(exc, bx.ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code") or "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


def part_size_for(size: int, part_size: int) -> int:
    """The part size of a multipart upload of ``size`` bytes: ``part_size``, raised (to a
    whole MiB) when the file would need more than :data:`MAX_PARTS` parts."""
    if size <= part_size * MAX_PARTS:
        return part_size
    need = -(-size // MAX_PARTS)
    return min(-(-need // PART_ROUNDING) * PART_ROUNDING, S3_MAX_PART)


def remember_abort(pending: Path, bucket: str, key: str, upload_id: str) -> None:
    pending.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(f"{bucket}\0{key}\0{upload_id}".encode("utf-8", "surrogatepass"))
    path = pending / f"{digest.hexdigest()}.json"
    tmp = pending / f".{secrets.token_hex(8)}.tmp"
    tmp.write_text(json.dumps({"bucket": bucket, "key": key, "upload_id": upload_id}))
    os.replace(tmp, path)

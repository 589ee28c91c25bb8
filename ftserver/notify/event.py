"""The event document: one JSON object per finished transfer, the same for every sink.

docs/events.md describes it field by field. Built from the dispatcher's
:class:`~ftserver.transfer.dispatch.Finished` at the moment the export ended, before the fin is
answered; serialised once (the exact bytes are what the broker gets and what the webhook
signs).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ftserver.config import ExportConfig
from ftserver.export.base import ExportInfo
from ftserver.export.layout import s3_key
from ftserver.transfer.dispatch import Finished

EXPORTED = "exported"
FAILED = "failed"


def destination_of(export: ExportConfig) -> Callable[[ExportInfo], str]:
    """How an export's location is written in events: the file's absolute path (local
    exporter) or its ``s3://bucket/key`` URI (S3)."""
    if export.kind == "s3":
        bucket = export.bucket

        def s3(info: ExportInfo) -> str:
            return f"s3://{bucket}/{s3_key(info.client_id, info.file_id, info.meta.name)}"

        return s3

    def local(info: ExportInfo) -> str:
        return str(info.path.absolute())

    return local


def rfc3339(seconds: float) -> str:
    """UTC time with milliseconds: ``2024-05-01T12:00:00.123Z``."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def document(
    f: Finished, *, node: str, now: float, destination: Callable[[ExportInfo], str]
) -> dict[str, Any]:
    """The event of one finished transfer."""
    doc: dict[str, Any] = {
        "event": EXPORTED if f.export is not None and f.outcome.ok else FAILED,
        "id": str(uuid.uuid4()),
        "time": rfc3339(now),
        "node": node,
        "clientId": f.client_id,
        "fileId": f.file_id,
        "name": f.meta.name if f.meta is not None else None,
    }
    if f.export is not None and f.outcome.ok:
        doc["size"] = f.export.size
        doc["checksum"] = f.export.checksum.lower()
        doc["destination"] = destination(f.export)
    else:
        doc["size"] = f.size
        doc["checksum"] = f.checksum.hex() if f.checksum is not None else None
        doc["destination"] = None
        doc["reason"] = f.outcome.description
        doc["reasonCode"] = f.outcome.reason_code
    return doc


def encode(doc: dict[str, Any]) -> bytes:
    """The exact bytes sent (compact JSON, UTF-8)."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()

"""Expiry of S3 exports: the objects whose init metadata has ``expire_at`` are deleted once
that moment has passed (docs/protocol.md §7), as the local exporter's collector does.

Finding them must stay cheap in a bucket of millions of objects, and must work from any node
(the one that exported the file may be gone). So an export with ``expire_at`` also writes an
empty marker object ``<export.checkpoint_prefix>%expire/<expire_at, 12 digits>/<object key>``
(:func:`ftserver.export.checkpoint.expiry_key`). ListObjects returns keys in order, so the
markers come oldest first: one collector pass is one listing of at most a page of markers,
stopping at the first one still in the future, and for each expired one a HEAD, the
deletion of the object and of the marker. The HEAD checks that the object still is the one
the marker names (its ``filemeta`` has the same ``expire_at``): a file deleted through the
HTTP API and uploaded again under the same key with another expiry is not deleted early.
Deleting twice is harmless, so collectors on several nodes at once do not conflict.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

from ftserver.export.checkpoint import expiry_prefix
from ftserver.export.s3util import is_gone

__all__ = ["collect_expired_s3"]

log = logging.getLogger(__name__)

#: markers looked at per pass (one ListObjects page)
PAGE: Final = 1000


def _marker(key: str, prefix: str) -> tuple[int, str] | None:
    rest = key[len(prefix) :]
    when, _, target = rest.partition("/")
    if len(when) != 12 or not when.isdigit() or not target:
        return None
    return int(when), target


def _expire_at(head: dict[str, Any]) -> int | None:
    md = {str(k).lower(): str(v) for k, v in (head.get("Metadata") or {}).items()}
    try:
        value = json.loads(md["filemeta"]).get("expire_at")
    except (KeyError, ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def collect_expired_s3(
    client: Any, bucket: str, checkpoint_prefix: str, now: float
) -> list[str]:
    """Delete the expired exports of ``bucket`` (markers before ``now``); returns the keys
    of the objects deleted."""
    prefix = expiry_prefix(checkpoint_prefix)
    answer = await client.list_objects(Bucket=bucket, Prefix=prefix, MaxKeys=PAGE)
    deleted: list[str] = []
    for obj in answer.get("Contents") or []:
        key = str(obj["Key"])
        parsed = _marker(key, prefix)
        if parsed is None:
            continue
        when, target = parsed
        if when >= now:
            break  # the rest are later still
        try:
            head: dict[str, Any] | None = await client.head_object(Bucket=bucket, Key=target)
        except Exception as exc:
            if not is_gone(exc, "NoSuchKey", "NotFound"):
                raise
            head = None
        if head is not None and _expire_at(head) == when:
            await client.delete_object(Bucket=bucket, Key=target)
            deleted.append(target)
            log.info("s3: export s3://%s/%s expired at %d: deleted", bucket, target, when)
        await client.delete_object(Bucket=bucket, Key=key)
    return deleted

"""Transfer checkpoints in the bucket: what another process or node needs to continue a
streamed S3 upload (docs/cluster.md, "Checkpoints and fencing").

One small JSON object per transfer whose file is being streamed to S3, at
``<export.checkpoint_prefix><esc(clientId)>/<esc(fileId)>``, rewritten after each part:

- ``meta``: the init metadata; ``key``: the object key; ``size`` and ``part_size``;
- ``upload_id`` and ``parts``: the multipart upload and the parts done, ``[number, ETag]``;
- ``hashed`` and ``hash_state``: the rolling SHA-256 of the file's bytes ``[0, hashed)``
  (``ftcore.RollingSha256.dumps``, base64), ``hashed`` being the end of the contiguous prefix
  of parts done, or the furthest part boundary before it whose state is known (a part
  uploaded before the hash reached it has none until the parts before it are done);
- ``node`` (``server.node``) and ``generation``: who owns the transfer; a node that takes a
  transfer over writes generation + 1.

Fencing, and what it rests on
    Every write is conditional. The first one is ``If-None-Match: *`` (it fails when a
    checkpoint exists: somebody else streams this transfer); every later one is
    ``If-Match: <the ETag of our previous write>``, and so is the final delete. S3 evaluates
    the condition atomically with the write (AWS S3 takes both headers on PutObject since
    2024; SeaweedFS 4.48, the version the tests run, answers 412 ``PreconditionFailed`` for
    both on PutObject and for If-Match on DeleteObject: checked by
    ``tests/s3/test_s3_stream.py``). So two
    writers can never both believe they own a checkpoint: the one whose write fails reads the
    checkpoint again and stops when it shows another node or a newer generation (it is
    fenced: it neither completes, aborts nor overwrites that transfer). Before completing
    the upload the owner writes the checkpoint once more (``state: "completing"``): a takeover
    that came before that write fences the completion; one that comes after it sees the
    state and must not touch the upload. The window between that write and the
    CompleteMultipartUpload is the only one in which a takeover is not seen, and the
    completion there is of the same bytes. A store without conditional writes would make
    every write unconditional: the rule would still hold between processes of one node (the
    transfer's flock), not between nodes.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any, Final

from ftserver.names import esc

__all__ = ["CHECKPOINT_VERSION", "Checkpoint", "checkpoint_key", "expiry_key", "expiry_prefix"]

#: the format of the checkpoint object
CHECKPOINT_VERSION: Final = 1
#: below the checkpoint prefix: expiry markers (``%`` + letters: never an escaped id)
EXPIRY_DIR: Final = "%expire/"


def checkpoint_key(prefix: str, client_id: str, file_id: str) -> str:
    """The key of a transfer's checkpoint."""
    return f"{prefix}{esc(client_id)}/{esc(file_id)}"


def expiry_prefix(prefix: str) -> str:
    """Where the expiry markers of exports with ``expire_at`` live (sorted by that time)."""
    return prefix + EXPIRY_DIR


def expiry_key(prefix: str, expire_at: int, key: str) -> str:
    """The marker of object ``key`` expiring at ``expire_at``: ListObjects returns them in
    time order (12 digits reach the year 33658)."""
    return f"{expiry_prefix(prefix)}{expire_at:012d}/{key}"


@dataclass(slots=True)
class Checkpoint:
    """One transfer's state in the bucket (see the module docstring)."""

    client_id: str
    file_id: str
    meta: dict[str, Any]
    key: str
    size: int
    part_size: int
    upload_id: str
    node: str
    generation: int = 1
    parts: dict[int, str] = field(default_factory=dict)
    hashed: int = 0
    hash_state: bytes = b""
    state: str = "streaming"
    updated_at: float = 0.0

    def to_bytes(self) -> bytes:
        doc = {
            "v": CHECKPOINT_VERSION,
            "clientid": self.client_id,
            "fileid": self.file_id,
            "meta": self.meta,
            "key": self.key,
            "size": self.size,
            "part_size": self.part_size,
            "upload_id": self.upload_id,
            "parts": [[n, self.parts[n]] for n in sorted(self.parts)],
            "hashed": self.hashed,
            "hash_state": base64.b64encode(self.hash_state).decode("ascii"),
            "node": self.node,
            "generation": self.generation,
            "state": self.state,
            "updated_at": round(time.time(), 3),
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        """ValueError when ``data`` is not a checkpoint of this version."""
        try:
            doc = json.loads(data)
            if doc.get("v") != CHECKPOINT_VERSION:
                raise ValueError(f"checkpoint version {doc.get('v')!r}")
            return cls(
                client_id=str(doc["clientid"]),
                file_id=str(doc["fileid"]),
                meta=dict(doc["meta"]),
                key=str(doc["key"]),
                size=int(doc["size"]),
                part_size=int(doc["part_size"]),
                upload_id=str(doc["upload_id"]),
                node=str(doc["node"]),
                generation=int(doc["generation"]),
                parts={int(n): str(e) for n, e in doc["parts"]},
                hashed=int(doc["hashed"]),
                hash_state=base64.b64decode(doc["hash_state"]),
                state=str(doc["state"]),
                updated_at=float(doc.get("updated_at", 0.0)),
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a checkpoint: {exc}") from exc

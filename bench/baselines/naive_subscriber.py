""" "What users build instead" (baseline b): an aiomqtt subscriber behind a broker.

    python -m bench.baselines.naive_subscriber --port PORT --dir DIR

It subscribes (QoS 1) to ``$file/#`` and ``$file-async/#`` on the broker and stores what the
devices publish the way EMQX's local storage does: every segment as its own file
(``DIR/segments/{fileId}/seg.{offset}``, checked against its checksum when the topic carries
one), the init metadata beside them, and at fin it concatenates the segments into
``DIR/exports/{fileId}/{name}``, hashing them, and compares the checksum (:mod:`.concat`).
The result goes back as a response document to the fin's MQTT 5 Response Topic: a subscriber
cannot answer in the PUBACK (the broker already sent it) and does not know the publisher's
client id. Segment files are written inline, the concatenation in a thread; nothing is
fsynced (ftserver's default mode does not fsync per segment either).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import aiomqtt
import uvloop

from bench.baselines.concat import Incomplete, assemble, segment_name


def export_path(root: Path, file_id: str, name: str) -> Path:
    return root / "exports" / file_id / name


class NaiveStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.meta: dict[str, dict[str, Any]] = {}
        self._dirs: set[str] = set()

    def seg_dir(self, file_id: str) -> Path:
        d = self.root / "segments" / file_id
        if file_id not in self._dirs:
            d.mkdir(parents=True, exist_ok=True)
            self._dirs.add(file_id)
        return d

    def init(self, file_id: str, payload: bytes) -> int:
        try:
            meta = json.loads(payload)
            str(meta["name"])
        except (ValueError, KeyError, TypeError):
            return 0x80
        self.meta[file_id] = meta
        (self.seg_dir(file_id) / "meta").write_bytes(payload)
        return 0

    def segment(self, file_id: str, offset: int, payload: bytes, checksum: str | None) -> int:
        if checksum is not None and hashlib.sha256(payload).hexdigest() != checksum.lower():
            return 0x80
        with open(self.seg_dir(file_id) / segment_name(offset), "wb") as f:
            f.write(payload)
        return 0

    def fin(self, file_id: str, size: int, checksum: str | None) -> tuple[int, str]:
        meta = self.meta.get(file_id)
        if meta is None:
            return 0x80, "incomplete"
        want = (checksum or meta.get("checksum") or "").lower()
        out = export_path(self.root, file_id, str(meta["name"]))
        if file_id not in self._dirs and out.exists():  # a fin again, after the export
            return (0, "success") if out.stat().st_size == size else (0x80, "filemeta_conflict")
        try:
            got = assemble(self.root / "segments" / file_id, size, out)
        except Incomplete:
            return 0x80, "incomplete"
        self._dirs.discard(file_id)
        if want and got != want:
            out.unlink(missing_ok=True)
            return 0x80, "checksum_mismatch"
        return 0, "success"


async def serve(port: int, root: Path) -> None:
    store = NaiveStore(root)
    client = aiomqtt.Client(
        "127.0.0.1", port, identifier="naive-subscriber", protocol=aiomqtt.ProtocolVersion.V5
    )
    tasks: set[asyncio.Task[None]] = set()
    running: dict[str, asyncio.Future[tuple[int, str]]] = {}

    async def answer(topic: str, props: Any, rc: int, why: str) -> None:
        target = getattr(props, "ResponseTopic", None) if props is not None else None
        if target:
            doc = {"vsn": "0.1", "topic": topic, "reason_code": rc, "reason_description": why}
            await client.publish(target, json.dumps(doc), qos=1)

    async def fin(topic: str, props: Any, fid: str, size: int, checksum: str | None) -> None:
        job = running.get(fid)  # a fin sent again while its assembly runs shares its result
        if job is None:
            job = running[fid] = asyncio.ensure_future(
                asyncio.to_thread(store.fin, fid, size, checksum)
            )
            job.add_done_callback(lambda _f: running.pop(fid, None))
        rc, why = await asyncio.shield(job)
        await answer(topic, props, rc, why)

    async with client:
        await client.subscribe([("$file/#", 1), ("$file-async/#", 1)])
        print("naive: subscribed", flush=True)
        async for message in client.messages:
            topic = message.topic.value
            levels = topic.split("/")
            payload = message.payload
            data = payload if isinstance(payload, bytes) else str(payload).encode()
            if len(levels) < 3:
                continue
            fid, rest = levels[1], levels[2:]
            if rest == ["init"]:
                rc = store.init(fid, data)
            elif rest[0] == "fin" and len(rest) in (2, 3):
                checksum = rest[2] if len(rest) == 3 else None
                task = asyncio.create_task(
                    fin(topic, message.properties, fid, int(rest[1]), checksum)
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                continue
            elif len(rest) in (1, 2) and rest[0].isdigit():
                rc = store.segment(fid, int(rest[0]), data, rest[1] if len(rest) == 2 else None)
            else:
                continue
            if rc:
                await answer(topic, message.properties, rc, "error")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", type=Path, required=True)
    args = p.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    uvloop.run(serve(args.port, args.dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

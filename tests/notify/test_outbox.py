"""The durable outbox on a real directory: order, bound, crash safety (a process killed with
SIGKILL right after its writes), the delivery lock, adoption of a removed worker's events."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ftserver.notify.courier import Backoff
from ftserver.notify.outbox import Outbox, OutboxBusy, adopt_orphans, outbox_dir


def event(n: int) -> tuple[str, bytes]:
    event_id = str(uuid.uuid4())
    return event_id, json.dumps({"id": event_id, "n": n}).encode()


def pending_numbers(box: Outbox) -> list[int]:
    out = []
    for name in box.head(len(box) + 1):
        entry = box.read(name)
        assert entry is not None
        out.append(entry.doc["n"])
    return out


def test_events_come_back_oldest_first_with_their_exact_bytes(tmp_path: Path) -> None:
    counts: list[int] = []
    box = Outbox(tmp_path / "box", 100, on_count=counts.append)
    sent = [event(n) for n in range(10)]
    for event_id, body in sent:
        box.put(event_id, body)
    assert len(box) == 10 and counts[-1] == 10
    names = box.head(3)
    entries = [box.read(name) for name in names]
    assert [(e.event_id, e.body) for e in entries if e is not None] == sent[:3]
    assert box.head(3, skip=set(names[:2])) == box.head(5)[2:5]
    box.remove(names[0])
    assert not (box.directory / names[0]).exists()
    assert pending_numbers(box) == list(range(1, 10))
    assert counts[-1] == 9


def test_the_bound_drops_the_oldest_and_counts_it(tmp_path: Path) -> None:
    drops: list[None] = []
    box = Outbox(tmp_path / "box", 3, on_drop=lambda: drops.append(None))
    for n in range(5):
        box.put(*event(n))
    assert len(drops) == 2
    assert pending_numbers(box) == [2, 3, 4]
    assert len(list(box.directory.glob("*.json"))) == 3
    # a smaller bound at the next start drops the surplus then
    again = Outbox(tmp_path / "box", 2, on_drop=lambda: drops.append(None))
    assert pending_numbers(again) == [3, 4] and len(drops) == 3


WRITER = """
import json, sys, uuid
from pathlib import Path
from ftserver.notify.outbox import Outbox
box = Outbox(Path(sys.argv[1]), 1000)
for n in range(200):
    i = str(uuid.uuid4())
    box.put(i, json.dumps({"id": i, "n": n}).encode())
print("written", flush=True)
sys.stdin.read()
"""


def test_events_survive_the_writer_being_killed(tmp_path: Path) -> None:
    """put() returns once the event would survive kill -9 (no flush happened here at all)."""
    directory = tmp_path / "box"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    with proc.stdin, proc.stdout:
        assert proc.stdout.readline() == "written\n"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    box = Outbox(directory, 1000)
    assert pending_numbers(box) == list(range(200))


def test_reopening_cleans_interrupted_and_torn_writes(tmp_path: Path) -> None:
    drops: list[None] = []
    box = Outbox(tmp_path / "box", 100)
    for n in range(3):
        box.put(*event(n))
    names = box.head(3)
    box.sync(box.take_unsynced())
    assert box.take_unsynced() == []
    (box.directory / (".tmp-" + names[0])).write_bytes(b'{"id": "x"')  # write, no rename
    (box.directory / names[1]).write_bytes(b"")  # what a power loss may leave
    again = Outbox(tmp_path / "box", 100, on_drop=lambda: drops.append(None))
    assert not list(again.directory.glob(".tmp-*"))
    assert again.head(3) == names
    assert again.read(names[1]) is None  # unreadable: dropped, counted, removed
    assert drops == [None] and not (again.directory / names[1]).exists()
    assert pending_numbers(again) == [0, 2]


def test_one_process_delivers_from_an_outbox(tmp_path: Path) -> None:
    first = Outbox(tmp_path / "box", 10)
    second = Outbox(tmp_path / "box", 10)
    first.lock()
    with pytest.raises(OutboxBusy):
        second.lock()
    first.unlock()
    second.lock()
    assert second.locked and not first.locked
    second.unlock()


def test_a_removed_workers_events_are_adopted(tmp_path: Path) -> None:
    """Four workers before, two now: worker 0 takes over 2's events, worker 1 takes 3's."""
    for worker in range(4):
        box = Outbox(outbox_dir(tmp_path, "webhook", worker), 100)
        for n in range(2):
            box.put(*event(worker * 10 + n))
    root = tmp_path / "outbox" / "webhook"
    held = Outbox(root / "3", 100)
    held.lock()  # a process still delivers from 3: left alone
    assert adopt_orphans(root, 1, 2) == []
    held.unlock()
    assert adopt_orphans(root, 0, 2) == [root / "2"]
    assert adopt_orphans(root, 1, 2) == [root / "3"]
    assert sorted(os.listdir(root)) == ["0", "1"]
    assert sorted(pending_numbers(Outbox(root / "0", 100))) == [0, 1, 20, 21]
    assert sorted(pending_numbers(Outbox(root / "1", 100))) == [10, 11, 30, 31]


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    b = Backoff(0.2, 3.0)
    waits = [b.next() for _ in range(8)]
    steps = [0.2, 0.4, 0.8, 1.6, 3.0, 3.0, 3.0, 3.0]
    for wait, step in zip(waits, steps, strict=True):
        assert step / 2 <= wait <= step
    b.reset()
    assert b.next() <= 0.2

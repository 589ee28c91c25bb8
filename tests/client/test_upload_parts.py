"""The uploader's IO-free parts on their own: the options, the byte ledger, the pause control
and the tracker that gives commands their results (fed the callbacks paho would make)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import typing
from pathlib import Path

import pytest

from ftserver.client import DEFAULT_SEGMENT_SIZE, Timeouts, UploadOptions, upload
from ftserver.client.commands import Command, Tracker
from ftserver.client.flight import PauseControl
from ftserver.client.ledger import Ledger
from ftserver.client.link import Backoff
from ftserver.client.options import UploadFields
from ftserver.client.state import UploadState
from ftserver.client.state import load as load_state
from ftserver.client.tap import Document

# -- options -----------------------------------------------------------------------------------


def test_keyword_form_names_every_option() -> None:
    """upload()'s keywords are typed by UploadFields: it must list exactly the options."""
    option_fields = {f.name for f in dataclasses.fields(UploadOptions)}
    assert set(typing.get_type_hints(UploadFields)) == option_fields


def test_options_defaults() -> None:
    opts = UploadOptions()
    assert opts.mode == "sync" and opts.segment_size == DEFAULT_SEGMENT_SIZE
    assert opts.timeouts == Timeouts() and opts.state_path is None
    assert UploadOptions(state_file="x/s.json").state_path == Path("x/s.json")


@pytest.mark.parametrize(
    "fields",
    [
        {"mode": "fast"},
        {"segment_size": 0},
        {"window": 0},
        {"max_retries": -1},
        {"file_id": ""},
        {"file_id": "a/b"},
        {"file_id": "a+"},
        {"file_id": "#"},
        {"file_id": "a\0"},
    ],
)
def test_options_refuse_unusable_values(fields: dict[str, typing.Any]) -> None:
    with pytest.raises(ValueError):
        UploadOptions(**fields)
    # the keyword form is checked the same way, before anything is read or connected
    with pytest.raises(ValueError):
        asyncio.run(upload(Path("/nonexistent"), UploadOptions(), **fields))


def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        asyncio.run(upload(Path("/nonexistent"), segment_sise=1))  # type: ignore[call-arg]


def test_init_meta_has_only_what_was_given() -> None:
    assert UploadOptions().init_meta("a", 3, None) == {"name": "a", "size": 3}
    opts = UploadOptions(expire_at=9, segments_ttl=60, user_data={"k": [1]})
    assert opts.init_meta("a", 3, "ab" * 32) == {
        "name": "a",
        "size": 3,
        "checksum": "ab" * 32,
        "expire_at": 9,
        "segments_ttl": 60,
        "user_data": {"k": [1]},
    }


# -- ledger ------------------------------------------------------------------------------------


def _state(size: int, acked: list[tuple[int, int]] | None = None) -> UploadState:
    return UploadState(
        client_id="c",
        file_id="f",
        meta={"name": "n", "size": size},
        size=size,
        checksum=None,
        source="<stream>",
        acked=acked or [],
    )


def test_ledger_counts_resends_once_per_byte() -> None:
    ledger = Ledger(_state(100), None, 0.0)
    ledger.published(0, 50)
    ledger.published(50, 50)
    assert (ledger.bytes_sent, ledger.bytes_resent) == (100, 0)
    ledger.published(25, 50)  # all of it was sent before
    ledger.republished(10)  # paho's own resend after a reconnect
    assert (ledger.bytes_sent, ledger.bytes_resent) == (160, 60)


def test_ledger_missing_and_forget() -> None:
    ledger = Ledger(_state(100, [(0, 40)]), None, 0.0)
    assert ledger.resumed == 40 and ledger.done == 40
    assert ledger.missing() == [(40, 100)]
    ledger.acknowledged(40, 60)
    assert ledger.missing() == [] and ledger.done == 100
    ledger.forget([(10, 20), (90, 200)])
    assert ledger.missing() == [(10, 20), (90, 100)] and ledger.done == 80
    assert ledger.resumed == 40  # what this run started from does not change


def test_ledger_saves_when_due_or_forced(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    ledger = Ledger(_state(100), path, 0.0)
    ledger.acknowledged(0, 10)
    ledger.save(0.5)  # less than a second since the last save
    assert not path.exists()
    ledger.save(1.5)
    saved = load_state(path)
    assert saved is not None and saved.acked == [(0, 10)]
    ledger.acknowledged(10, 10)
    ledger.save(1.6, force=True)
    saved = load_state(path)
    assert saved is not None and saved.acked == [(0, 20)]
    ledger.finished()
    assert not path.exists()


# -- pauses ------------------------------------------------------------------------------------


def test_one_pause_per_episode_growing_until_a_success() -> None:
    pause = PauseControl(Backoff(1.0, 8.0))
    first = pause.pause(now=10.0, sent_at=9.0)
    assert first is not None and 0.5 <= first <= 1.0 and pause.paused(10.0)
    # more 0x97 for commands sent before or during that pause: the same episode
    assert pause.pause(now=10.1, sent_at=9.5) is None
    assert pause.pause(now=pause.until + 0.1, sent_at=pause.until - 0.01) is None
    assert pause.count == 1
    second = pause.pause(now=pause.until + 1, sent_at=pause.until + 0.5)
    assert second is not None and 1.0 <= second <= 2.0 and pause.count == 2
    pause.succeeded()
    third = pause.pause(now=pause.until + 1, sent_at=pause.until + 0.5)
    assert third is not None and third <= 1.0


# -- tracker -----------------------------------------------------------------------------------


def _tracker(*, v5: bool = True, async_mode: bool = False, docs: bool = True) -> Tracker:
    return Tracker(
        v5=v5,
        async_mode=async_mode,
        doc_grace=5.0,
        docs=lambda: docs,
        wake=asyncio.Event(),
        clock=lambda: 100.0,
    )


def _doc(topic: str, mid: int, code: int, desc: str, **extra: object) -> Document:
    body = {"vsn": "0.1", "topic": topic, "packet_id": mid, "reason_code": code}
    body["reason_description"] = desc
    body.update(extra)
    return Document(topic="$file-response/c", payload=json.dumps(body).encode(), correlation=None)


def _sent(tracker: Tracker, cmd: Command, mid: int, corr: bytes = b"") -> None:
    cmd.published(now=0.0, gen=1, deadline=30.0)
    tracker.track(cmd, cmd.topic, mid, corr)


def test_v5_sync_result_is_the_puback() -> None:
    tracker = _tracker()
    seg = Command("segment", "$file/f/0", offset=0, length=10)
    _sent(tracker, seg, 1)
    assert tracker.inflight_bytes == 10 and tracker.waiting() == [seg]
    tracker.on_puback(1, 0, None)
    assert tracker.wake.is_set()
    assert list(tracker.collect()) == [seg] and seg.code == 0 and seg.description == "success"
    assert tracker.inflight_bytes == 0 and not tracker.inflight
    tracker.on_puback(1, 0x80, None)  # a late duplicate changes nothing
    assert list(tracker.collect()) == []


def test_v5_failure_puback_waits_for_the_document() -> None:
    tracker = _tracker()
    fin = Command("fin", "$file/f/fin/10")
    _sent(tracker, fin, 7, b"corr-1")
    tracker.on_puback(7, 0x80, None)
    assert not fin.resolved and fin.ack_code == 0x80 and fin.deadline == 105.0
    doc = Document(
        topic="$file-response/c",
        payload=json.dumps(
            {"reason_code": 128, "reason_description": "incomplete", "missing": [[0, 5]]}
        ).encode(),
        correlation=b"corr-1",
    )
    tracker.on_document(doc)
    assert list(tracker.collect()) == [fin]
    assert (fin.code, fin.description, fin.extra) == (0x80, "incomplete", {"missing": [[0, 5]]})


def test_v5_failure_puback_without_documents_resolves_at_once() -> None:
    tracker = _tracker(docs=False)
    seg = Command("segment", "$file/f/0", offset=0, length=1)
    _sent(tracker, seg, 2)
    tracker.on_puback(2, 0x97, None)
    assert seg.resolved and (seg.code, seg.description) == (0x97, "quota_exceeded")


def test_async_fin_and_mqtt311_need_the_document() -> None:
    tracker = _tracker(async_mode=True)
    fin = Command("fin", "$file-async/f/fin/1")
    _sent(tracker, fin, 3)
    tracker.on_puback(3, 0, None)
    assert fin.acked and not fin.resolved
    tracker.on_document(_doc("$file-async/f/fin/1", 3, 0, "success"))
    assert fin.resolved and fin.code == 0

    v4 = _tracker(v5=False)
    init = Command("init", "$file/f/init")
    _sent(v4, init, 4)
    v4.on_puback(4, 0, None)
    assert not init.resolved
    v4.on_document(_doc("$file/f/other", 4, 0, "success"))  # another command's document
    assert not init.resolved
    v4.on_document(_doc("$file/f/init", 4, 0x80, "invalid_filemeta"))
    assert init.resolved and init.description == "invalid_filemeta"


def test_resolved_command_forgets_every_publish() -> None:
    tracker = _tracker(v5=False)
    seg = Command("segment", "$file/f/0", offset=0, length=4)
    _sent(tracker, seg, 5)
    _sent(tracker, seg, 6)  # published again: still one command in flight
    assert tracker.inflight_bytes == 4 and seg.attempts == 2
    tracker.on_document(_doc("$file/f/0", 5, 0, "success"))
    assert seg.resolved
    seg_again = Command("segment", "$file/f/0", offset=0, length=4)
    _sent(tracker, seg_again, 9)
    tracker.on_document(_doc("$file/f/0", 6, 0x80, "late"))  # the old publish's document
    assert not seg_again.resolved


def test_correlations_are_unique() -> None:
    a, b = _tracker(), _tracker()
    ids = {a.new_correlation() for _ in range(100)} | {b.new_correlation() for _ in range(100)}
    assert len(ids) == 200

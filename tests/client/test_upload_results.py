"""The uploader's reaction to each EIP-0021 result, against a scripted server double
(fakebroker.FakeFtServer, built on ftserver's codec) for the results a real server does not
give on demand."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from fakebroker import Answer, FakeFtServer, Policy

from ftserver.client import (
    MqttSettings,
    Timeouts,
    UploadCancelled,
    UploadRejected,
    UploadResult,
    upload,
)

KiB = 1024
T = TypeVar("T")
DATA = os.urandom(100 * KiB + 1)
FAST = Timeouts(pause_backoff=(0.05, 0.2), doc_grace=2.0)


def run_against(policy: Policy, fn: Callable[[int], Awaitable[T]]) -> tuple[T, FakeFtServer]:
    async def main() -> T:
        await fake.start()
        try:
            return await fn(fake.port)
        finally:
            await fake.stop()

    fake = FakeFtServer(policy)
    return asyncio.run(main()), fake


def send(
    version: int = 5, mode: str = "sync", **kw: object
) -> Callable[[int], Awaitable[UploadResult]]:
    async def go(port: int) -> UploadResult:
        return await upload(
            _stream(),
            name="f.bin",
            file_id="f1",
            mqtt=MqttSettings(port=port, client_id="dev", version=version),
            mode=mode,  # type: ignore[arg-type]
            segment_size=10 * KiB,
            window=4,
            timeouts=FAST,
            **kw,  # type: ignore[arg-type]
        )

    return go


def _stream() -> io.BytesIO:
    return io.BytesIO(DATA)


def exported(fake: FakeFtServer) -> bytes | None:
    return fake.transfers[("dev", "f1")].exported


@pytest.mark.parametrize(("version", "mode"), [(5, "sync"), (5, "async"), (4, "sync")])
def test_0x97_pauses_then_succeeds(version: int, mode: str) -> None:
    paused = 0

    def policy(kind: str, fid: str, n: int, seen: int) -> Answer:
        nonlocal paused
        if kind == "segment" and paused < 3:
            paused += 1
            return Answer(0x97, "quota_exceeded")
        return Answer()

    result, fake = run_against(policy, send(version, mode))
    assert exported(fake) == DATA
    assert fake.answers.count(0x97) == 3
    assert result.pauses >= 1
    # every refused segment was sent again after the pause
    refused = [t for t, c in zip(fake.log, fake.answers, strict=True) if c == 0x97]
    for topic in refused:
        assert fake.seen[topic] == 2


def test_0x97_on_init_and_fin_too() -> None:
    def policy(kind: str, fid: str, n: int, seen: int) -> Answer:
        if kind in ("init", "fin") and seen <= 2:
            return Answer(0x97, "storage_full")
        return Answer()

    result, fake = run_against(policy, send())
    assert exported(fake) == DATA
    assert fake.seen["$file/f1/init"] == 3 and fake.seen[f"$file/f1/fin/{len(DATA)}"] == 3
    assert result.pauses == 4


@pytest.mark.parametrize("version", [4, 5])
def test_0x80_on_a_segment_resends_it(version: int) -> None:
    def policy(kind: str, fid: str, n: int, seen: int) -> Answer:
        if kind == "segment" and n == 20 * KiB and seen == 1:
            return Answer(0x80, "checksum_mismatch")
        return Answer()

    result, fake = run_against(policy, send(version))
    assert exported(fake) == DATA
    assert fake.seen[f"$file/f1/{20 * KiB}"] == 2
    assert result.retries == 1 and result.bytes_resent == 10 * KiB


def test_0x80_retries_are_bounded() -> None:
    def policy(kind: str, fid: str, n: int, seen: int) -> Answer:
        if kind == "segment" and n == 30 * KiB:
            return Answer(0x80, "internal_error")
        return Answer()

    with pytest.raises(UploadRejected) as info:
        run_against(policy, send(max_retries=2))
    assert info.value.reason_code == 0x80 and info.value.description == "internal_error"
    assert "offset 30720" in str(info.value)


@pytest.mark.parametrize(("version", "mode"), [(5, "sync"), (5, "async"), (4, "async")])
def test_fin_incomplete_resends_the_missing_ranges(version: int, mode: str) -> None:
    """Two segments acknowledged but lost: fin reports them missing, they go again."""
    lost = {20 * KiB, 70 * KiB}

    def policy(kind: str, fid: str, n: int, seen: int) -> Answer:
        if kind == "segment" and n in lost and seen == 1:
            return Answer(store=False)
        return Answer()

    result, fake = run_against(policy, send(version, mode))
    assert exported(fake) == DATA
    assert result.fins == 2
    assert result.bytes_resent == 20 * KiB
    prefix = "$file-async/f1/" if mode == "async" else "$file/f1/"
    for offset in lost:
        assert fake.seen[f"{prefix}{offset}"] == 2
    # nothing else was sent twice
    assert (
        sum(v for k, v in fake.seen.items() if "fin" not in k)
        == len(range(0, len(DATA), 10 * KiB)) + 3
    )


def test_fin_incomplete_without_missing_sends_init_again() -> None:
    """A server that lost the init metadata answers fin incomplete without ranges."""

    class Forgetful(FakeFtServer):
        def _command(self, client_id: str, topic: str, payload: bytes) -> Answer:
            answer = super()._command(client_id, topic, payload)
            if topic.endswith("/init") and self.seen[topic] == 1:
                self.transfers[(client_id, "f1")].meta = None
            return answer

    async def main() -> UploadResult:
        await fake.start()
        try:
            return await send()(fake.port)
        finally:
            await fake.stop()

    fake = Forgetful()
    result = asyncio.run(main())
    assert exported(fake) == DATA
    assert fake.seen["$file/f1/init"] == 2 and result.fins == 2
    assert result.bytes_resent == 0


@pytest.mark.parametrize("version", [4, 5])
def test_0x83_stops_at_once(version: int) -> None:
    def policy(kind: str, fid: str, n: int, seen: int) -> Answer:
        if kind == "segment" and n >= 50 * KiB:
            return Answer(0x83, "file_too_large")
        return Answer()

    with pytest.raises(UploadCancelled) as info:
        run_against(policy, send(version))
    assert info.value.description == "file_too_large" and info.value.reason_code == 0x83


def test_a_broker_without_file_transfer_is_reported() -> None:
    def policy(kind: str, fid: str, n: int, seen: int) -> Answer:
        return Answer(0x10, "no_matching_subscribers")

    with pytest.raises(UploadRejected, match="does not handle file transfer"):
        run_against(policy, send())


def test_init_refused_for_good() -> None:
    def policy(kind: str, fid: str, n: int, seen: int) -> Answer:
        return Answer(0x80, "filemeta_conflict") if kind == "init" else Answer()

    with pytest.raises(UploadRejected) as info:
        run_against(policy, send())
    assert info.value.description == "filemeta_conflict"

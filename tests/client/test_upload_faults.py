"""Uploads through a proxy that closes, resets and black-holes connections at random points:
the file still arrives byte-identical, in each mode and MQTT version."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest
from clienthelpers import exported, sha256_of, write_random
from faultproxy import FaultProxy

from ftharness import ServerProcess
from ftserver.client import MqttSettings, Timeouts, UploadResult, upload

KiB = 1024
MiB = 1024 * KiB

#: quick to notice a black hole: keep-alive 1 s, a command unanswered for 3 s
TIMEOUTS = Timeouts(
    connect=5.0, command=3.0, reconnect=60.0, stall=120.0, reconnect_backoff=(0.05, 0.5)
)


@pytest.mark.parametrize(
    ("version", "mode"),
    [(5, "sync"), (5, "async"), (4, "sync"), (4, "async")],
    ids=["mqtt5-sync", "mqtt5-async", "mqtt311-sync", "mqtt311-async"],
)
def test_random_faults(
    server: ServerProcess, cid: str, tmp_path: Path, version: int, mode: str
) -> None:
    path = tmp_path / "faulty.bin"
    digest = write_random(path, 6 * MiB, seed=version)
    proxy = FaultProxy(
        server.mqtt_port,
        faults=("close", "reset", "stall"),
        budget=(256 * KiB, 1536 * KiB),
        stall_hold=5.0,
        seed=version * 7 + len(mode),
    )
    result = _upload(proxy, path, cid, version, mode)
    assert sha256_of(exported(server, cid, result.file_id, "faulty.bin")) == digest
    assert sum(proxy.struck.values()) >= 3, proxy.struck
    assert result.reconnects >= 3
    assert result.bytes_sent >= result.size


def _upload(proxy: FaultProxy, path: Path, cid: str, version: int, mode: str) -> UploadResult:
    async def main() -> UploadResult:
        port = await proxy.start()
        try:
            return await upload(
                path,
                mqtt=MqttSettings(port=port, client_id=cid, version=version, keepalive=1),
                mode=mode,  # type: ignore[arg-type]
                segment_size=64 * KiB,
                window=8,
                timeouts=TIMEOUTS,
            )
        finally:
            await proxy.stop()

    return asyncio.run(main())


def test_cuts_cost_a_window_each(server: ServerProcess, cid: str, tmp_path: Path) -> None:
    """Every connection cut after 2-3 MiB: what is resent stays within one window of segments
    per cut (paho resends the unacknowledged ones after the reconnect, nothing more)."""
    path = tmp_path / "cuts.bin"
    digest = write_random(path, 16 * MiB, seed=9)
    proxy = FaultProxy(
        server.mqtt_port, faults=("close", "reset"), budget=(2 * MiB, 3 * MiB), seed=3
    )
    result = _upload(proxy, path, cid, 5, "sync")
    assert sha256_of(exported(server, cid, result.file_id, "cuts.bin")) == digest
    cuts = sum(proxy.struck.values())
    assert cuts >= 3
    assert 1 <= result.reconnects <= cuts
    assert result.bytes_resent <= cuts * 8 * 64 * KiB


@pytest.mark.parametrize("version", [4, 5], ids=["mqtt311", "mqtt5"])
def test_shared_client_reconnected_by_the_application(
    server: ServerProcess, cid: str, tmp_path: Path, version: int
) -> None:
    """Over an application's aiomqtt client whose connection keeps breaking: the application
    reconnects it (the usual retry loop around ``async with client``), the upload waits for
    that and carries on (clean sessions here: it subscribes again and resends)."""
    path = tmp_path / "shared-faulty.bin"
    digest = write_random(path, 4 * MiB, seed=11)
    proxy = FaultProxy(server.mqtt_port, faults=("close", "reset"), budget=(MiB, 2 * MiB), seed=5)

    async def application() -> UploadResult:
        port = await proxy.start()
        client = aiomqtt.Client(
            "127.0.0.1",
            port,
            identifier=cid,
            protocol=aiomqtt.ProtocolVersion.V5 if version == 5 else aiomqtt.ProtocolVersion.V311,
            keepalive=2,
        )
        task: asyncio.Task[UploadResult] | None = None
        try:
            while True:
                try:
                    async with client:
                        if task is None:
                            task = asyncio.create_task(
                                upload(
                                    path,
                                    client=client,
                                    mode="async",
                                    segment_size=64 * KiB,
                                    window=8,
                                    timeouts=TIMEOUTS,
                                )
                            )
                        watch = asyncio.ensure_future(anext(aiter(client.messages)))
                        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
                        if task.done():
                            watch.cancel()
                            await asyncio.gather(watch, return_exceptions=True)
                            return task.result()
                        watch.result()  # MqttError when the connection dropped
                except aiomqtt.MqttError:
                    await asyncio.sleep(0.05)
        finally:
            await proxy.stop()

    result = asyncio.run(application())
    assert sha256_of(exported(server, cid, result.file_id, "shared-faulty.bin")) == digest
    assert result.reconnects >= 1 and sum(proxy.struck.values()) >= 1

"""The uploader against a real ftserver: each mode and MQTT version, sources, shared clients,
and the server's own 0x83 and 0x97 answers."""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest
from clienthelpers import exported, sha256_of, write_random
from paho.mqtt.packettypes import PacketTypes

from ftharness import ServerProcess, read_manifest
from ftserver.client import (
    MqttSettings,
    Progress,
    UploadCancelled,
    UploadOptions,
    upload,
)
from ftserver.client.tap import properties

KiB = 1024
MiB = 1024 * KiB


@pytest.mark.parametrize("version", [4, 5], ids=["mqtt311", "mqtt5"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_each_mode_and_version(
    server: ServerProcess, cid: str, tmp_path: Path, mode: str, version: int
) -> None:
    path = tmp_path / "data.bin"
    digest = write_random(path, 3 * MiB + 17)
    seen: list[Progress] = []
    result = asyncio.run(
        upload(
            path,
            mqtt=MqttSettings(port=server.mqtt_port, client_id=cid, version=version),
            mode=mode,  # type: ignore[arg-type]
            segment_size=64 * KiB,
            window=8,
            on_progress=seen.append,
        )
    )
    export = exported(server, cid, result.file_id, "data.bin")
    assert sha256_of(export) == digest
    assert result.size == 3 * MiB + 17 and result.checksum == digest
    assert result.bytes_sent == result.size and result.bytes_resent == 0
    assert result.fins == 1 and result.reconnects == 0
    manifest = read_manifest(export)
    assert manifest["checksum"] == digest.upper() and manifest["size"] == result.size
    assert seen[-1].state == "done" and seen[-1].bytes_done == result.size
    assert "uploading" in {p.state for p in seen}


def test_segment_checksums_and_metadata(server: ServerProcess, cid: str, tmp_path: Path) -> None:
    path = tmp_path / "meta.bin"
    digest = write_random(path, 300 * KiB + 1, seed=2)
    result = asyncio.run(
        upload(
            path,
            name="renamed.bin",
            file_id="fixed-id",
            mqtt=MqttSettings(port=server.mqtt_port, client_id=cid),
            segment_size=10 * KiB + 3,
            window=3,
            segment_checksums=True,
            expire_at=4102444800,
            segments_ttl=600,
            user_data={"k": ["v", 1]},
        )
    )
    assert result.file_id == "fixed-id" and result.name == "renamed.bin"
    export = exported(server, cid, "fixed-id", "renamed.bin")
    assert sha256_of(export) == digest
    manifest = read_manifest(export)
    assert manifest["user_data"] == {"k": ["v", 1]} and manifest["expire_at"] == 4102444800


def test_response_topic(server: ServerProcess, cid: str, tmp_path: Path) -> None:
    """MQTT 5, asynchronous: the documents come on a Response Topic of the client's choice."""
    path = tmp_path / "rt.bin"
    digest = write_random(path, 512 * KiB, seed=12)
    result = asyncio.run(
        upload(
            path,
            mqtt=MqttSettings(port=server.mqtt_port, client_id=cid),
            mode="async",
            response_topic=f"replies/{cid}",
            segment_size=64 * KiB,
        )
    )
    assert sha256_of(exported(server, cid, result.file_id, "rt.bin")) == digest


def test_options_built_once_for_several_files(
    server: ServerProcess, cid: str, tmp_path: Path
) -> None:
    """One UploadOptions for two files; a keyword argument overrides its field for one call."""
    options = UploadOptions(
        segment_size=16 * KiB, window=2, segment_checksums=True, user_data={"batch": 7}
    )
    settings = MqttSettings(port=server.mqtt_port, client_id=cid)
    digests = [write_random(tmp_path / f"f{i}.bin", 100 * KiB + i, seed=20 + i) for i in (0, 1)]

    async def run() -> list[tuple[str, str]]:
        first = await upload(tmp_path / "f0.bin", options, mqtt=settings)
        second = await upload(tmp_path / "f1.bin", options, mqtt=settings, name="renamed.bin")
        return [(first.file_id, first.name), (second.file_id, second.name)]

    (fid0, name0), (fid1, name1) = asyncio.run(run())
    assert (name0, name1) == ("f0.bin", "renamed.bin") and fid0 != fid1
    assert options.name is None  # the override did not change the options
    for (fid, name), digest in zip([(fid0, name0), (fid1, name1)], digests, strict=True):
        export = exported(server, cid, fid, name)
        assert sha256_of(export) == digest
        assert read_manifest(export)["user_data"] == {"batch": 7}


@pytest.mark.parametrize("kind", ["empty", "stream", "pipe"])
def test_sources(server: ServerProcess, cid: str, tmp_path: Path, kind: str) -> None:
    """An empty file, a seekable stream, and a pipe (copied to a temporary file first)."""
    data = b"" if kind == "empty" else os.urandom(200 * KiB + 5)
    settings = MqttSettings(port=server.mqtt_port, client_id=cid)

    async def run() -> tuple[str, str]:
        if kind == "empty":
            (tmp_path / "empty.bin").write_bytes(b"")
            r = await upload(tmp_path / "empty.bin", mqtt=settings)
        elif kind == "stream":
            r = await upload(io.BytesIO(data), name="stream.bin", mqtt=settings, segment_size=7000)
        else:
            rfd, wfd = os.pipe()
            feeder = threading.Thread(target=_feed, args=(wfd, data))
            feeder.start()
            with os.fdopen(rfd, "rb") as stream:
                r = await upload(stream, name="pipe.bin", mqtt=settings)
            feeder.join()
        return r.file_id, r.name

    fid, name = asyncio.run(run())
    assert exported(server, cid, fid, name).read_bytes() == data


def _feed(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as w:
        w.write(data)


def test_shared_client_keeps_the_applications_messages(
    server: ServerProcess, cid: str, tmp_path: Path
) -> None:
    """Over an application's connection: the uploader's response documents do not reach the
    application's message queue, the application's own messages still do, and the client is
    left connected and usable."""
    path = tmp_path / "shared.bin"
    digest = write_random(path, 1 * MiB, seed=3)

    async def run() -> tuple[str, list[str], list[dict[str, object]]]:
        async with aiomqtt.Client(
            "127.0.0.1",
            server.mqtt_port,
            identifier=cid,
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as client:
            await client.subscribe("app/replies", qos=1)
            task = asyncio.create_task(upload(path, client=client, mode="async", window=4))
            # the application's own traffic on the same connection, meanwhile
            props = properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "app/replies"
            await client.publish(
                "$file/app-file/init", json.dumps({"name": "app.txt"}), qos=1, properties=props
            )
            got: list[dict[str, object]] = []
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                got.append(json.loads(message.payload))
                break
            result = await task
            leftovers = []
            while len(client.messages):
                msg = await anext(aiter(client.messages))
                leftovers.append(str(msg.topic))
            await client.publish("app/after", b"still usable", qos=1)
            return result.file_id, leftovers, got

    fid, leftovers, got = asyncio.run(run())
    assert sha256_of(exported(server, cid, fid, "shared.bin")) == digest
    assert leftovers == []
    assert got[0]["topic"] == "$file/app-file/init" and got[0]["reason_code"] == 0


@pytest.mark.parametrize("version", [4, 5], ids=["mqtt311", "mqtt5"])
def test_0x83_stops_the_upload(
    make_server: Callable[..., ServerProcess], tmp_path: Path, version: int
) -> None:
    srv = make_server("--set", "limits.max_file_size=1MiB")
    path = tmp_path / "big.bin"
    write_random(path, 2 * MiB)
    with pytest.raises(UploadCancelled) as info:
        asyncio.run(
            upload(
                path,
                mqtt=MqttSettings(port=srv.mqtt_port, client_id="toolarge", version=version),
                segment_size=256 * KiB,
                state_file=tmp_path / "state.json",
            )
        )
    assert info.value.reason_code == 0x83
    assert info.value.description == "file_too_large"
    assert info.value.client_id == "toolarge" and info.value.file_id


@pytest.mark.parametrize("version", [4, 5], ids=["mqtt311", "mqtt5"])
def test_real_server_quota_makes_the_client_pause(
    make_server: Callable[..., ServerProcess], tmp_path: Path, version: int
) -> None:
    """limits.client_byte_rate answers 0x97 quota_exceeded: the upload pauses and resumes."""
    srv = make_server("--set", "limits.client_byte_rate=512KiB")
    path = tmp_path / "quota.bin"
    digest = write_random(path, 2 * MiB, seed=4)
    result = asyncio.run(
        upload(
            path,
            mqtt=MqttSettings(port=srv.mqtt_port, client_id=f"quota{version}", version=version),
            segment_size=64 * KiB,
            window=8,
        )
    )
    assert result.pauses >= 1
    assert sha256_of(exported(srv, f"quota{version}", result.file_id, "quota.bin")) == digest

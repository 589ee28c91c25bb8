"""Resuming from the state file: after the uploading process is SIGKILLed, after the server
lost data it had acknowledged, and not when the file changed."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from clienthelpers import exported, run_cli, sha256_of, write_random
from faultproxy import FaultProxy

from ftharness import ServerProcess
from ftserver.client import MqttSettings, upload
from ftserver.client import state as statefile
from ftserver.client.state import UploadState

KiB = 1024
MiB = 1024 * KiB


def _acked(path: Path) -> int:
    try:
        state = statefile.load(path)
    except (ValueError, OSError):
        return 0
    return 0 if state is None else sum(e - s for s, e in state.acked)


def test_resume_after_the_process_is_killed(server: ServerProcess, tmp_path: Path) -> None:
    """`ftserver upload` killed with SIGKILL in the middle (a slow link makes the middle last),
    then `ftserver upload --resume`: only the rest is sent, the export is byte-identical."""
    path = tmp_path / "killed.bin"
    size = 12 * MiB
    digest = write_random(path, size, seed=6)
    state = tmp_path / "state.json"

    async def first_run() -> tuple[int, int]:
        proxy = FaultProxy(server.mqtt_port, faults=(), rate=3 * MiB)
        port = await proxy.start()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ftserver", "upload", str(path),
                "--port", str(port), "--client-id", "killed",
                "--state", str(state), "--progress", "log",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            while _acked(state) < 3 * MiB:
                assert proc.returncode is None, "the upload ended before it could be killed"
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            return await proc.wait(), _acked(state)
        finally:
            await proxy.stop()

    rc, recorded = asyncio.run(first_run())
    assert rc == -signal.SIGKILL
    assert 3 * MiB <= recorded < size

    out = run_cli(
        "upload", str(path), "--port", str(server.mqtt_port),
        "--state", str(state), "--resume", "--progress", "log",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["clientid"] == "killed"
    assert summary["bytes_resumed"] >= recorded
    assert summary["bytes_sent"] <= size - recorded
    assert "resuming killed/" in out.stderr
    assert sha256_of(exported(server, "killed", summary["fileid"], "killed.bin")) == digest
    assert not state.exists()


def test_resume_resends_what_the_server_lost(server: ServerProcess, tmp_path: Path) -> None:
    """A state file records ranges the server does not have (as after a power loss there):
    fin reports them missing and they are sent."""
    path = tmp_path / "lost.bin"
    size = 3 * MiB + 5
    digest = write_random(path, size, seed=7)
    state_path = tmp_path / "state.json"
    meta = {"name": "lost.bin", "size": size, "checksum": digest}
    statefile.save(
        state_path,
        UploadState(
            client_id="lost",
            file_id="lost-1",
            meta=meta,
            size=size,
            checksum=digest,
            source=str(path.resolve()),
            mtime_ns=path.stat().st_mtime_ns,
            acked=[(0, 1 * MiB), (2 * MiB, 3 * MiB)],
        ),
    )
    result = asyncio.run(
        upload(
            path,
            mqtt=MqttSettings(port=server.mqtt_port),
            state_file=state_path,
            resume=True,
            segment_size=256 * KiB,
        )
    )
    assert (result.client_id, result.file_id) == ("lost", "lost-1")
    assert result.bytes_resumed == 2 * MiB
    assert result.fins == 2
    assert result.bytes_sent == size
    assert sha256_of(exported(server, "lost", "lost-1", "lost.bin")) == digest
    assert not state_path.exists()


def test_no_resume_when_the_file_changed(server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "changed.bin"
    write_random(path, 1 * MiB, seed=8)
    state_path = tmp_path / "state.json"
    old = write_random(tmp_path / "old.bin", 1 * MiB, seed=9)
    statefile.save(
        state_path,
        UploadState(
            client_id="changed",
            file_id="old-id",
            meta={"name": "changed.bin", "size": 1 * MiB, "checksum": old},
            size=1 * MiB,
            checksum=old,
            source=str(path.resolve()),
            acked=[(0, 1 * MiB)],
        ),
    )
    out = run_cli(
        "upload", str(path), "--port", str(server.mqtt_port),
        "--state", str(state_path), "--resume", "--progress", "none",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["fileid"] != "old-id" and summary["bytes_resumed"] == 0
    assert "not resuming: the content changed" in out.stderr
    assert sha256_of(path) == sha256_of(
        exported(server, summary["clientid"], summary["fileid"], "changed.bin")
    )

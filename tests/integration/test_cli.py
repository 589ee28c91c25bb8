"""The command line: help, configuration errors at start, clean exit on SIGTERM/SIGINT."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ftharness import FtClient, ServerProcess
from ftserver.config import describe


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ftserver", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_help_documents_every_flag_and_key() -> None:
    out = run_cli("serve", "--help")
    assert out.returncode == 0
    for flag in (
        "--config",
        "--mqtt",
        "--http",
        "--data",
        "--workers",
        "--log-level",
        "--durability",
        "--set",
    ):
        assert flag in out.stdout
    for key in describe():
        assert key.key in out.stdout, key.key
    top = run_cli("--help")
    assert top.returncode == 0 and "serve" in top.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "limits.nope=1"], "limits.nope"),
        (["--set", "limits.max_packet_size=abc"], "limits.max_packet_size"),
        (["--durability", "maybe"], "storage.durability"),
        (["--mqtt", "not-an-address"], "mqtt.listen"),
        (["--set", "broken"], "KEY=VALUE"),
    ],
)
def test_bad_configuration_is_refused_at_start(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    out = run_cli("serve", "--data", str(tmp_path / "d"), *args)
    assert out.returncode == 2
    assert needle in out.stderr


def test_bad_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "ftserver.toml"
    cfg.write_text('[transfer]\nassemble_timeout = "5 fortnights"\n')
    out = run_cli("serve", "--config", str(cfg), "--data", str(tmp_path / "d"))
    assert out.returncode == 2 and "transfer.assemble_timeout" in out.stderr
    cfg.write_text("[mqtt]\nunknown_key = 1\n")
    out = run_cli("serve", "--config", str(cfg), "--data", str(tmp_path / "d"))
    assert out.returncode == 2 and "mqtt.unknown_key" in out.stderr
    out = run_cli("serve", "--config", str(tmp_path / "missing.toml"))
    assert out.returncode == 2


def test_config_file_is_used_and_flags_win(
    tmp_path: Path, make_server: Callable[..., ServerProcess]
) -> None:
    cfg = tmp_path / "ftserver.toml"
    cfg.write_text('[limits]\nmax_file_size = "1KiB"\n[mqtt]\nlisten = "127.0.0.1:1"\n')
    # the flag --mqtt (port 0, set by the harness) wins over the file's listen address
    srv = make_server("--config", str(cfg))
    c = FtClient(srv.mqtt_port, "cfg")
    assert c.command("$file/f/1024", b"x") == 0x83  # offset + length > 1 KiB
    assert c.command("$file/f/1023", b"x") == 0
    c.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_cleanly(make_server: Callable[..., ServerProcess], sig: int) -> None:
    srv = make_server()
    c = FtClient(srv.mqtt_port, "sig")
    assert c.command("$file/s/init", json.dumps({"name": "s"})) == 0
    assert c.command("$file/s/0", b"persisted") == 0
    assert srv.stop(sig) == 0
    c.client.loop_stop()
    # the transfer survived the shutdown: a new server finishes it
    srv2 = make_server(data=srv.data_dir)
    c2 = FtClient(srv2.mqtt_port, "sig")
    assert c2.command("$file/s/fin/9") == 0
    c2.close()

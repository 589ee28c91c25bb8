"""`ftserver upload` and `ftserver files` from the shell: exit statuses, output, the HTTP API
with a bearer token, and the progress display."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from clienthelpers import exported, run_cli, sha256_of, write_random

from ftharness import ServerProcess
from ftserver.client import Progress
from ftserver.client.progress import ProgressDisplay, human_duration, human_size

KiB = 1024
MiB = 1024 * KiB


def test_upload_prints_progress_and_a_summary(server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "cli.bin"
    digest = write_random(path, 2 * MiB + 3, seed=10)
    out = run_cli(
        "upload", str(path), "--port", str(server.mqtt_port), "--client-id", "cli-1",
        "--file-id", "cli-file", "--segment-size", "64KiB", "--window", "4",
        "--mqtt-version", "3.1.1", "--async", "--checksums", "--state", str(tmp_path / "s.json"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary == summary | {"clientid": "cli-1", "fileid": "cli-file", "name": "cli.bin"}
    assert summary["size"] == 2 * MiB + 3 and summary["checksum"] == digest
    # not a terminal: log lines, and the final one
    assert "ftserver upload: 100.0% 2.0 MiB / 2.0 MiB" in out.stderr
    assert "ftserver upload: exported cli.bin (2.0 MiB) as cli-1/cli-file" in out.stderr
    assert sha256_of(exported(server, "cli-1", "cli-file", "cli.bin")) == digest


def test_upload_from_stdin(server: ServerProcess, tmp_path: Path) -> None:
    data = b"from a pipe\n" * 5000
    proc = subprocess.run(
        [sys.executable, "-m", "ftserver", "upload", "-", "--name", "piped.txt",
         "--port", str(server.mqtt_port), "--client-id", "cli-stdin", "--progress", "none"],
        input=data, capture_output=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    fid = json.loads(proc.stdout)["fileid"]
    assert exported(server, "cli-stdin", fid, "piped.txt").read_bytes() == data
    nameless = run_cli("upload", "-", "--port", str(server.mqtt_port))
    assert nameless.returncode == 2 and "--name" in nameless.stderr


def test_upload_exit_status_when_refused(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    srv = make_server("--set", "limits.max_file_size=1MiB")
    path = tmp_path / "toolarge.bin"
    write_random(path, 3 * MiB)
    out = run_cli(
        "upload", str(path), "--port", str(srv.mqtt_port), "--state", str(tmp_path / "s.json")
    )
    assert out.returncode == 3
    assert "file_too_large" in out.stderr and out.stdout == ""


def test_upload_exit_status_without_a_server(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "x.bin"
    path.write_bytes(b"x")
    out = run_cli("upload", str(path), "--port", str(port), "--state", str(tmp_path / "s.json"))
    assert out.returncode == 1
    assert "cannot connect" in out.stderr
    missing = run_cli("upload", str(tmp_path / "nope.bin"), "--port", str(port))
    assert missing.returncode == 1 and "nope.bin" in missing.stderr


def test_files_list_and_get_with_a_token(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    srv = make_server("--set", "http.token=s3cret-token-0123456789")
    url = f"http://127.0.0.1:{srv.http_port}"
    paths = []
    for i in range(3):
        p = tmp_path / f"doc{i}.bin"
        write_random(p, 100 * KiB + i, seed=20 + i)
        paths.append(p)
        up = run_cli("upload", str(p), "--port", str(srv.mqtt_port), "--client-id", "dev/1",
                     "--file-id", f"f{i}", "--progress", "none")  # fmt: skip
        assert up.returncode == 0, up.stderr

    denied = run_cli("files", "list", "--url", url)
    assert denied.returncode == 1 and "401" in denied.stderr

    env = {"FTSERVER_HTTP_TOKEN": "s3cret-token-0123456789"}
    listed = run_cli("files", "list", "--url", url, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    items = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted((i["clientid"], i["fileid"], i["name"]) for i in items) == [
        ("dev/1", f"f{i}", f"doc{i}.bin") for i in range(3)
    ]
    table = run_cli(
        "files", "list", "--url", url, "--token", "s3cret-token-0123456789", "--limit", "2"
    )
    assert table.returncode == 0 and len(table.stdout.splitlines()) == 2
    assert "2 file(s)" in table.stderr

    dest = tmp_path / "downloads"
    dest.mkdir()
    got = run_cli("files", "get", "dev/1", "f1", "--url", url, "-o", str(dest), env=env)
    assert got.returncode == 0, got.stderr
    assert (dest / "doc1.bin").read_bytes() == paths[1].read_bytes()
    again = run_cli("files", "get", "dev/1", "f1", "--url", url, "-o", str(dest), env=env)
    assert again.returncode == 1 and "exists" in again.stderr
    single = run_cli(
        "files", "get", "dev/1", "f2", "--url", url, "-o", str(tmp_path / "one.bin"), env=env
    )
    assert single.returncode == 0 and (tmp_path / "one.bin").read_bytes() == paths[2].read_bytes()
    absent = run_cli("files", "get", "dev/1", "nope", "--url", url, env=env)
    assert absent.returncode == 1 and "FILES_NOT_FOUND" in absent.stderr


def test_progress_display() -> None:
    assert human_size(0) == "0 B" and human_size(1536) == "1.5 KiB"
    assert human_size(200 * MiB) == "200.0 MiB"
    assert human_duration(75) == "1:15" and human_duration(3700) == "1:01:40"

    bar = io.StringIO()
    tty = ProgressDisplay(bar, tty=True)
    tty(Progress("uploading", 0, 100 * MiB, 0, 0.0))
    tty(Progress("reconnecting", 50 * MiB, 100 * MiB, 50 * MiB, 1.0))
    tty.finish()
    text = bar.getvalue()
    assert "\r\x1b[K" in text and "50.0% 50.0 MiB / 100.0 MiB" in text
    assert "[reconnecting]" in text and "ETA" in text and "/s" in text
    assert text.endswith("\n")

    log = io.StringIO()
    lines = ProgressDisplay(log, tty=False, every=3600)
    lines(Progress("connecting", 0, 0, 0, 0.0))
    lines(Progress("uploading", 1 * MiB, 4 * MiB, 1 * MiB, 0.5))
    lines(Progress("uploading", 2 * MiB, 4 * MiB, 2 * MiB, 0.6))  # within `every`: quiet
    lines(Progress("paused", 2 * MiB, 4 * MiB, 2 * MiB, 0.7))  # a state change: a line
    out = log.getvalue().splitlines()
    assert out[0] == "ftserver upload: connecting"
    assert out[1].startswith("ftserver upload:  25.0% 1.0 MiB / 4.0 MiB")
    assert len(out) == 3 and out[2].endswith("[paused]")
    assert "\r" not in log.getvalue()


def test_upload_over_tls_with_a_password(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    users = tmp_path / "users"
    added = subprocess.run(
        [sys.executable, "-m", "ftserver", "passwd", str(users), "dev1", "--stdin"],
        input="right-password\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    srv = make_server(
        "--set", "mqtt.tls_listen=127.0.0.1:0",
        "--set", f"mqtt.tls_cert={tmp_path / 'server.pem'}",
        "--set", f"mqtt.tls_key={tmp_path / 'server.key'}",
        "--set", f"security.password_file={users}",
    )  # fmt: skip
    path = tmp_path / "secret.bin"
    digest = write_random(path, 300 * KiB, seed=30)
    args = (
        "upload", str(path), "--tls", "--ca-file", str(tmp_path / "ca.pem"),
        "--port", str(srv.mqtts_port), "--username", "dev1", "--client-id", "tls-cli",
        "--state", str(tmp_path / "s.json"), "--progress", "none",
    )  # fmt: skip
    ok = run_cli(*args, env={"FTSERVER_MQTT_PASSWORD": "right-password"})
    assert ok.returncode == 0, ok.stderr
    fid = json.loads(ok.stdout)["fileid"]
    assert sha256_of(exported(srv, "tls-cli", fid, "secret.bin")) == digest
    wrong = run_cli(*args, env={"FTSERVER_MQTT_PASSWORD": "wrong-password"})
    assert wrong.returncode == 3 and "refused the connection" in wrong.stderr

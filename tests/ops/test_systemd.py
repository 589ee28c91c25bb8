"""Issue 16: the systemd unit in deploy/systemd is valid, hardened, and its command runs.

``systemd-analyze verify`` checks the unit as systemd would load it; it also requires the
ExecStart binary to exist, so it verifies a copy whose ExecStart names this environment's
``ftserver`` instead of /opt/ftserver/bin/ftserver (the only change). The unit's command line
and the example configuration it names are then run for real under strace, with an upload, a
reload and a stop, and every system call the server made must be one the unit's
``SystemCallFilter=`` allows: a filter that kills or cripples the server fails here, not in
production.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from ftharness import FtClient, ServerProcess, find_export, worker_pids
from ftserver import server, supervisor
from ftserver.auth import set_password

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "ftserver.service"
EXAMPLE_CONFIG = ROOT / "deploy" / "systemd" / "ftserver.toml"
INSTALLED = "/opt/ftserver/bin/ftserver"
CONFIG = "/etc/ftserver/ftserver.toml"


def directives(unit: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit, values in order (a key may repeat)."""
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def ftserver_binary() -> str:
    path = Path(sys.executable).parent / "ftserver"
    assert path.exists(), path
    return str(path)


def test_unit_verifies(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert text.count(INSTALLED) == 1
    copy = tmp_path / "ftserver.service"
    copy.write_text(text.replace(INSTALLED, ftserver_binary()))
    got = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert got.returncode == 0 and got.stdout == "" and got.stderr == "", got
    # the same unit with a directive systemd does not know: verify does notice
    (tmp_path / "bad.service").write_text(copy.read_text().replace("UMask=", "UMsk="))
    bad = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "bad.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "UMsk" in bad.stderr
    # systemd's exposure score of the hardening, 0.0 (locked down) to 10.0 (none): at most
    # 2.0 (the threshold counts tenths); the unit scores 1.4
    score = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert score.returncode == 0, score.stdout[-2000:] + score.stderr


def test_unit_settings_match_the_server() -> None:
    d = directives(UNIT)
    assert d["ExecStart"] == [f"{INSTALLED} serve --config {CONFIG}"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["User"] == ["ftserver"] and "DynamicUser" not in d
    assert d["StateDirectory"] == ["ftserver"]
    assert d["KillSignal"] == ["SIGTERM"] and d["KillMode"] == ["mixed"]
    assert d["Restart"] == ["on-failure"]
    # systemd's SIGKILL must come after the server's own drain: the supervisor gives its
    # workers STOP_TIMEOUT (they wait SHUTDOWN_GRACE for running exports within it)
    stop = d["TimeoutStopSec"][0]
    assert stop.endswith("s")
    assert float(stop[:-1]) >= supervisor.STOP_TIMEOUT + 10
    assert server.SHUTDOWN_GRACE < supervisor.STOP_TIMEOUT
    assert int(d["LimitNOFILE"][0]) >= 1 << 20
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert d[key] == ["yes"], key
    assert d["ProtectSystem"] == ["strict"] and d["CapabilityBoundingSet"] == [""]
    # the example configuration writes where the unit lets it
    example = EXAMPLE_CONFIG.read_text()
    assert 'data_dir = "/var/lib/ftserver"' in example
    assert d["WorkingDirectory"] == ["/var/lib/ftserver"]


def _syscall_groups() -> dict[str, list[str]]:
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    groups: dict[str, list[str]] = {}
    current: str | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.split()[0]
            groups[current] = []
        elif current is not None and line.startswith("    "):
            item = line.strip()
            if item and not item.startswith("#"):
                groups[current].append(item)
        elif not line.strip():
            current = None
    return groups


def _expand(groups: dict[str, list[str]], name: str) -> set[str]:
    calls: set[str] = set()
    for item in groups[name]:
        calls |= _expand(groups, item) if item.startswith("@") else {item}
    return calls


def allowed_syscalls() -> set[str]:
    """What the unit's SystemCallFilter= lines allow (an allow list, then deny lists)."""
    groups = _syscall_groups()
    allowed: set[str] | None = None
    for value in directives(UNIT)["SystemCallFilter"]:
        deny = value.startswith("~")
        names: set[str] = set()
        for item in value.lstrip("~").split():
            names |= _expand(groups, item) if item.startswith("@") else {item}
        if deny:
            assert allowed is not None
            allowed -= names
        else:
            allowed = names if allowed is None else allowed | names
    assert allowed
    return allowed


def test_unit_command_runs_within_its_syscall_filter(tmp_path: Path) -> None:
    """The unit's command line and the example configuration (ports, data directory and
    password file pointed at the test's), traced from start to stop."""
    argv = shlex.split(directives(UNIT)["ExecStart"][0])
    assert argv[0] == INSTALLED and argv[1] == "serve"
    config = tmp_path / "ftserver.toml"
    shutil.copy(EXAMPLE_CONFIG, config)
    args = [str(config) if a == CONFIG else a for a in argv[2:]]
    users = tmp_path / "passwd"
    set_password(users, "dev", "pw")
    trace = tmp_path / "trace"
    srv = ServerProcess(
        tmp_path / "data",
        *args,
        "--workers", "2",
        "--set", f"security.password_file={users}",
    )  # fmt: skip
    srv.argv0 = ["strace", "-f", "-qq", "-o", str(trace), ftserver_binary()]
    srv.start()
    assert srv.proc is not None
    (main,) = worker_pids(srv.proc.pid)  # strace's child: the supervisor
    try:
        data = os.urandom(200_000)
        c = FtClient(srv.mqtt_port, "traced", username="dev", password="pw")
        assert c.upload("f", data, name="f.bin", segment=16384) == 0
        os.kill(main, signal.SIGHUP)  # ExecReload
        deadline = time.monotonic() + 30
        while '"event":"reload_done"' not in srv.stderr():
            assert time.monotonic() < deadline, srv.stderr()
            time.sleep(0.05)
        assert c.command("$file/g/init", json.dumps({"name": "g"})) == 0
        c.close()
        os.kill(main, signal.SIGTERM)  # KillSignal, to the main process (KillMode=mixed)
        assert srv.proc.wait(60) == 0
    finally:
        srv.stop()
    assert find_export(srv.exports, "traced", "f", "f.bin").read_bytes() == data
    used = set(re.findall(r"^\d+\s+([a-z_0-9]+)\(", trace.read_text(), re.MULTILINE))
    assert {"execve", "pwrite64", "socketpair", "flock"} <= used  # the trace saw the work
    assert sorted(used - allowed_syscalls()) == []

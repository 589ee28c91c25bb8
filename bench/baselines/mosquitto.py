"""Mosquitto, the broker ceiling and relay mode's upstream: found (installed with apt-get when
missing) and configured.

The bench and the tests never touch a system service: they write their own configuration,
bound to 127.0.0.1 on a free port, without persistence unless asked, and run
``mosquitto -c`` as a child process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

#: Where Debian puts the broker (not on a normal user's PATH).
_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto(install: bool = True) -> str:
    """The mosquitto binary; installs the Debian package (through sudo when not root) if absent."""
    found = shutil.which("mosquitto") or next((p for p in _CANDIDATES if os.access(p, os.X_OK)), "")
    if found or not install:
        if not found:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "mosquitto"], check=True, env=env)
    return find_mosquitto(install=False)


def write_config(
    directory: Path,
    port: int,
    *,
    inflight: int = 0,
    password_file: Path | None = None,
    sys_interval: int = 0,
    persistence_dir: Path | None = None,
) -> Path:
    """A configuration for one broker: loopback only, no limits that would drop QoS 1 messages
    queued for a slow subscriber (the naive baseline needs every one).

    ``inflight`` is ``max_inflight_messages`` (0: unlimited), which Mosquitto also announces
    to MQTT 5 publishers as its Receive Maximum. The tests of relay mode add the rest:
    ``password_file`` (made with :func:`add_user`) refuses anonymous clients and wrong
    passwords; ``sys_interval`` publishes ``$SYS/broker/...`` every that many seconds;
    ``persistence_dir`` saves sessions and queued messages there when the broker stops
    (without it, persistent sessions live in memory only, as long as the process).
    """
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "mosquitto.conf"
    lines = [
        f"listener {port} 127.0.0.1",
        f"allow_anonymous {'false' if password_file else 'true'}",
        f"max_inflight_messages {inflight}",
        "max_queued_messages 0",
        "max_queued_bytes 0",
        "max_connections -1",
        "set_tcp_nodelay true",
        f"sys_interval {sys_interval}",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
    ]
    if os.geteuid() == 0:
        # started as root, Mosquitto switches to the user "mosquitto", which cannot read
        # files under a private directory (pytest's temporary ones): stay the starting user
        lines.append("user root")
    if password_file is not None:
        lines.append(f"password_file {password_file}")
    if persistence_dir is not None:
        persistence_dir.mkdir(parents=True, exist_ok=True)
        lines += ["persistence true", f"persistence_location {persistence_dir}/"]
    else:
        lines.append("persistence false")
    conf.write_text("\n".join([*lines, ""]))
    return conf


def add_user(password_file: Path, user: str, password: str) -> None:
    """Add (or change) a user in a Mosquitto password file, with ``mosquitto_passwd -b`` (the
    Debian package's tool; the file is created when missing)."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    create = [] if password_file.exists() else ["-c"]
    subprocess.run(
        [tool, *create, "-b", str(password_file), user, password],
        check=True,
        capture_output=True,
    )

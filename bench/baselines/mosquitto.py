"""Mosquitto, the broker ceiling: found (installed with apt-get when missing) and configured.

The bench never touches a system service: it writes its own configuration, bound to
127.0.0.1 on a free port, without persistence, and runs ``mosquitto -c`` as a child process.
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


def write_config(directory: Path, port: int, *, inflight: int = 0) -> Path:
    """A configuration for one benchmark broker: loopback only, no persistence, no limits that
    would drop QoS 1 messages queued for a slow subscriber (the naive baseline needs every one).

    ``inflight`` is ``max_inflight_messages`` (0: unlimited), which Mosquitto also announces
    to MQTT 5 publishers as its Receive Maximum.
    """
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                f"listener {port} 127.0.0.1",
                "allow_anonymous true",
                "persistence false",
                f"max_inflight_messages {inflight}",
                "max_queued_messages 0",
                "max_queued_bytes 0",
                "max_connections -1",
                "set_tcp_nodelay true",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
                "",
            ]
        )
    )
    return conf

"""Helpers of the uploader's tests (random files, exports, running the CLI)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from ftharness import ServerProcess, find_export


def write_random(path: Path, size: int, seed: int = 1) -> str:
    """Fill ``path`` with ``size`` pseudo-random bytes; their hex SHA-256."""
    import random

    rng = random.Random(seed)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            chunk = rng.randbytes(n)
            f.write(chunk)
            h.update(chunk)
            left -= n
    return h.hexdigest()


def exported(srv: ServerProcess, client_id: str, file_id: str, name: str) -> Path:
    return find_export(srv.exports, client_id, file_id, name)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "ftserver", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
    )

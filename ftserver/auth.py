"""Authentication: a password file of argon2id hashes.

The password file has one ``username:hash`` line per user (``#`` starts a comment); hashes
are argon2id in the PHC string format (argon2-cffi), so each carries its own salt and cost
parameters. ``ftserver passwd FILE USER`` manages it. The file is re-read when it changes (and
on a reload, SIGHUP), so users can be added and removed without a restart; a new version that
cannot be read or parsed is refused with a log line naming the file and the error, and the
users read before stay in force. (A client certificate standing for a user name or a
clientId is the MQTT connection's business: :mod:`ftserver.mqtt.connection`.)

Verification is deliberately slow and memory-hard: it runs in a thread, at most
``MAX_CONCURRENT_VERIFY`` at a time (a flood of CONNECTs must not exhaust memory), and a
failed login is answered only after ``FAILED_LOGIN_DELAY`` (slows guessing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from pathlib import Path

import argon2

log = logging.getLogger(__name__)

#: argon2id parameters for new hashes (OWASP's minimum profile: 19 MiB, 2 passes, 1 lane)
HASHER = argon2.PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
#: verifications running at once, process-wide
MAX_CONCURRENT_VERIFY = 4
#: delay before a failed login is answered
FAILED_LOGIN_DELAY = 0.5


class PasswordFileError(ValueError):
    """The password file is malformed; the message names the line."""


def _check_username(username: str) -> None:
    if not username or ":" in username or "\n" in username or username.strip() != username:
        raise PasswordFileError(f"invalid user name {username!r}: no ':', newline or edge spaces")


def parse_password_file(text: str, where: str = "password file") -> dict[str, str]:
    users: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed.startswith("$argon2"):
            raise PasswordFileError(f"{where}:{n}: expected 'user:$argon2id$...'")
        users[user] = hashed
    return users


class PasswordFile:
    """The users of a password file, reloaded when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: tuple[int, int] | None = None
        self._users: dict[str, str] = {}
        #: why the current version of the file was refused (logged once)
        self._refused: str | None = None
        self._sem = asyncio.Semaphore(MAX_CONCURRENT_VERIFY)
        self.load()

    @property
    def users(self) -> int:
        return len(self._users)

    def load(self, *, force: bool = False) -> bool:
        """Read the file if it changed since it was last read, or if ``force``; returns
        whether it was read. Raises ``OSError`` or ``PasswordFileError`` and keeps the users
        read before."""
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._mtime and not force:
            return False
        self._users = parse_password_file(self.path.read_text("utf-8"), str(self.path))
        self._mtime = stamp
        self._refused = None
        return True

    def _verify_blocking(self, username: str, password: bytes) -> bool:
        hashed = self._users.get(username)
        try:
            if hashed is None:
                # spend the same time as for a real user: no user-name oracle
                HASHER.verify(_DUMMY_HASH, password)
                return False
            return bool(HASHER.verify(hashed, password))
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    async def verify(self, username: str, password: bytes) -> bool:
        try:
            self.load()
        except (OSError, PasswordFileError) as exc:
            why = str(exc)
            if why != self._refused:
                self._refused = why
                log.error(
                    "password file %s: new version refused (%s); the users read before stay",
                    self.path,
                    exc,
                    extra={"event": "reload_refused", "file": str(self.path), "error": why},
                )
        async with self._sem:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, self._verify_blocking, username, password)


_DUMMY_HASH = HASHER.hash("ftserver: no such user")


def set_password(path: Path, username: str, password: str) -> None:
    """Add or replace a user (atomically: write a temporary file, rename it over)."""
    _check_username(username)
    text = path.read_text("utf-8") if path.exists() else ""
    lines = [line for line in text.splitlines() if line.strip().partition(":")[0] != username]
    lines.append(f"{username}:{HASHER.hash(password)}")
    _write_atomically(path, "\n".join(lines) + "\n")


def delete_user(path: Path, username: str) -> bool:
    text = path.read_text("utf-8")
    lines = text.splitlines()
    kept = [line for line in lines if line.strip().partition(":")[0] != username]
    if len(kept) == len(lines):
        return False
    _write_atomically(path, "\n".join(kept) + ("\n" if kept else ""))
    return True


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

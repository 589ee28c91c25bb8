"""Access rules: which response topics a client may subscribe to, and whether it may upload.

Without rules, every client may upload and may subscribe to its own
``$file-response/{clientId}`` and to ordinary (non-``$``) filters. An ACL file
(``security.acl_file``) adds rules, first match wins::

    [[rule]]
    username = "ops-*"                 # a shell pattern on the user name...
    subscribe = ["$file-response/#"]   # extra filters it may subscribe to (or narrower ones)

    [[rule]]
    clientid = "kiosk-*"               # ...or on the client identifier
    upload = false                     # file-transfer commands get 0x87

A rule with neither ``username`` nor ``clientid`` matches everyone.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ftserver.topics import is_valid_topic_filter


class AclError(ValueError):
    """The ACL file is malformed; the message says where."""


@dataclass(frozen=True, slots=True)
class Rule:
    username: str | None = None
    clientid: str | None = None
    subscribe: tuple[str, ...] = ()
    upload: bool = True

    def matches(self, username: str | None, client_id: str) -> bool:
        if self.username is not None and (
            username is None or not fnmatch.fnmatchcase(username, self.username)
        ):
            return False
        return self.clientid is None or fnmatch.fnmatchcase(client_id, self.clientid)


@dataclass(frozen=True, slots=True)
class Grant:
    """What one connection may do."""

    subscribe: tuple[str, ...] = ()
    upload: bool = True

    def may_subscribe(self, topic_filter: str) -> bool:
        return any(filter_covers(allowed, topic_filter) for allowed in self.subscribe)


DEFAULT_GRANT = Grant()


def filter_covers(allowed: str, requested: str) -> bool:
    """Whether every topic ``requested`` can match is also matched by ``allowed``."""
    a = allowed.split("/")
    r = requested.split("/")
    for i, level in enumerate(a):
        if level == "#":
            return True
        if i >= len(r):
            return False
        if r[i] == "#":
            return False  # requested reaches deeper than allowed does
        if level != "+" and level != r[i]:
            return False
        if level == "+" and r[i] == "+":
            continue
    return len(a) == len(r)


class Acl:
    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules

    @classmethod
    def load(cls, path: Path) -> Acl:
        try:
            doc = tomllib.loads(path.read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise AclError(f"{path}: {exc}") from None
        unknown = set(doc) - {"rule"}
        if unknown:
            raise AclError(f"{path}: unknown table(s) {sorted(unknown)}; expected [[rule]]")
        rules = []
        for n, raw in enumerate(doc.get("rule", []), 1):
            where = f"{path}: rule {n}"
            if not isinstance(raw, dict):
                raise AclError(f"{where}: must be a table")
            extra = set(raw) - {"username", "clientid", "subscribe", "upload"}
            if extra:
                raise AclError(f"{where}: unknown key(s) {sorted(extra)}")
            for key in ("username", "clientid"):
                if key in raw and not isinstance(raw[key], str):
                    raise AclError(f"{where}: {key} must be a string pattern")
            subscribe = raw.get("subscribe", [])
            if not isinstance(subscribe, list) or not all(
                isinstance(f, str) and is_valid_topic_filter(f) for f in subscribe
            ):
                raise AclError(f"{where}: subscribe must be a list of valid topic filters")
            upload = raw.get("upload", True)
            if not isinstance(upload, bool):
                raise AclError(f"{where}: upload must be true or false")
            rules.append(Rule(raw.get("username"), raw.get("clientid"), tuple(subscribe), upload))
        return cls(rules)

    def grant(self, username: str | None, client_id: str) -> Grant:
        for rule in self.rules:
            if rule.matches(username, client_id):
                return Grant(rule.subscribe, rule.upload)
        return DEFAULT_GRANT

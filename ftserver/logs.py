"""Log lines for people and for machines: the two formats of ``server.log_format``.

Every process logs to its standard error, one line per record (``text``: a traceback adds
its own lines):

- ``text``: ``2026-12-04 07:22:11,123 INFO ftserver.transfer.store [w0]: transfer exported
  clientId=dev-1 fileId=f1 size=1048576 duration=2.513 destination=/data/exports/...``: the
  message, then the event's fields as ``key=value`` (quoted when needed);
- ``json``: one object per line, ASCII only: ``time`` (RFC 3339, UTC, milliseconds),
  ``level``, ``worker`` (the worker's index, ``0`` for a single-process server, or
  ``"supervisor"``), ``logger``, ``event`` (a stable name; ``"log"`` for a record that has
  none), ``msg``, then ``clientId`` and ``fileId`` when the record is about a transfer, the
  event's other fields, and ``exc`` (the formatted exception) when there is one.

A record's event and fields are what the caller passes as ``extra``:
``log.info("transfer exported", extra={"event": "exported", "clientId": c, "size": n})``. The
events and their fields are listed in docs/operations.md ("Logs").

Why the standard library's ``logging.Formatter`` and not python-json-logger: serialising is
``json.dumps``; the work is choosing the fields (which attributes of a record are the event's,
the order, the time format, the worker), and the text format must render the same fields for
people. One function (:func:`fields_of`) serves both formats here, where a JSON library would
cover one of them and still need that function, its field renaming and its own timestamp
format overridden. A dependency for forty lines was not worth it.

Lines stay whole. A record is written with one ``write(2)`` under a lock (never through a
buffered stream that could split it), and with workers only the supervisor writes to the real
standard error: each worker's standard error is a pipe that the supervisor reads and copies
out line by line (:func:`relay`), so lines of different workers never interleave, however
long, and whatever a worker prints outside logging (the interpreter's last words when it
crashes) still reaches the log as lines of its own, wrapped as JSON in that format.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

__all__ = [
    "FORMATS",
    "JsonFormatter",
    "LineHandler",
    "TextFormatter",
    "fields_of",
    "relay",
    "setup",
    "write_line",
]

FORMATS = ("text", "json")
#: the event of a record logged without one
NO_EVENT = "log"
#: a relayed line longer than this is cut (a worker's line is a record, never this long)
MAX_LINE = 1 << 20

#: attributes every LogRecord has: anything else on a record came from ``extra``
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
#: the identifiers of a transfer, written first
_IDS = ("clientId", "fileId")

_write_lock = threading.Lock()
_state: dict[str, Any] = {"format": "text", "fd": 2}


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The event's fields of a record (what ``extra`` gave, but ``event``), identifiers
    first."""
    extra = {k: v for k, v in vars(record).items() if k not in _STANDARD and k != "event"}
    ordered = {k: extra.pop(k) for k in _IDS if k in extra}
    ordered.update(extra)
    return ordered


def rfc3339(created: float) -> str:
    """``2026-12-04T07:22:11.123Z``: UTC, milliseconds."""
    whole = int(created)
    ms = int((created - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


def _json_line(doc: dict[str, Any]) -> str:
    return json.dumps(doc, ensure_ascii=True, separators=(",", ":"), default=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def __init__(self, worker: int | str) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "worker": self.worker,
            "logger": record.name,
            "event": getattr(record, "event", None) or NO_EVENT,
            "msg": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return _json_line(doc)


def _logfmt(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and not any(ch.isspace() or ch in '"=' for ch in text):
        return text
    return json.dumps(text, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The format for people: the message, then the event's fields as ``key=value``."""

    def __init__(self, tag: str = "") -> None:
        suffix = f" [{tag}]" if tag else ""
        super().__init__(f"%(asctime)s %(levelname)s %(name)s{suffix}: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = fields_of(record)
        if not fields:
            return line
        return line + " " + " ".join(f"{k}={_logfmt(v)}" for k, v in fields.items())


def write_line(line: str | bytes) -> None:
    """Write one line (a newline is added) to standard error with one ``write(2)`` (more only
    if the kernel takes part of it), under the lock that every writer of this process
    shares. Errors are dropped: a log line must never take the server down."""
    data = line.encode("utf-8", "backslashreplace") if isinstance(line, str) else line
    view = memoryview(data + b"\n")
    with _write_lock:
        try:
            while view:
                view = view[os.write(_state["fd"], view) :]
        except OSError:
            pass


class LineHandler(logging.Handler):
    """Writes each formatted record as one line with :func:`write_line`."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        write_line(line)


def setup(level: str, fmt: str, worker: int | str, tag: str = "") -> None:
    """Send every record of this process at ``level`` or above to standard error in format
    ``fmt`` (``text`` or ``json``). ``worker`` is what JSON lines carry as ``worker``, ``tag``
    what text lines show after the logger's name."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {FORMATS}")
    _state["format"] = fmt
    handler = LineHandler()
    handler.setFormatter(JsonFormatter(worker) if fmt == "json" else TextFormatter(tag))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)


def relay(lines: list[bytes], worker: int) -> None:
    """Copy whole lines a worker wrote to its standard error to ours, in one write. In the
    JSON format a line that is not a JSON object (the worker printed it outside logging) is
    wrapped in one: event ``worker_output``, level error."""
    if _state["format"] == "json":
        lines = [_wrapped(line, worker) for line in lines]
    write_line(b"\n".join(lines))


def _wrapped(line: bytes, worker: int) -> bytes:
    if line.startswith(b"{") and line.endswith(b"}"):
        return line
    return _json_line(
        {
            "time": rfc3339(time.time()),
            "level": "error",
            "worker": worker,
            "logger": "ftserver.worker",
            "event": "worker_output",
            "msg": line.decode("utf-8", "backslashreplace"),
        }
    ).encode()

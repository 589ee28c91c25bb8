"""Progress output of ``ftserver upload``: a bar on a terminal, log lines otherwise.

Hand-written on purpose (a few dozen lines) rather than a dependency: it needs one line with
bytes, rate, ETA and state, redrawn in place, and the library's log messages printed above it
without tearing it; off a terminal, a plain line every few seconds.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import deque
from typing import TextIO

from ftserver.client.report import Progress

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_size(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def human_duration(seconds: float) -> str:
    """``75`` -> ``"1:15"``, ``3700`` -> ``"1:01:40"``."""
    s = int(seconds + 0.5)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Rate:
    """Bytes per second over the last ``span`` seconds."""

    def __init__(self, span: float = 5.0) -> None:
        self.span = span
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, t: float, n: int) -> float:
        self.samples.append((t, n))
        while len(self.samples) > 2 and t - self.samples[0][0] > self.span:
            self.samples.popleft()
        t0, n0 = self.samples[0]
        return (n - n0) / (t - t0) if t > t0 else 0.0


class ProgressDisplay:
    """An ``on_progress`` callback that draws on ``stream``.

    ``tty=True`` redraws one line in place; ``tty=False`` writes a line every ``every``
    seconds and whenever the state changes (paused, reconnecting, ...).
    """

    def __init__(self, stream: TextIO, *, tty: bool, every: float = 5.0) -> None:
        self.stream = stream
        self.tty = tty
        self.every = every
        self.rate = Rate()
        self.last_line = ""
        self.last_state = ""
        self.last_emit = 0.0
        self.shown = False

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        rate = self.rate.add(p.elapsed, p.bytes_done - p.bytes_resumed)
        if p.state in ("hashing", "connecting") and not self.tty:
            if p.state != self.last_state:
                self.last_state = p.state
                self._line(f"ftserver upload: {p.state}")
            return
        pct = 100.0 * p.bytes_done / p.bytes_total if p.bytes_total else 100.0
        eta = (p.bytes_total - p.bytes_done) / rate if rate > 0 else None
        text = (
            f"{pct:5.1f}% {human_size(p.bytes_done)} / {human_size(p.bytes_total)}"
            f"  {human_size(rate)}/s  ETA {human_duration(eta) if eta is not None else '--:--'}"
        )
        if p.state not in ("uploading", "done"):
            text += f"  [{p.state}]"
        if self.tty:
            width = shutil.get_terminal_size((80, 20)).columns
            room = width - len(text) - 4
            if room >= 10:
                filled = int(room * pct / 100)
                text = "[" + "#" * filled + "." * (room - filled) + "] " + text
            self.last_line = text[: width - 1]
            self.stream.write("\r\x1b[K" + self.last_line)
            self.stream.flush()
            self.shown = True
        elif p.state != self.last_state or now - self.last_emit >= self.every:
            self.last_state = p.state
            self.last_emit = now
            self._line(f"ftserver upload: {text}")

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Take the bar off the screen (before other output)."""
        if self.tty and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def redraw(self) -> None:
        if self.tty and self.shown:
            self.stream.write(self.last_line)
            self.stream.flush()

    def finish(self) -> None:
        """End the bar's line."""
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


class DisplayHandler(logging.Handler):
    """A logging handler that prints records above the progress bar."""

    def __init__(self, display: ProgressDisplay) -> None:
        super().__init__()
        self.display = display

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            self.display.clear()
            self.display.stream.write(msg + "\n")
            self.display.redraw()
        except Exception:  # pragma: no cover - as logging.StreamHandler does
            self.handleError(record)

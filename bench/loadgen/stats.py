"""What a load run counts, per process, and how shards add up."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from typing import Any

#: error messages kept (the count is exact)
MAX_ERROR_SAMPLES = 20


@dataclass
class Stats:
    files: int = 0  # files completed (result 0 seen)
    bytes: int = 0  # bytes of the files completed
    segments: int = 0  # segments acknowledged
    sent_bytes: int = 0  # payload bytes sent, resends included
    resent: int = 0  # segments resent after a reconnect
    drops: int = 0  # disconnects forced by churn
    reconnects: int = 0  # successful reconnects
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    #: errors by reason: ``"fin 0x80"``, ``"HTTP 500"``, ``"connect refused"``,
    #: ``"CONNACK 0x9f"``, ``"export missing"``... (they add up to ``errors``)
    error_kinds: dict[str, int] = field(default_factory=dict)
    fin_ms: list[float] = field(default_factory=list)
    resume_ms: list[float] = field(default_factory=list)  # drop -> first acknowledgement after
    resume_at: list[float] = field(default_factory=list)  # wall time of that acknowledgement
    exports: list[tuple[str, str, str, int]] = field(default_factory=list)
    connect_s: float = 0.0  # time to connect every device
    t_start: float = 0.0  # wall clock (time.time()) when uploads started
    t_end: float = 0.0  # wall clock when the last device finished
    cpu_s: float = 0.0  # CPU seconds of the load generator process(es)
    devices: int = 0
    raw_bytes_confirmed: int = 0  # raw TCP: bytes the discard server says it received
    wire_bytes: int = 0  # bytes written to the sockets (headers included, resends included)
    wire_at_release: int = 0  # wire_bytes when held devices were released (restart scenario)

    def error(self, message: str, kind: str = "other") -> None:
        """Count one error under its reason ``kind``; keep the first messages."""
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(message)

    @property
    def elapsed(self) -> float:
        return max(self.t_end - self.t_start, 1e-9)

    def merge(self, other: Stats) -> None:
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name in ("t_start",):
                setattr(self, f.name, min(mine, theirs) if mine else theirs)
            elif f.name in ("t_end", "connect_s"):
                setattr(self, f.name, max(mine, theirs))
            elif isinstance(mine, list):
                mine.extend(theirs)
            elif isinstance(mine, dict):
                for k, v in theirs.items():
                    mine[k] = mine.get(k, 0) + v
            else:
                setattr(self, f.name, mine + theirs)
        del self.error_samples[MAX_ERROR_SAMPLES:]

    def to_json(self, *, exports: bool = False) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not exports:
            d.pop("exports")
        d["elapsed"] = self.elapsed
        d["MBps"] = self.bytes / self.elapsed / 1e6
        d["files_per_s"] = self.files / self.elapsed
        d["segments_per_s"] = self.segments / self.elapsed
        for name in ("fin_ms", "resume_ms"):
            values: list[float] = d.pop(name)
            d[name] = summarize(values)
        d["resume_last"] = max(self.resume_at) if self.resume_at else 0.0
        d.pop("resume_at")
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Stats:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def summarize(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    s = sorted(values)
    return {
        "n": len(s),
        "median": statistics.median(s),
        "p99": s[min(len(s) - 1, int(len(s) * 0.99))],
        "min": s[0],
        "max": s[-1],
    }

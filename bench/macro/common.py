"""What the scenarios share: settings, rows of results, interleaved repetitions."""

from __future__ import annotations

import itertools
import statistics
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.macro.services import Service

_ids = itertools.count()


@dataclass
class Settings:
    quick: bool
    repeat: int
    workdir: Path
    workers: int = 0  # ftserver's --workers (0: one per core, its default)
    window: int = 64  # unacknowledged commands per device (and the servers' Receive Maximum)
    verbose: bool = True
    #: repetitions of the long scenarios (scale, stalled: a fresh server and 10 000 devices
    #: or GiBs of stalled payload each time); 0: the same as ``repeat``
    heavy_repeat: int = 0

    @property
    def heavy(self) -> int:
        return self.heavy_repeat or self.repeat

    def tag(self, scenario: str, label: str) -> str:
        """A fresh client-id prefix: no run ever meets a transfer of an earlier one."""
        return f"{scenario}{next(_ids)}{label[:2]}"

    def log(self, message: str) -> None:
        if self.verbose:
            print(message, file=sys.stderr, flush=True)


def stat(values: Sequence[float]) -> dict[str, float]:
    """Median and spread (min..max) of the samples."""
    if not values:
        return {}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


@dataclass
class Row:
    """One (scenario, case, target) cell: a metrics dict per repetition, summarised."""

    scenario: str
    case: str
    target: str
    runs: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # repetitions that failed
    notes: list[str] = field(default_factory=list)  # e.g. error samples of counted errors

    def add(self, metrics: dict[str, float]) -> None:
        self.runs.append(metrics)

    def metric(self, name: str) -> dict[str, float]:
        return stat([r[name] for r in self.runs if name in r])

    def median(self, name: str) -> float | None:
        return self.metric(name).get("median")

    def to_json(self) -> dict[str, Any]:
        names = sorted({k for r in self.runs for k in r})
        return {
            "scenario": self.scenario,
            "case": self.case,
            "target": self.target,
            "summary": {n: self.metric(n) for n in names},
            "runs": self.runs,
            "errors": self.errors,
            "notes": self.notes,
        }


def per_process(server: dict[str, Any]) -> dict[str, float]:
    """``{role}{n}.cpu_s`` and ``{role}{n}.rss_peak_MB`` for each process of the server
    (``worker0``, ``worker1``, ``supervisor0``, ``mosquitto0``, ``subscriber0``...)."""
    out: dict[str, float] = {}
    seen: dict[str, int] = {}
    for name, p in sorted(server["per_process"].items(), key=lambda kv: kv[1]["pid"]):
        role = name.rsplit("[", 1)[0]
        n = seen[role] = seen.get(role, -1) + 1
        out[f"{role}{n}.cpu_s"] = p["cpu_s"]
        out[f"{role}{n}.rss_peak_MB"] = p["rss_peak"] / 1e6
    return out


def throughput_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The figures every load run reports, from :func:`bench.macro.runner.run_load`."""
    server = result["server"]
    return {
        "MBps": result["MBps"],
        "msg_per_s": result["segments_per_s"],
        "files_per_s": result["files_per_s"],
        "server_cpu_s": server["cpu_s"],
        "server_cpu_s_per_GiB": result["server_cpu_s_per_GiB"],
        "server_rss_peak_MB": server["rss_peak"] / 1e6,
        "loadgen_cpu_s": result["cpu_s"],
        "elapsed_s": result["elapsed"],
        "fin_ms": result["fin_ms"].get("median", 0.0),
    } | per_process(server)


def attempt(row: Row, settings: Settings, what: str, fn: Callable[[], dict[str, float]]) -> None:
    """Run one repetition into ``row``; a failure is recorded (and shown), not fatal."""
    try:
        metrics = fn()
    except Exception as exc:
        row.errors.append(f"{what}: {exc}")
        settings.log(f"  FAILED {what}: {exc}")
        if settings.verbose:
            traceback.print_exc(file=sys.stderr)
        return
    row.add(metrics)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in list(metrics.items())[:4])
    settings.log(f"  {what}: {shown}")


def stop_all(services: Sequence[Service]) -> None:
    for s in services:
        try:
            s.stop()
        except Exception as exc:
            print(f"bench: stopping {s.label}: {exc}", file=sys.stderr)

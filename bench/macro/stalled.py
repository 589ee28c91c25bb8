"""Scenario "stalled": what partial packets cost a server's memory.

200 connections each stall half-way through a 15 MiB segment (:mod:`bench.loadgen.stall`:
CONNECT, init, the segment's PUBLISH header announcing 15 MiB, 8 MiB of its payload, then
silence with the socket open). Once every connection has stalled and the server has read
what it was willing to read (its sockets' receive queues stop moving) and its RSS settled,
the server's RSS growth is measured (every process summed, from before the first
connection). Meanwhile an honest device uploads a 32 MiB file in 1 MiB segments: it must
complete, and its time is reported. Reference: Mosquitto with the same connections and the
same honest upload (it holds each partial packet in full). A fresh server each repetition.

Quick mode runs the same shape (200 connections, so a server that holds every partial
packet cannot pass), with fewer repetitions.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.loadgen.spec import LoadSpec, MiB, SizeDist
from bench.loadgen.stall import StallSpec
from bench.macro.common import Row, Settings, attempt, stop_all
from bench.macro.procstat import Sampler, accepted
from bench.macro.runner import Loadgen, LoadgenFailed, run_load
from bench.macro.services import FtServer, Mosquitto, Service

NAME = "stalled"
CONNECTIONS = 200
SEGMENT = 15 * MiB
SEND = 8 * MiB
HONEST_SIZE = 32 * MiB
HONEST_SEGMENT = 1 * MiB
#: an honest upload not done by then did not complete
HONEST_TIMEOUT = 120.0
STALL_TIMEOUT = 120.0
#: longest wait for the server's receive queues and RSS to stop moving
SETTLE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Shape:
    connections: int = CONNECTIONS
    segment: int = SEGMENT
    send: int = SEND
    honest_size: int = HONEST_SIZE
    honest_segment: int = HONEST_SEGMENT

    @property
    def case(self) -> str:
        return (
            f"{self.connections} connections stalled at {self.send // MiB} of "
            f"{self.segment // MiB} MiB, honest {self.honest_size // MiB} MiB upload"
        )


def _rss(svc: Service) -> int:
    return Sampler(svc.pids, svc.name_of).rss_now()


def settle(svc: Service) -> tuple[int, int, int]:
    """Wait until the server's receive queues and RSS stop moving (it read all it will);
    returns its RSS then, its open connections and the bytes left unread in them."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    last = (-1, -(10**12))
    while True:
        (conns, unread), rss = accepted(svc.port), _rss(svc)
        if unread == last[0] and abs(rss - last[1]) < 1_000_000:
            return rss, conns, unread
        if time.monotonic() > deadline:
            return rss, conns, unread
        last = (unread, rss)
        time.sleep(0.5)


def measure(svc: Service, shape: Shape, tag: str, window: int = 64) -> dict[str, Any]:
    """One repetition against a started ``svc`` (a fresh one: it is measured from its RSS
    now). Returns the figures and, under ``"stall"``, the stall generator's report."""
    before = _rss(svc)
    sampler = Sampler(svc.pids, svc.name_of).start()
    spec = StallSpec(
        port=svc.port, target=svc.target, connections=shape.connections,
        segment=shape.segment, send=shape.send, tag=f"{tag}s",
    )  # fmt: skip
    argv = [sys.executable, "-m", "bench.loadgen.stall", *spec.to_argv(), "--sync-stdin"]
    honest = LoadSpec(
        devices=1,
        files=1,
        file_size=SizeDist(shape.honest_size, shape.honest_size),
        segment=shape.honest_segment,
        window=window,
        tag=f"{tag}h",
    )
    with open(svc.workdir / "stall.err", "a") as err:
        gen = Loadgen(None, err, argv=argv)
        try:
            line = gen.get(STALL_TIMEOUT)
            if not line.startswith("STALLED "):
                raise LoadgenFailed(f"stall generator said {line!r}")
            report: dict[str, Any] = json.loads(line.split(" ", 1)[1])
            rss, server_conns, unread = settle(svc)
            t0 = time.perf_counter()
            try:
                up = run_load(svc, honest, timeout=HONEST_TIMEOUT, allow_errors=True)
                honest_ok = bool(up["ok"])
                honest_s = up["elapsed"] if honest_ok else time.perf_counter() - t0
            except LoadgenFailed as exc:
                honest_ok, honest_s = False, time.perf_counter() - t0
                report.setdefault("error_samples", []).append(f"honest upload: {exc}")
            rss_after = _rss(svc)
            gen.go()
            report |= json.loads(gen.get(30.0))
        finally:
            usage = sampler.stop()
            gen.kill()
    stalled = report["stalled"]
    return {
        "connections": float(shape.connections),
        "stalled": float(stalled),
        "server_connections": float(server_conns),  # as the kernel sees them
        "stall_errors": float(report["errors"]),
        "rss_before_MB": before / 1e6,
        "rss_stalled_MB": rss / 1e6,
        "growth_MB": (rss - before) / 1e6,
        "growth_peak_MB": (max(usage.rss_peak, rss, rss_after) - before) / 1e6,
        "per_stalled_MiB": (rss - before) / stalled / MiB if stalled else 0.0,
        "unread_MB": unread / 1e6,
        "pending_MB": report["pending_bytes"] / 1e6,
        "closed_by_server": float(report.get("closed_by_server_end", 0)),
        "honest_ok": float(honest_ok),
        "honest_s": honest_s,
        "server_cpu_s": usage.cpu_s,
        "stall": report,
    }


def run(settings: Settings) -> list[Row]:
    wd = settings.workdir / NAME
    shape = Shape()
    make: dict[str, Callable[[], Service]] = {
        "ftserver": lambda: FtServer(
            wd / "ftserver", workers=settings.workers, window=settings.window
        ),
        "mosquitto": lambda: Mosquitto(wd / "mosquitto", window=settings.window),
    }
    rows = {t: Row(NAME, shape.case, t) for t in make}
    settings.log(f"{NAME}: {shape.case}")
    for rep in range(settings.heavy):
        for t, new_service in make.items():

            def one(
                new_service: Callable[[], Service] = new_service, t: str = t
            ) -> dict[str, float]:
                svc = new_service().start()
                try:
                    m = measure(svc, shape, settings.tag("x", t), settings.window)
                finally:
                    svc.reset()
                    stop_all([svc])
                report = m.pop("stall")
                if report["errors"] or not m["honest_ok"]:
                    kinds = report.get("error_kinds", {})
                    rows[t].notes.append(
                        f"stall errors {kinds}, honest upload "
                        f"{'done' if m['honest_ok'] else 'FAILED'}: "
                        f"{report.get('error_samples', [])[:2]}"
                    )
                return {k: float(v) for k, v in m.items()}

            attempt(rows[t], settings, f"{t} #{rep + 1}", one)
    return list(rows.values())

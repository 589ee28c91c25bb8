"""Scenario 5: restart. Uploads stop part-way (every device holds once ``stop_after``
segments are acknowledged), the server is killed with SIGKILL (every process, by pid), started
again on the same port and data, and the devices, which were reconnecting all along, resume
and finish; every file must come out whole. Two cases, each against ftserver and the HTTP
upload server (baseline e, whose hash state lives in memory):

- **one large transfer** (1 GiB; 128 MiB in quick mode) killed at 55 %: how many bytes the
  restarted server reads back (``rchar`` of its processes minus the bytes that arrived on its
  sockets after the restart; zero when the saved hash state is used), and the fin latency.
- **many open transfers** (1 000; 100 in quick mode, 512 KiB received of 1 MiB each):
  ``recovery`` is the time from the restarted server listening to the last transfer's first
  acknowledgement (HTTP: the first answer, to its ``HEAD``) after reconnecting.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from bench.loadgen.spec import KiB, LoadSpec, MiB, SizeDist
from bench.macro.common import Row, Settings, attempt, stop_all
from bench.macro.procstat import descendants, rchar
from bench.macro.runner import run_loads
from bench.macro.services import FtServer, HttpUpload

NAME = "restart"
SEGMENT = 64 * KiB

Restartable = FtServer | HttpUpload


def _restart(svc: Restartable) -> dict[str, Any]:
    old = descendants(svc.pids())
    t_kill = time.time()
    svc.kill9()
    restart_s = svc.restart()
    t_ready = time.time()
    # what the new processes read while starting (Python modules...) is not a re-read
    at_ready = {}
    for pid in descendants(svc.pids()):
        with contextlib.suppress(OSError):
            at_ready[str(pid)] = rchar(pid)
    return {
        "old_pids": old,
        "t_kill": t_kill,
        "restart_s": restart_s,
        "t_ready": t_ready,
        "rchar_at_ready": at_ready,
    }


def _after_restart(server: dict[str, Any]) -> tuple[float, int]:
    """CPU seconds and bytes read (``rchar``) of the restarted processes once listening."""
    old = set(server["old_pids"])
    at_ready: dict[str, int] = server["rchar_at_ready"]
    new = [p for p in server["per_process"].values() if int(p["pid"]) not in old]
    read = sum(p["rchar"] - at_ready.get(str(int(p["pid"])), 0) for p in new)
    return sum(p["cpu_s"] for p in new), int(read)


def large(settings: Settings, svc: Restartable, size: int) -> dict[str, float]:
    spec = LoadSpec(
        devices=1,
        file_size=SizeDist(size, size),
        segment=SEGMENT,
        window=settings.window,
        stop_after=size // SEGMENT * 55 // 100,  # not on a checkpoint boundary
        reconnect_timeout=60.0,
        tag=settings.tag("r", svc.label),
    )
    try:
        [r], server = run_loads(svc, [spec], on_held=lambda: _restart(svc))
    finally:
        svc.reset()
    cpu, rchar = _after_restart(server)
    socket_in = r["wire_bytes"] - r["wire_at_release"]
    return {
        "restart_s": server["restart_s"],
        "reread_MiB": max(0, rchar - socket_in) / MiB,
        "received_before_kill_MiB": size * 55 // 100 / MiB,
        "fin_ms": r["fin_ms"].get("median", 0.0),
        "cpu_after_restart_s": cpu,
    }


def many(settings: Settings, svc: Restartable, n: int) -> dict[str, float]:
    spec = LoadSpec(
        devices=n,
        file_size=SizeDist(MiB, MiB),
        segment=SEGMENT,
        window=settings.window,
        stop_after=8,
        procs=2,
        ramp=n / 2.0,
        reconnect_timeout=60.0,
        tag=settings.tag("m", svc.label),
    )
    try:
        [r], server = run_loads(svc, [spec], on_held=lambda: _restart(svc))
    finally:
        svc.reset()
    return {
        "restart_s": server["restart_s"],
        "recovery_s": r["resume_last"] - server["t_ready"],
        "kill_to_all_resumed_s": r["resume_last"] - server["t_kill"],
        "resumed": float(r["files"]),
        "resume_ms_p99": r["resume_ms"].get("p99", 0.0),
    }


def run(settings: Settings) -> list[Row]:
    wd = settings.workdir / NAME
    size = 128 * MiB if settings.quick else 1024 * MiB
    n = 100 if settings.quick else 1000
    services: dict[str, Restartable] = {
        "ftserver": FtServer(wd / "ftserver", workers=settings.workers, window=settings.window),
        "http": HttpUpload(wd / "http"),
    }
    big = f"one {size // MiB} MiB transfer, killed at 55 %"
    small = f"{n} open transfers"
    rows = {(c, t): Row(NAME, c, t) for c in (big, small) for t in services}
    try:
        for s in services.values():
            s.start()
        for case in (big, small):
            settings.log(f"{NAME}: {case}")
            for rep in range(settings.repeat):
                for t, svc in services.items():

                    def one(svc: Restartable = svc, case: str = case) -> dict[str, float]:
                        return large(settings, svc, size) if case == big else many(settings, svc, n)

                    attempt(rows[case, t], settings, f"{t} #{rep + 1}", one)
    finally:
        stop_all(list(services.values()))
    return list(rows.values())

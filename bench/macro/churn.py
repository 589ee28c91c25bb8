"""Scenario 4: churn. Devices upload files while each is cut off at random (exponential
intervals, mean 0.5 s; the connection is aborted without DISCONNECT, like a device losing
its network), reconnects 50 ms later, resends what was not acknowledged and carries on; the
server must keep every transfer. HTTP devices ask HEAD for the offset and resume with
Content-Range. Reported: goodput of verified files, disconnects, segments resent, and the
time from a drop to the first acknowledgement after it.
"""

from __future__ import annotations

from bench.loadgen.spec import KiB, LoadSpec, MiB, SizeDist
from bench.macro.common import Row, Settings, attempt, stop_all, throughput_metrics
from bench.macro.runner import run_load
from bench.macro.services import FtServer, HttpUpload, Mosquitto, Naive, Service

NAME = "churn"
MEAN_UP = 0.5


def run(settings: Settings) -> list[Row]:
    wd = settings.workdir / NAME
    w = settings.window
    services: dict[str, Service] = {
        "ftserver": FtServer(wd / "ftserver", workers=settings.workers, window=w),
        "mosquitto": Mosquitto(wd / "mosquitto", window=w),
        "http": HttpUpload(wd / "http"),
    }
    if not settings.quick:
        services["naive"] = Naive(wd / "naive", window=w)
    n = 8 if settings.quick else 16
    case = f"{n} devices, 4 MiB files, a disconnect every {MEAN_UP} s per device"
    rows = {t: Row(NAME, case, t) for t in services}
    settings.log(f"{NAME}: {case}")
    try:
        for s in services.values():
            s.start()
        for rep in range(settings.repeat):
            for t, svc in services.items():
                spec = LoadSpec(
                    devices=n,
                    file_size=SizeDist(4 * MiB, 4 * MiB),
                    duration=2.0 if settings.quick else 6.0,
                    segment=64 * KiB,
                    window=w,
                    churn=MEAN_UP,
                    churn_pause=0.05,
                    tag=settings.tag("c", t),
                )

                def one(svc: Service = svc, spec: LoadSpec = spec) -> dict[str, float]:
                    try:
                        r = run_load(svc, spec)
                    finally:
                        svc.reset()
                    m = throughput_metrics(r)
                    m |= {
                        "drops": float(r["drops"]),
                        "reconnects": float(r["reconnects"]),
                        "resent": float(r["resent"]),
                        "resume_ms": r["resume_ms"].get("median", 0.0),
                        "errors": float(r["errors"]),
                    }
                    return m

                attempt(rows[t], settings, f"{t} #{rep + 1}", one)
    finally:
        stop_all(list(services.values()))
    return list(rows.values())

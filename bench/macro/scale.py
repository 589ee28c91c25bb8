"""Scenario 3: many devices. Ramp to N concurrent connections (10 000; 1 000 in quick mode),
hold them all, then every device uploads one small file (1 KiB..64 KiB, log-uniform) while
all stay connected; zero errors allowed.

Measured per target: the server's RSS before the ramp, with every connection open and idle,
and at its peak during the uploads (every process of the server summed), so the cost of an
idle connection is (idle - before) / N; the ramp time, and the files per second of the
upload phase. Baselines: Mosquitto with the same connections and publishes (a), and the same
files by HTTP PUT, one keep-alive connection per device (e). The load generator runs in two
processes.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.loadgen.spec import KiB, LoadSpec, SizeDist
from bench.macro.common import Row, Settings, attempt, stop_all, throughput_metrics
from bench.macro.procstat import Sampler
from bench.macro.runner import run_load
from bench.macro.services import FtServer, HttpUpload, Mosquitto, Service

NAME = "scale"


def devices(quick: bool) -> int:
    return 1000 if quick else 10_000


def run(settings: Settings) -> list[Row]:
    wd = settings.workdir / NAME
    n = devices(settings.quick)
    make: dict[str, Callable[[], Service]] = {
        "ftserver": lambda: FtServer(
            wd / "ftserver", workers=settings.workers, window=settings.window
        ),
        # informative: each process has its own RLIMIT_NOFILE, and an uploading device
        # costs ftserver four descriptors (socket, staging lock, data, journal)
        "ftserver, 4 workers": lambda: FtServer(
            wd / "ftserver4", workers=4, window=settings.window
        ),
        "mosquitto": lambda: Mosquitto(wd / "mosquitto", window=settings.window),
        "http": lambda: HttpUpload(wd / "http"),
    }
    if settings.quick:
        del make["ftserver, 4 workers"]
    case = f"{n} devices, one small file each"
    rows = {t: Row(NAME, case, t) for t in make}
    settings.log(f"{NAME}: {case}")
    for rep in range(settings.repeat):
        for t, new_service in make.items():
            spec = LoadSpec(
                devices=n,
                files=1,
                file_size=SizeDist(1 * KiB, 64 * KiB, log=True),
                segment=64 * KiB,
                window=settings.window,
                ramp=n / (1.0 if settings.quick else 4.0),  # a 1 s (4 s) ramp
                procs=2,
                tag=settings.tag("s", t.replace(" ", "")),
            )

            def one(
                new_service: Callable[[], Service] = new_service,
                spec: LoadSpec = spec,
                row: Row = rows[t],
            ) -> dict[str, float]:
                # a fresh server each time: memory freed by an earlier run and kept by the
                # allocator would hide what the connections cost
                svc = new_service().start()
                try:
                    before = Sampler(svc.pids, svc.name_of).rss_now()
                    # errors are part of this target: count them, keep the figures
                    r = run_load(svc, spec, allow_errors=True)
                finally:
                    svc.reset()
                    stop_all([svc])
                m = throughput_metrics(r)
                if r["errors"]:
                    row.notes.append(f"{r['errors']} error(s), e.g. {r['error_samples'][:2]}")
                idle = r["server"]["rss_start"]
                m |= {
                    "connections": float(n),
                    "errors": float(r["errors"]),
                    "ramp_s": r["connect_s"],
                    "rss_before_MB": before / 1e6,
                    "rss_idle_MB": idle / 1e6,
                    "idle_conn_KiB": (idle - before) / n / 1024,
                }
                return m

            attempt(rows[t], settings, f"{t} #{rep + 1}", one)
    return list(rows.values())

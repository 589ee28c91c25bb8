"""Scenario 3: many devices. Ramp to 10 000 concurrent connections (quick mode too), hold
them all, then every device uploads one small file (1 KiB..64 KiB, log-uniform; quick mode
1 KiB..16 KiB) while all stay connected; zero errors allowed.

Measured per target: the server's RSS before the ramp, with every connection open and idle,
and at its peak during the uploads (every process of the server summed), so the cost of an
idle connection is (idle - before) / N; the ramp time, and the files per second of the
upload phase. Errors are counted by reason (a refused CONNECT, a CONNACK or PUBACK reason
code, an HTTP status, an export missing...), and after the run the exports are counted on
disk (ftserver: also through its HTTP API): every file must be there. Baselines: Mosquitto
with the same connections and publishes (a), and the same files by HTTP PUT, one keep-alive
connection per device (e). The load generator runs in as many processes as its descriptor
limit needs (one socket per device), at least two.
"""

from __future__ import annotations

import resource
from collections.abc import Callable

from bench.loadgen.spec import KiB, LoadSpec, SizeDist
from bench.macro.common import Row, Settings, attempt, stop_all, throughput_metrics
from bench.macro.procstat import Sampler
from bench.macro.runner import run_load
from bench.macro.services import FtServer, HttpUpload, Mosquitto, Service

NAME = "scale"


DEVICES = 10_000
#: descriptors a load generator process keeps for itself (pipes, modules, the event loop)
FD_MARGIN = 256


def loadgen_procs(n: int) -> int:
    """Processes needed for ``n`` connections under this machine's descriptor limit
    (inherited from the bench), at least two so the load spreads over both cores."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    per_proc = max(1, limit - FD_MARGIN)
    return max(2, -(-n // per_proc))


def error_metrics(kinds: dict[str, int]) -> dict[str, float]:
    """``errors[<reason>]`` for each reason counted (in the JSON; the report lists them)."""
    return {f"errors[{k}]": float(v) for k, v in sorted(kinds.items())}


def run(settings: Settings) -> list[Row]:
    wd = settings.workdir / NAME
    n = DEVICES
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
    largest = 16 * KiB if settings.quick else 64 * KiB
    for rep in range(settings.heavy):
        for t, new_service in make.items():
            spec = LoadSpec(
                devices=n,
                files=1,
                file_size=SizeDist(1 * KiB, largest, log=True),
                segment=64 * KiB,
                window=settings.window,
                ramp=n / 4.0,  # a 4 s ramp
                procs=loadgen_procs(n),
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
                listed: int | None = None
                try:
                    before = Sampler(svc.pids, svc.name_of).rss_now()
                    # errors are part of this target: count them, keep the figures
                    r = run_load(svc, spec, allow_errors=True)
                    exported = svc.exported_files()
                    if isinstance(svc, FtServer):
                        listed = svc.listed_files()
                finally:
                    svc.reset()
                    stop_all([svc])
                m = throughput_metrics(r)
                if r["errors"]:
                    row.notes.append(f"{r['errors']} error(s), "
                                     f"e.g. {r['error_samples'][:2]}")  # fmt: skip
                idle = r["server"]["rss_start"]
                m |= {
                    "connections": float(n),
                    "errors": float(r["errors"]),
                    "reconnects": float(r["reconnects"]),
                    "ramp_s": r["connect_s"],
                    "rss_before_MB": before / 1e6,
                    "rss_idle_MB": idle / 1e6,
                    "idle_conn_KiB": (idle - before) / n / 1024,
                }
                if exported is not None:
                    m["exported"] = float(exported)
                    m["missing"] = float(n - exported)
                if listed is not None:
                    m["listed"] = float(listed)
                return m | error_metrics(r["error_kinds"])

            attempt(rows[t], settings, f"{t} #{rep + 1}", one)
    return list(rows.values())

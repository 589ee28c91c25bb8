"""``python -m bench.macro [--quick] [--only throughput,fin,...]``: the end-to-end suite.

Runs each scenario with its baselines side by side (interleaved repetitions), then writes
``macro.json``, ``macro.md`` (with the PERFORMANCE.md targets table) and ``macro.png`` to the
results directory, and prints the scenario-1 line
``ftserver X MB/s, mosquitto Y MB/s, naive Z MB/s, ratios X/Y X/Z`` last.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.loadgen.run import raise_fd_limit
from bench.macro import (
    churn,
    fin,
    floors,
    relay,
    report,
    restart,
    s3_fin,
    scale,
    stalled,
    throughput,
)
from bench.macro.common import Row, Settings

SCENARIOS: dict[str, Callable[[Settings], list[Row]]] = {
    "throughput": throughput.run,
    "fin": fin.run,
    "scale": scale.run,
    "stalled": stalled.run,
    "churn": churn.run,
    "restart": restart.run,
    "relay": relay.run,
    "s3_fin": s3_fin.run,
}


def default_out() -> Path:
    return Path("bench/results") / time.strftime("%Y%m%d-%H%M%S")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, 3 repetitions (scale and stalled: 1), about 4 min",
    )
    p.add_argument("--repeat", type=int, default=0, help="repetitions (default 5, quick 3)")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--out", type=Path, default=None, help="results directory")
    p.add_argument("--workers", type=int, default=0, help="ftserver --workers (0: per core)")
    p.add_argument("--window", type=int, default=64, help="in-flight commands per device")
    p.add_argument("--tmp", type=Path, default=None, help="where servers keep their data")
    p.add_argument("--keep", action="store_true", help="keep the servers' data directories")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    only = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    nofile = raise_fd_limit()  # inherited by every server and load generator started here
    out = args.out or default_out()
    work = Path(tempfile.mkdtemp(prefix="ftbench-", dir=args.tmp))
    settings = Settings(
        quick=args.quick,
        repeat=args.repeat or (3 if args.quick else 5),
        heavy_repeat=args.repeat or (1 if args.quick else 5),
        workdir=work,
        workers=args.workers,
        window=args.window,
        verbose=not args.quiet,
    )
    meta: dict[str, object] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "quick": args.quick,
        "repeat": settings.repeat,
        "heavy_repeat": settings.heavy,
        "workers": args.workers,
        "window": args.window,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "load_before": load_average(),
        "nofile": nofile,
        "scenarios": only,
    }
    rows: list[Row] = []
    t0 = time.monotonic()
    try:
        floor = floors.measure(work)
        for name in only:
            t = time.monotonic()
            rows += SCENARIOS[name](settings)
            settings.log(f"{name}: {time.monotonic() - t:.0f} s")
    finally:
        meta["load_after"] = load_average()
        meta["seconds"] = round(time.monotonic() - t0, 1)
        if rows:
            md = report.write(out, rows, floor, meta)
            settings.log(f"results: {md} (+ macro.json, macro.png)")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if "throughput" in only:
        print(report.quick_line(rows), flush=True)
    return 0 if all(not r.errors for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

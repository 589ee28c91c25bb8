"""``python -m bench [--quick] [macro options]``: the whole bench suite, one results directory.

The kernel micro-benchmarks (:mod:`bench.micro.kernels`), then the end-to-end scenarios with
their baselines (:mod:`bench.macro`), both writing to ``bench/results/<timestamp>/`` (or
``--out``). Progress and tables go to stderr; stdout carries one line, scenario 1 at 64 KiB
with 8 uploaders: ``ftserver X MB/s, mosquitto Y MB/s, naive Z MB/s, ratios X/Y X/Z``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from bench.macro.__main__ import default_out
from bench.macro.__main__ import main as macro_main
from bench.micro.kernels import main as micro_main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, add_help=False)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--no-micro", action="store_true", help="skip the kernel micro-benchmarks")
    args, rest = p.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        print(__doc__)
        return macro_main(["--help"])
    out = args.out or default_out()
    quick = ["--quick"] if args.quick else []
    status = 0
    if not args.no_micro:
        with contextlib.redirect_stdout(sys.stderr):
            status |= micro_main([*quick, "--out", str(out)])
    status |= macro_main([*quick, "--out", str(out), *rest])
    return status


if __name__ == "__main__":
    raise SystemExit(main())

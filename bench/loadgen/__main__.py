"""``python -m bench.loadgen --port PORT [...]``: run one load, print its JSON result.

Exit status 0 when every upload succeeded and was verified, 1 otherwise.
"""

from __future__ import annotations

import json
import sys

from bench.loadgen.run import result_json, run_load
from bench.loadgen.spec import from_args, parser


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    spec = from_args(ns)
    stats = run_load(spec, sync_stdin=ns.sync_stdin)
    result = result_json(spec, stats)
    print(json.dumps(result), flush=True)
    if not result["ok"]:
        for message in stats.error_samples:
            print(f"loadgen: {message}", file=sys.stderr)
        print(f"loadgen: {stats.errors} error(s), {stats.files} file(s) done", file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

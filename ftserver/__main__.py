"""Command line: ``ftserver`` / ``python -m ftserver``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ftserver", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the server")
    args = parser.parse_args(argv)
    if args.command == "serve":
        print("ftserver serve: the MQTT server is not built yet (issue 3)", file=sys.stderr)
        return 1
    return 2  # pragma: no cover


if __name__ == "__main__":
    raise SystemExit(main())

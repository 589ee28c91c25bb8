"""ftserver: file transfer over MQTT (EMQX EIP-0021 compatible) ingest server.

Commands:
  ftserver serve [options]   run the server (python -m ftserver serve is the same)
  ftserver upload FILE       upload a file over MQTT (the uploader; docs/client.md)
  ftserver files list|get    list or download exports through the HTTP API

Configuration comes from built-in defaults, then a TOML file (--config), then the flags;
flags win. Every configuration key is documented in docs/configuration.md; any key can also
be set with --set KEY=VALUE (for example --set limits.max_file_size=1GiB).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ftserver import __version__
from ftserver.config import ConfigError, describe, load_config

#: command line flag -> configuration key
FLAG_KEYS = {
    "mqtt": "mqtt.listen",
    "http": "http.listen",
    "data": "server.data_dir",
    "workers": "server.workers",
    "log_level": "server.log_level",
    "log_format": "server.log_format",
    "durability": "storage.durability",
    "upstream": "relay.upstream",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftserver",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ftserver {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    keys = "\n".join(f"  {k.key} ({k.kind}, default {k.default}): {k.doc}" for k in describe())
    serve = sub.add_parser(
        "serve",
        help="run the server",
        description="Run the MQTT file-transfer server until SIGTERM or SIGINT.",
        epilog="configuration keys (TOML tables, or --set KEY=VALUE):\n" + keys,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    serve.add_argument(
        "--mqtt",
        metavar="HOST:PORT",
        help="MQTT listener (default 127.0.0.1:1883; port 0 picks a free one)",
    )
    serve.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="HTTP listener for /healthz and the API (default 127.0.0.1:18083)",
    )
    serve.add_argument(
        "--data",
        metavar="DIR",
        help="data directory holding staging/ and exports/ (default ./ftdata)",
    )
    serve.add_argument(
        "--workers",
        metavar="N",
        help="worker processes (0: one per core; 1: one process)",
    )
    serve.add_argument(
        "--log-level", metavar="LEVEL", help="debug, info, warning or error (default info)"
    )
    serve.add_argument(
        "--log-format",
        metavar="FORMAT",
        help="text (default) or json: one JSON object per line (docs/operations.md)",
    )
    serve.add_argument(
        "--durability", metavar="MODE", help="fast (default) or sync: flush before acknowledging"
    )
    serve.add_argument(
        "--upstream",
        metavar="URL",
        help="relay mode: pass everything but file transfer to this broker "
        "(mqtt://host:port or mqtts://host:port; default: none, standalone)",
    )
    serve.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any configuration key (repeatable)",
    )
    pw = sub.add_parser(
        "passwd",
        help="add, change or delete an MQTT user in a password file",
        description="Manage the password file named by security.password_file: argon2id "
        "hashes, one 'user:hash' line per user. The password is read from the terminal "
        "(twice), or from standard input with --stdin.",
    )
    pw.add_argument("file", type=Path, help="the password file (created if missing)")
    pw.add_argument("user", help="the user name")
    pw.add_argument("--delete", action="store_true", help="remove the user")
    pw.add_argument("--stdin", action="store_true", help="read the password from stdin")
    from ftserver.client.cli import add_parsers

    add_parsers(sub)
    return parser


def _passwd(args: argparse.Namespace) -> int:
    from ftserver.auth import PasswordFileError, delete_user, set_password

    try:
        if args.delete:
            if not delete_user(args.file, args.user):
                print(f"ftserver passwd: no user {args.user!r} in {args.file}", file=sys.stderr)
                return 1
            return 0
        if args.stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            import getpass

            password = getpass.getpass(f"password for {args.user}: ")
            if getpass.getpass("again: ") != password:
                print("ftserver passwd: the passwords differ", file=sys.stderr)
                return 1
        if not password:
            print("ftserver passwd: empty password refused", file=sys.stderr)
            return 1
        set_password(args.file, args.user, password)
    except (OSError, PasswordFileError) as exc:
        print(f"ftserver passwd: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["_worker"]:  # internal: a worker process started by the supervisor
        from ftserver.worker import main as worker_main

        return worker_main()
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command == "passwd":
        return _passwd(args)
    if args.command == "upload":
        from ftserver.client.cli import run_upload

        return run_upload(args)
    if args.command == "files":
        from ftserver.client.cli import run_files

        return run_files(args)
    if args.command != "serve":  # pragma: no cover - argparse allows only known commands
        parser.error(f"unknown command {args.command!r}")
    overrides: dict[str, object] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"ftserver: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ftserver: cannot read configuration: {exc}", file=sys.stderr)
        return 2
    from ftserver.config import ConfigSource
    from ftserver.launch import run

    source = ConfigSource(str(args.config) if args.config else None, overrides)
    return run(config, source)


if __name__ == "__main__":
    raise SystemExit(main())

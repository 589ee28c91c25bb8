"""``ftserver upload`` and ``ftserver files``: the uploader and the HTTP API from a shell.

Exit status of ``upload``: 0 only when the server confirmed the export; 1 when the upload
stopped for a reason that may pass (connection, timeout: run it again with ``--resume``);
3 when the server refused for good (0x83, a command it will not accept, or the connection:
bad credentials);
2 for bad usage; 130 when interrupted (the state file allows ``--resume``).

Only the standard library is imported at module level, so that ``ftserver serve`` does not
pay for aiomqtt.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_INTERRUPTED = 130

PASSWORD_ENV = "FTSERVER_MQTT_PASSWORD"
TOKEN_ENV = "FTSERVER_HTTP_TOKEN"
URL_ENV = "FTSERVER_HTTP_URL"
DEFAULT_URL = "http://127.0.0.1:18083"


def _size(text: str) -> int:
    from ftserver.config import parse_size

    try:
        n = parse_size(text.strip()) if not text.strip().isdigit() else int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1 byte")
    return n


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def _seconds(text: str) -> float:
    from ftserver.config import parse_duration

    try:
        return float(text) if text.replace(".", "", 1).isdigit() else parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parsers(sub: Any) -> None:
    """Add ``upload`` and ``files`` to the subcommands of ``ftserver``."""
    up = sub.add_parser(
        "upload",
        help="upload a file over MQTT (to ftserver or EMQX)",
        description="Upload FILE with the file-transfer protocol (EIP-0021) and wait until "
        "the server confirms the export. Resends what the server refuses or reports "
        "missing, pauses when asked to (0x97), reconnects when the connection drops, and "
        "keeps a state file so that --resume continues after the process was stopped. "
        "Exit status: 0 exported; 1 failed, may pass (--resume later); 3 refused by the "
        "server for good; 2 bad usage; 130 interrupted.",
    )
    up.add_argument("file", metavar="FILE", help="the file to upload ('-': standard input)")
    up.add_argument("--host", default="127.0.0.1", help="MQTT server (default 127.0.0.1)")
    up.add_argument("--port", type=int, help="MQTT port (default 1883, 8883 with --tls)")
    up.add_argument("--tls", action="store_true", help="connect with TLS")
    up.add_argument("--ca-file", metavar="FILE", help="CA certificates to verify the server")
    up.add_argument(
        "--insecure", action="store_true", help="TLS without verifying the server (testing only)"
    )
    up.add_argument("--username", help="MQTT user name")
    up.add_argument(
        "--password", help=f"MQTT password (better: the environment variable {PASSWORD_ENV})"
    )
    up.add_argument("--client-id", help="MQTT client id (default: random; --resume reuses it)")
    up.add_argument("--file-id", help="the transfer's file id (default: random)")
    up.add_argument("--name", help="the exported file's name (default: FILE's base name)")
    up.add_argument(
        "--segment-size", type=_size, metavar="SIZE", help="bytes per segment (default 256KiB)"
    )
    up.add_argument(
        "--window", type=_positive, metavar="N", help="segments in flight at once (default 16)"
    )
    up.add_argument(
        "--async", dest="async_mode", action="store_true", help="asynchronous mode ($file-async/)"
    )
    up.add_argument(
        "--mqtt-version", choices=("3.1.1", "5"), default="5", help="MQTT version (default 5)"
    )
    up.add_argument(
        "--checksums", action="store_true", help="send each segment's SHA-256 in its topic"
    )
    up.add_argument(
        "--no-file-checksum",
        action="store_true",
        help="do not send the whole file's SHA-256 in the init (skips reading the file twice)",
    )
    up.add_argument(
        "--resume",
        action="store_true",
        help="continue the upload recorded in the state file, if it matches FILE",
    )
    up.add_argument(
        "--state",
        type=Path,
        metavar="FILE",
        help="the state file (default: one per file and server under "
        "$XDG_STATE_HOME/ftserver/uploads/)",
    )
    up.add_argument("--keepalive", type=_positive, default=15, metavar="SECONDS", help="default 15")
    up.add_argument(
        "--timeout",
        type=_seconds,
        metavar="DURATION",
        help="give up after this long without progress (default 10m)",
    )
    up.add_argument(
        "--command-timeout",
        type=_seconds,
        metavar="DURATION",
        help="resend a command (or reconnect) after this long without its result (default 30s)",
    )
    up.add_argument(
        "--progress",
        choices=("auto", "bar", "log", "none"),
        default="auto",
        help="progress output on stderr: a bar on a terminal, log lines otherwise (auto)",
    )
    up.add_argument("-v", "--verbose", action="store_true", help="log every resend and reconnect")

    files = sub.add_parser(
        "files",
        help="list or download exported files through the HTTP API",
        description="List or download the exports of an ftserver (or EMQX) through its HTTP "
        f"API. The token can also come from {TOKEN_ENV}, the URL from {URL_ENV}.",
    )
    fsub = files.add_subparsers(dest="files_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--url",
            default=os.environ.get(URL_ENV, DEFAULT_URL),
            help=f"the HTTP API (default {DEFAULT_URL})",
        )
        p.add_argument("--token", help=f"bearer token (better: {TOKEN_ENV})")

    ls = fsub.add_parser("list", help="list exported files")
    common(ls)
    ls.add_argument("--limit", type=_positive, help="at most this many files")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    get = fsub.add_parser("get", help="download the files of one transfer")
    common(get)
    get.add_argument("client_id", metavar="CLIENTID")
    get.add_argument("file_id", metavar="FILEID")
    get.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="PATH",
        help="directory to write into (default .), or a file name when there is one file",
    )
    get.add_argument("--force", action="store_true", help="overwrite existing files")


# -- upload ------------------------------------------------------------------------------------


def run_upload(args: argparse.Namespace) -> int:
    import asyncio

    try:
        return asyncio.run(_upload(args))
    except KeyboardInterrupt:
        print("ftserver upload: interrupted (continue with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED


async def _upload(args: argparse.Namespace) -> int:
    import ssl

    from ftserver.client import (
        DEFAULT_SEGMENT_SIZE,
        DEFAULT_WINDOW,
        ConnectionFailed,
        MqttSettings,
        Timeouts,
        UploadCancelled,
        UploadError,
        UploadOptions,
        UploadRejected,
        UploadTimeout,
        upload,
    )
    from ftserver.client import state as statefile
    from ftserver.client.progress import DisplayHandler, ProgressDisplay, human_size

    stderr = sys.stderr
    mode = args.progress
    if mode == "auto":
        mode = "bar" if stderr.isatty() else "log"
    display = ProgressDisplay(stderr, tty=mode == "bar") if mode != "none" else None
    logger = logging.getLogger("ftserver.client")
    logger.setLevel(logging.INFO if args.verbose or mode == "log" else logging.WARNING)
    handler: logging.Handler = (
        DisplayHandler(display) if display is not None else logging.StreamHandler(stderr)
    )
    handler.setFormatter(logging.Formatter("ftserver upload: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    # paho logs every connection reset as an error; the uploader reports what matters
    logging.getLogger("ftserver.client.mqtt").setLevel(
        logging.DEBUG if args.verbose else logging.CRITICAL
    )

    tls: bool | ssl.SSLContext = False
    if args.tls or args.ca_file or args.insecure:
        ctx = ssl.create_default_context(cafile=args.ca_file)
        if args.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        tls = ctx
    port = args.port if args.port is not None else (8883 if tls else 1883)
    settings = MqttSettings(
        host=args.host,
        port=port,
        client_id=args.client_id,
        username=args.username,
        password=args.password if args.password is not None else os.environ.get(PASSWORD_ENV),
        tls=tls,
        version=5 if args.mqtt_version == "5" else 4,
        keepalive=args.keepalive,
    )
    defaults = Timeouts()
    timeouts = Timeouts(
        stall=args.timeout if args.timeout is not None else defaults.stall,
        command=args.command_timeout if args.command_timeout is not None else defaults.command,
    )
    stdin = args.file == "-"
    if stdin and not args.name:
        print("ftserver upload: --name is needed when reading standard input", file=stderr)
        return EXIT_USAGE
    state_path: Path | None = args.state
    if state_path is None and not stdin:
        state_path = statefile.default_path(Path(args.file), args.host, port)
    try:
        options = UploadOptions(
            file_id=args.file_id,
            name=args.name,
            mode="async" if args.async_mode else "sync",
            segment_size=args.segment_size or DEFAULT_SEGMENT_SIZE,
            window=args.window or DEFAULT_WINDOW,
            segment_checksums=args.checksums,
            file_checksum=not args.no_file_checksum,
            state_file=state_path,
            resume=args.resume,
            timeouts=timeouts,
        )
        result = await upload(
            sys.stdin.buffer if stdin else Path(args.file),
            options,
            mqtt=settings,
            on_progress=display,
        )
    except (UploadCancelled, UploadRejected) as exc:
        _fail(display, f"refused: {exc}", exc)
        return EXIT_REFUSED
    except ConnectionFailed as exc:
        _fail(display, f"{exc}", exc)
        if exc.reason_code:  # the CONNACK refused us (credentials, client id): retry won't do
            return EXIT_REFUSED
        if state_path is not None:
            print(
                f"ftserver upload: state kept in {state_path}; continue with --resume",
                file=stderr,
            )
        return EXIT_FAILED
    except UploadTimeout as exc:
        _fail(display, f"{exc}", exc)
        if state_path is not None:
            print(
                f"ftserver upload: state kept in {state_path}; continue with --resume", file=stderr
            )
        return EXIT_FAILED
    except UploadError as exc:
        _fail(display, str(exc), exc)
        return EXIT_FAILED
    except (OSError, ValueError) as exc:
        _fail(display, str(exc), None)
        return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILED
    finally:
        logger.removeHandler(handler)
    if display is not None:
        display.finish()
    extra = 100.0 * result.extra_ratio
    print(
        f"ftserver upload: exported {result.name} ({human_size(result.size)}) as "
        f"{result.client_id}/{result.file_id} in {result.elapsed:.1f}s; "
        f"sent {result.bytes_sent} bytes, {result.bytes_resent} resent ({extra:.2f} %), "
        f"{result.bytes_resumed} resumed, {result.reconnects} reconnects, "
        f"{result.pauses} pauses",
        file=stderr,
    )
    json.dump(
        {
            "clientid": result.client_id,
            "fileid": result.file_id,
            "name": result.name,
            "size": result.size,
            "checksum": result.checksum,
            "bytes_sent": result.bytes_sent,
            "bytes_resent": result.bytes_resent,
            "bytes_resumed": result.bytes_resumed,
            "reconnects": result.reconnects,
            "pauses": result.pauses,
            "elapsed": round(result.elapsed, 3),
        },
        sys.stdout,
    )
    sys.stdout.write("\n")
    return EXIT_OK


def _fail(display: Any, message: str, exc: Exception | None) -> None:
    from ftserver.client.errors import UploadError

    if display is not None:
        display.finish()
    where = ""
    if isinstance(exc, UploadError) and exc.file_id:
        where = f" [{exc.client_id}/{exc.file_id}]"
    print(f"ftserver upload: {message}{where}", file=sys.stderr)


# -- files -------------------------------------------------------------------------------------


def run_files(args: argparse.Namespace) -> int:
    from ftserver.client.api import ApiError, FilesApi

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    try:
        api = FilesApi(args.url, token=token or None)
        if args.files_command == "list":
            return _list(api, args)
        return _get(api, args)
    except ApiError as exc:
        print(f"ftserver files: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, ValueError) as exc:
        print(f"ftserver files: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _list(api: Any, args: argparse.Namespace) -> int:
    from ftserver.client.progress import human_size

    out = sys.stdout
    n = 0
    for item in api.iter_files(page=min(args.limit or 1000, 1000)):
        if args.limit is not None and n >= args.limit:
            break
        n += 1
        if args.json:
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
        else:
            out.write(
                f"{item.get('timestamp', '')}  {human_size(int(item.get('size', 0))):>10}  "
                f"{item.get('clientid', '')}/{item.get('fileid', '')}/{item.get('name', '')}\n"
            )
    if not args.json:
        print(f"{n} file(s)", file=sys.stderr)
    return EXIT_OK


def _get(api: Any, args: argparse.Namespace) -> int:
    from ftserver.client.api import safe_name

    items = api.transfer_files(args.client_id, args.file_id)
    out: Path | None = args.output
    targets: list[tuple[dict[str, Any], Path]] = []
    for item in items:
        name = safe_name(item.get("name"))
        if out is not None and not out.is_dir() and len(items) == 1:
            targets.append((item, out))
        else:
            targets.append((item, (out or Path(".")) / name))
    status = EXIT_OK
    for item, dest in targets:
        if dest.exists() and not args.force:
            print(f"ftserver files: {dest} exists (use --force)", file=sys.stderr)
            status = EXIT_FAILED
            continue
        tmp = dest.with_name(f".{dest.name}.part")
        with open(tmp, "wb") as f:
            size, digest = api.download(item, f)
        expected = item.get("metadata", {}).get("checksum")
        if isinstance(expected, str) and expected.lower() != digest:
            tmp.unlink()
            print(
                f"ftserver files: {item.get('name')}: SHA-256 {digest} does not match the "
                f"manifest's {expected.lower()}; not saved",
                file=sys.stderr,
            )
            status = EXIT_FAILED
            continue
        os.replace(tmp, dest)
        print(f"ftserver files: {dest} ({size} bytes)", file=sys.stderr)
    return status

"""``python -m bench.idle_conns [-n 2000]``: what one idle MQTT 5 connection costs the server.

Starts a 1-worker ftserver, reads its RSS (``/proc``), opens ``n`` MQTT 5 connections (CONNECT,
CONNACK, then nothing), waits for the RSS to settle, reads it again and prints
``idle_conn_KiB`` = growth / n. A quicker, narrower twin of the "scale" scenario's figure of
the same name (which ramps to 10 000 devices with baselines).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

from bench.macro.services import FtServer


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    # protocol name, level 5, clean start, keep alive 0, no properties, client id
    body = b"\x00\x04MQTT\x05\x02\x00\x00\x00" + len(cid).to_bytes(2, "big") + cid
    return bytes((0x10, len(body))) + body


def settle(pid: int, timeout: float = 10.0) -> int:
    last = -(10**12)
    deadline = time.monotonic() + timeout
    while True:
        now = rss(pid)
        if abs(now - last) < 64 * 1024 or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-n", type=int, default=2000, help="idle connections")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        svc = FtServer(Path(tmp), workers=1).start()
        try:
            pid = svc.pids()[0]
            # one connection first: lazily built state (imports, caches) is not per connection
            warm = socket.create_connection(("127.0.0.1", svc.port))
            warm.sendall(connect_packet("warm"))
            warm.recv(64)
            before = settle(pid)
            socks = []
            for i in range(args.n):
                s = socket.create_connection(("127.0.0.1", svc.port))
                s.sendall(connect_packet(f"idle-{i}"))
                socks.append(s)
            for s in socks:
                if not s.recv(64).startswith(b"\x20"):
                    raise RuntimeError("no CONNACK")
            after = settle(pid)
            per = (after - before) / args.n / 1024
            print(f"idle_conn_KiB {per:.2f} (n={args.n}, rss {before / 1e6:.1f} -> "
                  f"{after / 1e6:.1f} MB)")  # fmt: skip
            for s in [*socks, warm]:
                s.close()
        finally:
            svc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Upload one file with paho-mqtt to a fresh ftserver and time it, fin latency included.

    python -m bench.macro.paho_upload [--size-mib 1024] [--segment-kib 64] [--repeat 3]

Starts the server (a subprocess, 127.0.0.1, port 0, a temporary data directory), uploads
``size`` random bytes in ``segment`` pieces (sync mode, QoS 1, paho's in-flight window raised to
the server's Receive Maximum), and reports per run: upload throughput, the fin's latency
(fin published -> its PUBACK), and whether the exported bytes are identical. As baseline the
same run reports the time to hash the file with hashlib (what any correct fin must have paid
somewhere) and to copy it (what a concatenate-at-fin design pays at fin).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ftserver.export.layout import export_relpath

MiB = 1 << 20


def start_server(data: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftserver", "serve", "--mqtt", "127.0.0.1:0", "--http",
         "127.0.0.1:0", "--data", str(data), "--log-level", "warning", *extra],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    port = 0
    for line in proc.stdout:
        if line.startswith("ftserver: mqtt listening on "):
            port = int(line.rsplit(":", 1)[1])
        if line.startswith("ftserver: data directory"):
            return proc, port
    raise RuntimeError("server did not start")


def timed_upload(
    port: int,
    client_id: str,
    size: int,
    chunks: Iterable[tuple[int, bytes]],
    before_fin: Callable[[], None] = lambda: None,
) -> tuple[float, float, float]:
    """One paho client (MQTT 5) sends the init, the segments ``chunks`` yields (offset, bytes)
    with at most 256 unacknowledged, waits until all are acknowledged, calls ``before_fin``,
    then sends the fin. Returns the times (perf_counter) of the start, of the fin being sent
    and of its acknowledgement; raises if any acknowledgement was not 0x00."""
    acks: dict[int, int] = {}
    cond = threading.Condition()

    def on_publish(c: Any, u: Any, mid: int, rc: Any, p: Any) -> None:
        with cond:
            acks[mid] = int(rc.value)
            cond.notify_all()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(64)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port, 60)
    client.loop_start()
    t0 = time.perf_counter()
    info = client.publish("$file/f/init", json.dumps({"name": "big.bin", "size": size}), qos=1)
    window = [info.mid]
    for off, chunk in chunks:
        window.append(client.publish(f"$file/f/{off}", chunk, qos=1).mid)
        if len(window) >= 256:  # keep paho's queue bounded
            oldest = window[0]
            with cond:
                cond.wait_for(lambda: oldest in acks)  # noqa: B023 - bound just above
            window = [m for m in window if m not in acks]
    with cond:
        cond.wait_for(lambda: all(m in acks for m in window))
    before_fin()
    t_sent = time.perf_counter()
    fin = client.publish(f"$file/f/fin/{size}", b"", qos=1).mid
    with cond:
        cond.wait_for(lambda: fin in acks)
    t_fin = time.perf_counter()
    client.disconnect()
    client.loop_stop()
    bad = {m: rc for m, rc in acks.items() if rc != 0}
    if bad:
        raise RuntimeError(f"non-zero acknowledgements: {list(bad.items())[:5]}")
    return t0, t_sent, t_fin


def upload(port: int, client_id: str, path: Path, size: int, segment: int) -> dict[str, float]:
    def chunks() -> Iterator[tuple[int, bytes]]:
        with open(path, "rb") as f:
            off = 0
            while off < size:
                chunk = f.read(segment)
                yield off, chunk
                off += len(chunk)

    t0, t_data, t_fin = timed_upload(port, client_id, size, chunks())
    return {"upload_s": t_data - t0, "fin_ms": (t_fin - t_data) * 1e3}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--segment-kib", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--durability", default="fast", choices=["fast", "sync"])
    args = p.parse_args(argv)
    size = args.size_mib * MiB
    segment = args.segment_kib * 1024
    runs = []
    with tempfile.TemporaryDirectory(prefix="ftbench-") as d:
        tmp = Path(d)
        src = tmp / "src.bin"
        with open(src, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MiB))
        for k in range(args.repeat):
            data = tmp / f"data{k}"
            proc, port = start_server(data, "--durability", args.durability)
            try:
                r = upload(port, f"bench-{k}", src, size, segment)
            finally:
                proc.terminate()
                proc.wait(30)
            out = data / "exports" / export_relpath(f"bench-{k}", "f", "big.bin")
            t0 = time.perf_counter()
            same = _sha(out) == _sha(src)
            r["hash_ms"] = (time.perf_counter() - t0) * 1e3 / 2
            t0 = time.perf_counter()
            shutil.copyfile(src, tmp / "copy.bin")
            r["copy_ms"] = (time.perf_counter() - t0) * 1e3
            (tmp / "copy.bin").unlink()
            r["identical"] = float(same)
            r["MBps"] = size / r["upload_s"] / 1e6
            runs.append(r)
            print(json.dumps(r), flush=True)
            shutil.rmtree(data)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(
        f"{args.size_mib} MiB, {args.segment_kib} KiB segments, paho, {args.durability}: "
        f"upload {med['MBps']:.0f} MB/s, fin {med['fin_ms']:.1f} ms "
        f"(re-hash baseline {med['hash_ms']:.0f} ms, copy baseline {med['copy_ms']:.0f} ms: "
        f"fin is {med['hash_ms'] / med['fin_ms']:.0f}x faster than re-hashing), "
        f"identical: {all(r['identical'] for r in runs)}"
    )
    return 0 if all(r["identical"] for r in runs) else 1


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


if __name__ == "__main__":
    raise SystemExit(main())

"""Micro-benchmarks of the ftcore kernels, each against its baseline measured in the same run.

    python -m bench.micro.kernels [--quick] [--out DIR] [--repeat N]

Baselines: the pure-Python twin (range set), hashlib's SHA-256 over the same bytes (the floor
that place() cannot beat: it must hash every byte once), and "pwrite + hashlib", what a
Python implementation without the kernels would do. Runs are interleaved (A B A B ...) and
reported as medians with the spread (min..max); the figures that matter are the ratios.
Writes ``kernels.json`` and ``kernels.md`` to the output directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import ftcore
from ftcore import _pure

MiB = 1 << 20


def interleaved(runs: dict[str, Callable[[], float]], repeat: int) -> dict[str, list[float]]:
    """Run each candidate ``repeat`` times, A B A B, each returning its elapsed seconds."""
    out: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, fn in runs.items():
            out[name].append(fn())
    return out


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def summary(samples: list[float], work: float) -> dict[str, float]:
    """Rate (work / second): median and spread over the samples."""
    rates = sorted(work / s for s in samples)
    return {"median": statistics.median(rates), "min": rates[0], "max": rates[-1]}


def bench_rangeset(n: int, repeat: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    rng = random.Random(1)
    shuffled = list(range(n))
    rng.shuffle(shuffled)
    for order, seq in (("in order", range(n)), ("random", shuffled)):

        def run(cls: type, seq: object = seq) -> float:
            rs = cls()
            add = rs.add
            t0 = time.perf_counter()
            for k in seq:  # type: ignore[attr-defined]
                add(k * 100, k * 100 + 100)
            return time.perf_counter() - t0

        res = interleaved(
            {"ftcore": lambda: run(ftcore.RangeSet), "pure": lambda: run(_pure.RangeSet)}, repeat
        )
        a, b = summary(res["ftcore"], n), summary(res["pure"], n)
        rows.append(
            {
                "bench": f"RangeSet.add, {order}, {n} inserts",
                "unit": "inserts/s",
                "ftcore": a,
                "baseline": b,
                "baseline_name": "pure-Python twin",
                "ratio": a["median"] / b["median"],
            }
        )
    return rows


def bench_place(total: int, seg: int, shuffle: bool, repeat: int, tmp: Path) -> dict[str, object]:
    data = os.urandom(total)
    offsets = list(range(0, total, seg))
    if shuffle:
        random.Random(2).shuffle(offsets)
    view = memoryview(data)

    def ours() -> float:
        path = tmp / "asm"
        path.unlink(missing_ok=True)
        with ftcore.Assembler(path) as a:
            t0 = time.perf_counter()
            for off in offsets:
                a.place(off, view[off : off + seg])
            digest = a.digest(total)
            dt = time.perf_counter() - t0
        assert digest == expected
        return dt

    def hash_only() -> float:
        t0 = time.perf_counter()
        h = hashlib.sha256()
        for off in range(0, total, seg):
            h.update(view[off : off + seg])
        h.digest()
        return time.perf_counter() - t0

    def pwrite_hashlib() -> float:
        # what plain Python does: pwrite each segment, hash the whole file at fin
        path = tmp / "naive"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            t0 = time.perf_counter()
            for off in offsets:
                os.pwrite(fd, view[off : off + seg], off)
            h = hashlib.sha256()
            pos = 0
            while pos < total:
                chunk = os.pread(fd, MiB, pos)
                h.update(chunk)
                pos += len(chunk)
            dt = time.perf_counter() - t0
        finally:
            os.close(fd)
        assert h.digest() == expected
        return dt

    expected = hashlib.sha256(data).digest()
    res = interleaved(
        {"ftcore": ours, "hashlib": hash_only, "pwrite+hashlib": pwrite_hashlib}, repeat
    )
    a = summary(res["ftcore"], total / MiB)
    h = summary(res["hashlib"], total / MiB)
    n = summary(res["pwrite+hashlib"], total / MiB)
    order = "shuffled" if shuffle else "in order"
    return {
        "bench": f"Assembler.place + digest, {seg // 1024} KiB segments, {order}, "
        f"{total // MiB} MiB",
        "unit": "MiB/s",
        "ftcore": a,
        "baseline": h,
        "baseline_name": "hashlib SHA-256 alone (the floor)",
        "ratio": a["median"] / h["median"],
        "naive": n,
        "ratio_vs_naive": a["median"] / n["median"],
    }


def bench_rolling(total: int, chunk: int, repeat: int) -> dict[str, object]:
    data = os.urandom(total)
    view = memoryview(data)

    def run(factory: Callable[[], object]) -> float:
        h = factory()
        upd = h.update  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        for off in range(0, total, chunk):
            upd(view[off : off + chunk])
        h.digest()  # type: ignore[attr-defined]
        return time.perf_counter() - t0

    res = interleaved(
        {"ftcore": lambda: run(ftcore.RollingSha256), "hashlib": lambda: run(hashlib.sha256)},
        repeat,
    )
    a, b = summary(res["ftcore"], total / MiB), summary(res["hashlib"], total / MiB)
    return {
        "bench": f"RollingSha256.update, {chunk // 1024} KiB chunks, {total // MiB} MiB",
        "unit": "MiB/s",
        "ftcore": a,
        "baseline": b,
        "baseline_name": "hashlib.sha256",
        "ratio": a["median"] / b["median"],
    }


def rehash_file(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.digest()


def bench_digest(sizes: list[int], repeat: int, tmp: Path) -> list[dict[str, object]]:
    """Cost of digest() after an in-order upload, against re-hashing the file (the baseline)."""
    rows: list[dict[str, object]] = []
    seg = 1 * MiB
    block = os.urandom(seg)
    for size in sizes:
        path = tmp / "digest"
        path.unlink(missing_ok=True)
        with ftcore.Assembler(path) as a:
            for off in range(0, size, seg):
                a.place(off, block)
            state = a.dumps()
        ours: list[float] = []
        rehash: list[float] = []
        for _ in range(repeat):
            with ftcore.Assembler(path, state) as a:
                t0 = time.perf_counter()
                a.digest(size)
                ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rehash_file(path)
            rehash.append(time.perf_counter() - t0)
        rows.append(
            {
                "bench": f"digest() after in-order upload, {size // MiB} MiB",
                "unit": "ms",
                "ftcore": {
                    "median": statistics.median(ours) * 1e3,
                    "min": min(ours) * 1e3,
                    "max": max(ours) * 1e3,
                },
                "baseline": {
                    "median": statistics.median(rehash) * 1e3,
                    "min": min(rehash) * 1e3,
                    "max": max(rehash) * 1e3,
                },
                "baseline_name": "re-hash the file (page cache)",
                "ratio": statistics.median(rehash) / statistics.median(ours),
            }
        )
        path.unlink()
    return rows


def fmt(stat: dict[str, float]) -> str:
    return f"{stat['median']:.4g} ({stat['min']:.3g}..{stat['max']:.3g})"


def to_markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| benchmark | unit | ftcore median (spread) | baseline | baseline median (spread) "
        "| ratio |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = f"{r['ratio']:.2f}"
        if "ratio_vs_naive" in r:
            ratio += f" (vs pwrite+hashlib: {r['ratio_vs_naive']:.2f})"
        lines.append(
            f"| {r['bench']} | {r['unit']} | {fmt(r['ftcore'])} | {r['baseline_name']} "  # type: ignore[arg-type]
            f"| {fmt(r['baseline'])} | {ratio} |"  # type: ignore[arg-type]
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, 3 repetitions")
    p.add_argument("--repeat", type=int, default=None, help="repetitions (default 5, quick 3)")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="output directory")
    args = p.parse_args(argv)
    if ftcore.IMPLEMENTATION != "cython":
        print("ftcore's compiled kernels are not loaded; nothing to measure", file=sys.stderr)
        return 2
    repeat = args.repeat or (3 if args.quick else 5)
    total = 64 * MiB if args.quick else 256 * MiB
    digest_sizes = [MiB, 64 * MiB] if args.quick else [MiB, 64 * MiB, 1024 * MiB]
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="ftbench-") as d:
        tmp = Path(d)
        rows += bench_rangeset(20_000 if args.quick else 200_000, repeat)
        for seg in (4 * 1024, 64 * 1024, MiB):
            for shuffle in (False, True):
                rows.append(bench_place(total, seg, shuffle, repeat, tmp))
                print(to_markdown(rows[-1:]).splitlines()[-1], flush=True)
        rows.append(bench_rolling(total, 64 * 1024, repeat))
        rows += bench_digest(digest_sizes, repeat, tmp)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "repeat": repeat,
        "debug_build": ftcore.DEBUG,
    }
    (args.out / "kernels.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = to_markdown(rows)
    (args.out / "kernels.md").write_text(md)
    print()
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

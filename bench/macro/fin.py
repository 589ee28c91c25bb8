"""Scenario 2: fin latency for in-order files of 1 MiB to 1 GiB.

ftserver: one device uploads one file in order (64 KiB segments, whole-file SHA-256 given at
fin) and the load generator times fin from its PUBLISH to its PUBACK, which ftserver holds
until the file is verified and exported. Baseline (d), in the same repetition: the same file
stored one segment per file (outside the timing), then assembled by concatenation at fin with
its SHA-256 computed on the way (:func:`bench.baselines.concat.assemble`), which is what
EMQX's storage and the naive subscriber do.
"""

from __future__ import annotations

import shutil

from bench.baselines.concat import timed_assemble, write_segments
from bench.loadgen.content import Content
from bench.loadgen.spec import KiB, LoadSpec, MiB, SizeDist
from bench.macro.common import Row, Settings, attempt, stop_all
from bench.macro.runner import run_load
from bench.macro.services import FtServer

NAME = "fin"
SEGMENT = 64 * KiB


def sizes(quick: bool) -> list[int]:
    return [MiB, 64 * MiB] if quick else [MiB, 16 * MiB, 256 * MiB, 1024 * MiB]


def case_name(size: int) -> str:
    return f"{size // 1024 // MiB} GiB file" if size >= 1024 * MiB else f"{size // MiB} MiB file"


def run(settings: Settings) -> list[Row]:
    wd = settings.workdir / NAME
    server = FtServer(wd / "ftserver", workers=settings.workers, window=settings.window)
    content = Content()
    rows: list[Row] = []
    try:
        server.start()
        for size in sizes(settings.quick):
            name = case_name(size)
            settings.log(f"{NAME}: {name}")
            ours = Row(NAME, name, "ftserver")
            concat = Row(NAME, name, "concat-at-fin")
            rows += [ours, concat]
            for rep in range(settings.repeat):
                spec = LoadSpec(
                    devices=1,
                    files=1,
                    file_size=SizeDist(size, size),
                    segment=SEGMENT,
                    window=settings.window,
                    tag=settings.tag("f", "ft"),
                )

                def upload(spec: LoadSpec = spec) -> dict[str, float]:
                    try:
                        r = run_load(server, spec)
                    finally:
                        server.reset()
                    return {"fin_ms": r["fin_ms"]["median"], "upload_MBps": r["MBps"]}

                def assemble(size: int = size) -> dict[str, float]:
                    seg_dir = wd / "segments"
                    out = wd / "concat-out" / "file.bin"
                    write_segments(seg_dir, content, size, SEGMENT)
                    try:
                        seconds = timed_assemble(seg_dir, size, out)
                    finally:
                        shutil.rmtree(seg_dir, ignore_errors=True)
                        shutil.rmtree(out.parent, ignore_errors=True)
                    return {"fin_ms": seconds * 1e3}

                attempt(ours, settings, f"ftserver #{rep + 1}", upload)
                attempt(concat, settings, f"concat-at-fin #{rep + 1}", assemble)
    finally:
        stop_all([server])
    return rows

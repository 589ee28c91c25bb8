"""Scenario 1: ingest throughput at 4 KiB, 64 KiB and 1 MiB segments, 1 and 8 uploaders.

Each uploader (one device, one connection) uploads files back to back for a fixed time (sync
mode, QoS 1, a window of unacknowledged segments, whole-file SHA-256 at fin): ftserver, and in
the same repetition the baselines: Mosquitto ingesting the same publishes (no subscriber),
the naive Mosquitto + aiomqtt subscriber, the same bytes into a discarding uvloop server (raw
TCP), and the same files by HTTP PUT. Throughput counts the bytes of files whose fin
succeeded (and whose export was then verified), over the time until the last one did.
"""

from __future__ import annotations

from bench.loadgen.spec import KiB, LoadSpec, MiB, SizeDist
from bench.macro.common import Row, Settings, attempt, stop_all, throughput_metrics
from bench.macro.runner import run_load
from bench.macro.services import Discard, FtServer, HttpUpload, Mosquitto, Naive, Service

NAME = "throughput"


def file_size(segment: int) -> int:
    """Files of 256 segments, between 4 MiB and 64 MiB."""
    return min(max(segment * 256, 4 * MiB), 64 * MiB)


def cases(quick: bool) -> list[tuple[int, int, tuple[str, ...]]]:
    """(segment, uploaders, targets) of each case."""
    every = ("ftserver", "mosquitto", "naive", "raw", "http")
    if quick:
        return [(64 * KiB, 8, every), (4 * KiB, 8, ("ftserver", "mosquitto"))]
    return [(seg, n, every) for seg in (4 * KiB, 64 * KiB, MiB) for n in (1, 8)]


def case_name(segment: int, uploaders: int) -> str:
    seg = f"{segment // MiB} MiB" if segment >= MiB else f"{segment // KiB} KiB"
    return f"{seg} segments, {uploaders} uploader{'s' if uploaders > 1 else ''}"


def run(settings: Settings) -> list[Row]:
    wd = settings.workdir / NAME
    w = settings.window
    services: dict[str, Service] = {
        "ftserver": FtServer(wd / "ftserver", workers=settings.workers, window=w),
        "mosquitto": Mosquitto(wd / "mosquitto", window=w),
        "naive": Naive(wd / "naive", window=w),
        "raw": Discard(wd / "raw"),
        "http": HttpUpload(wd / "http"),
    }
    duration = 1.5 if settings.quick else 4.0
    rows: list[Row] = []
    try:
        for s in services.values():
            s.start()
        for segment, uploaders, targets in cases(settings.quick):
            name = case_name(segment, uploaders)
            settings.log(f"{NAME}: {name}")
            size = file_size(segment)
            case_rows = {t: Row(NAME, name, t) for t in targets}
            rows += case_rows.values()
            for rep in range(settings.repeat):
                for t in targets:
                    svc = services[t]
                    spec = LoadSpec(
                        devices=uploaders,
                        file_size=SizeDist(size, size),
                        duration=duration,
                        segment=segment,
                        window=w,
                        tag=settings.tag("t", t),
                    )

                    def one(svc: Service = svc, spec: LoadSpec = spec) -> dict[str, float]:
                        try:
                            return throughput_metrics(run_load(svc, spec))
                        finally:
                            svc.reset()

                    attempt(case_rows[t], settings, f"{t} #{rep + 1}", one)
    finally:
        stop_all(list(services.values()))
    return rows

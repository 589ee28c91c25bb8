"""Relay mode (issue 14): what putting ftserver in front of the broker costs.

Two cases, each against a baseline measured in the same repetitions (interleaved):

- **telemetry**: QoS 1 messages of 100 bytes from 8 devices, each with a window of unacknowledged
  ones, through ftserver (``--upstream``) to Mosquitto, against the same load straight to
  Mosquitto. A subscriber on Mosquitto checks that every message acknowledged with 0x00 arrived;
  the rate is those messages per second (:mod:`bench.loadgen.telemetry`). Server CPU: ftserver's
  processes and Mosquitto's together (relay) or Mosquitto's (direct).
- **ingest**: 64 KiB segments from 8 uploaders (the throughput scenario's case) into ftserver in
  relay mode, against ftserver standalone. File transfer is handled by ftserver in both: the
  relay must not slow it down.

A relay that does not deliver telemetry to the broker (PUBACK 0x10, nothing at the subscriber:
relay mode not available in this build) makes the repetition fail with that reason, so the
ratio is "not measured" rather than meaningless.
"""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.loadgen.spec import KiB, LoadSpec, SizeDist
from bench.macro.common import Row, Settings, attempt, stop_all, throughput_metrics
from bench.macro.procstat import Sampler
from bench.macro.runner import Loadgen, LoadgenFailed, run_load
from bench.macro.services import FtServer, Mosquitto, Service
from bench.macro.throughput import file_size

NAME = "relay"
TELEMETRY = "telemetry QoS 1, 100 B, 8 devices"
INGEST = "64 KiB segments, 8 uploaders"
DEVICES = 8
MESSAGE = 100
RUN_TIMEOUT = 120.0


class RelayFtServer(FtServer):
    """ftserver in relay mode in front of ``upstream`` (a started :class:`Mosquitto`)."""

    label = "ftserver-relay"

    def __init__(self, workdir: Path, upstream: Mosquitto, *, workers: int, window: int) -> None:
        super().__init__(workdir, workers=workers, window=window)
        self.upstream = upstream

    def start(self, port: int = 0) -> RelayFtServer:
        self.extra = ("--upstream", f"mqtt://127.0.0.1:{self.upstream.port}")
        super().start(port)
        return self


def telemetry_run(
    service: Service, broker: Mosquitto, tag: str, duration: float, window: int
) -> dict[str, float]:
    """One telemetry load against ``service`` (devices) with the subscriber on ``broker``;
    CPU is measured over the service's processes and the broker's (once if the same)."""
    argv = [
        sys.executable, "-m", "bench.loadgen.telemetry",
        "--port", str(service.port), "--sub-port", str(broker.port),
        "--devices", str(DEVICES), "--size", str(MESSAGE), "--window", str(window),
        "--duration", str(duration), "--prefix", f"bench/{tag}",
    ]  # fmt: skip

    def pids() -> list[int]:
        return sorted(set(service.pids()) | set(broker.pids()))

    sampler = Sampler(pids, service.name_of)
    with ExitStack() as stack:
        err = stack.enter_context(open(service.workdir / "telemetry.err", "a"))
        gen = Loadgen(None, err, argv)
        started = False
        try:
            gen.expect("READY", RUN_TIMEOUT)
            sampler.start()
            started = True
            gen.go()
            result: dict[str, Any] = json.loads(gen.get(duration + RUN_TIMEOUT))
        finally:
            usage = sampler.stop() if started else None
            gen.kill()
    assert usage is not None
    if not result["ok"]:
        codes = ", ".join(f"{k}: {v}" for k, v in result["other_codes"].items()) or "none"
        if result["acked_ok"] == 0 and service is not broker:
            raise LoadgenFailed(
                f"relay mode not available: no message reached the broker's subscriber "
                f"({result['delivered']} delivered; PUBACK codes other than 0x00: {codes})"
            )
        raise LoadgenFailed(
            f"{service.label}: {result['acked_ok']} acknowledged with 0x00 but "
            f"{result['delivered']} delivered (other codes: {codes})"
        )
    server = asdict(usage)
    return {
        "msg_per_s": result["msg_per_s"],
        "delivered": result["delivered"],
        "elapsed_s": result["elapsed"],
        "server_cpu_s": server["cpu_s"],
        "server_cpu_us_per_msg": 1e6 * server["cpu_s"] / max(1, result["acked_ok"]),
        "server_rss_peak_MB": server["rss_peak"] / 1e6,
    }


def run(settings: Settings) -> list[Row]:
    wd = settings.workdir / NAME
    w = settings.window
    broker = Mosquitto(wd / "mosquitto", window=w)
    standalone = FtServer(wd / "ftserver", workers=settings.workers, window=w)
    relay = RelayFtServer(wd / "relay", broker, workers=settings.workers, window=w)
    duration = 2.0 if settings.quick else 5.0
    ingest_s = 1.5 if settings.quick else 4.0
    rows: list[Row] = []
    tele = {t: Row(NAME, TELEMETRY, t) for t in ("ftserver-relay", "mosquitto")}
    ingest = {t: Row(NAME, INGEST, t) for t in ("ftserver-relay", "ftserver")}
    rows += [*tele.values(), *ingest.values()]
    try:
        broker.start()
        standalone.start()
        relay.start()
        for rep in range(settings.repeat):
            settings.log(f"{NAME}: {TELEMETRY} #{rep + 1}")
            for target, svc in (("ftserver-relay", relay), ("mosquitto", broker)):

                def tel(svc: Service = svc, target: str = target) -> dict[str, float]:
                    return telemetry_run(svc, broker, settings.tag("rt", target), duration, w)

                attempt(tele[target], settings, f"{target} #{rep + 1}", tel)
            settings.log(f"{NAME}: {INGEST} #{rep + 1}")
            for target, ft in (("ftserver-relay", relay), ("ftserver", standalone)):
                size = file_size(64 * KiB)
                spec = LoadSpec(
                    devices=8,
                    file_size=SizeDist(size, size),
                    duration=ingest_s,
                    segment=64 * KiB,
                    window=w,
                    tag=settings.tag("ri", target),
                )

                def ing(ft: FtServer = ft, spec: LoadSpec = spec) -> dict[str, float]:
                    try:
                        return throughput_metrics(run_load(ft, spec))
                    finally:
                        ft.reset()

                attempt(ingest[target], settings, f"{target} #{rep + 1}", ing)
    finally:
        stop_all([relay, standalone, broker])
    return rows

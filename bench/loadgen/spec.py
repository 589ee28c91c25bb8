"""What a load run does: the parameters of the load generator, and their command line."""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import re
from dataclasses import dataclass
from typing import Literal

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

Target = Literal["ftserver", "mosquitto", "naive", "raw", "http"]
TARGETS: tuple[Target, ...] = ("ftserver", "mosquitto", "naive", "raw", "http")
Checksum = Literal["none", "file", "segment", "both"]

_UNITS = {"": 1, "b": 1, "k": KiB, "kib": KiB, "m": MiB, "mib": MiB, "g": GiB, "gib": GiB}
_UNITS |= {"kb": 1000, "mb": 1000**2, "gb": 1000**3}


def parse_size(text: str) -> int:
    """``"64KiB"``, ``"1MiB"``, ``"4096"``, ``"1.5GB"`` → bytes."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_size(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


@dataclass(frozen=True, slots=True)
class SizeDist:
    """File sizes: fixed (``"64MiB"``), uniform (``"1KiB..64KiB"``) or log-uniform
    (``"1KiB..64KiB:log"``)."""

    low: int
    high: int
    log: bool = False

    @classmethod
    def parse(cls, text: str) -> SizeDist:
        log = text.endswith(":log")
        body = text.removesuffix(":log")
        if ".." in body:
            lo, hi = (parse_size(p) for p in body.split("..", 1))
        else:
            lo = hi = parse_size(body)
        if not 0 < lo <= hi:
            raise ValueError(f"bad size range {text!r}")
        return cls(lo, hi, log)

    def draw(self, rng: random.Random) -> int:
        if self.low == self.high:
            return self.low
        if self.log:
            return int(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return rng.randint(self.low, self.high)

    @property
    def mean(self) -> float:
        if self.low == self.high:
            return float(self.low)
        if self.log:
            return (self.high - self.low) / math.log(self.high / self.low)
        return (self.low + self.high) / 2

    def __str__(self) -> str:
        if self.low == self.high:
            return format_size(self.low)
        return f"{format_size(self.low)}..{format_size(self.high)}" + (":log" if self.log else "")


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One load run. Work is ``files`` per device, or ``total_bytes`` shared out over the
    devices, or new files until ``duration`` seconds have passed (a started file is finished)."""

    target: Target = "ftserver"
    host: str = "127.0.0.1"
    port: int = 1883
    devices: int = 8
    file_size: SizeDist = SizeDist(64 * MiB, 64 * MiB)
    files: int = 0
    total_bytes: int = 0
    duration: float = 0.0
    segment: int = 64 * KiB
    window: int = 64
    mode: Literal["sync", "async"] = "sync"
    checksum: Checksum = "file"
    mqtt_version: Literal[4, 5] = 5
    #: mean seconds between forced disconnects of each device (0: none)
    churn: float = 0.0
    #: pause before a dropped device reconnects
    churn_pause: float = 0.05
    #: give up on a device that cannot reconnect for this long (a restart must fit in it)
    reconnect_timeout: float = 30.0
    #: connections opened per second (0: as fast as the server accepts, 256 at a time)
    ramp: float = 0.0
    #: load generator processes (devices are shared out over them)
    procs: int = 1
    #: prefix of client ids and file ids (distinct per run: exports never collide)
    tag: str = "lg"
    seed: int = 1
    #: directory to check the exports in (the server's data dir, the baseline's export dir)
    verify_dir: str = ""
    #: also compare the exported bytes (SHA-256), not only the size
    verify_content: bool = False
    #: debugging aid and self-test: announce this many bytes more (or less) at fin
    fin_size_delta: int = 0
    #: start only this many segments per file, then keep the transfers open (restart scenario)
    stop_after: int = 0

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}")
        if not (self.files or self.total_bytes or self.duration or self.stop_after):
            raise ValueError("give files, total_bytes, duration or stop_after")
        if self.segment <= 0 or self.window <= 0 or self.devices <= 0 or self.procs <= 0:
            raise ValueError("segment, window, devices and procs must be positive")

    @property
    def uses_mqtt(self) -> bool:
        return self.target in ("ftserver", "mosquitto", "naive")

    @property
    def fin_by_document(self) -> bool:
        """Whether a fin's final result comes as a response document, not in its PUBACK."""
        return self.target == "naive" or self.mode == "async" or self.mqtt_version == 4

    @property
    def ok_codes(self) -> frozenset[int]:
        # Mosquitto answers 0x10 (no matching subscribers) when nobody subscribed: success
        return frozenset({0, 0x10}) if self.target == "mosquitto" else frozenset({0})

    def replace(self, **changes: object) -> LoadSpec:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def to_argv(self) -> list[str]:
        """The command line that rebuilds this spec (``from_args(parser().parse_args(...))``)."""
        argv: list[str] = []
        default = LoadSpec(files=1)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "files" and value == getattr(default, f.name):
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                if value:
                    argv.append(flag)
            else:
                argv += [flag, str(value)]
        return argv


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description="Simulate many devices uploading files over MQTT (EMQX file transfer), "
        "raw TCP or HTTP PUT, and verify that every upload succeeded.",
    )
    p.add_argument("--target", choices=TARGETS, default="ftserver")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--devices", type=int, default=8, help="simulated devices (connections)")
    p.add_argument("--file-size", default="64MiB", help="SIZE, LO..HI or LO..HI:log")
    p.add_argument("--files", type=int, default=0, help="files per device")
    p.add_argument("--total-bytes", type=parse_size, default=0, help="shared out over devices")
    p.add_argument("--duration", type=float, default=0.0, help="seconds (start no file later)")
    p.add_argument("--segment", type=parse_size, default=64 * KiB)
    p.add_argument("--window", type=int, default=64, help="unacknowledged commands per device")
    p.add_argument("--mode", choices=["sync", "async"], default="sync")
    p.add_argument("--checksum", choices=["none", "file", "segment", "both"], default="file")
    p.add_argument("--mqtt-version", type=int, choices=[4, 5], default=5)
    p.add_argument("--churn", type=float, default=0.0, help="mean seconds between disconnects")
    p.add_argument("--churn-pause", type=float, default=0.05)
    p.add_argument("--reconnect-timeout", type=float, default=30.0)
    p.add_argument("--ramp", type=float, default=0.0, help="connections per second (0: max)")
    p.add_argument("--procs", type=int, default=1, help="load generator processes")
    p.add_argument("--tag", default="lg")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--verify-dir", default="")
    p.add_argument("--verify-content", action="store_true")
    p.add_argument("--fin-size-delta", type=int, default=0)
    p.add_argument("--stop-after", type=int, default=0)
    p.add_argument(
        "--sync-stdin",
        action="store_true",
        help="print READY once connected, wait for a GO line on stdin before uploading",
    )
    return p


def from_args(ns: argparse.Namespace) -> LoadSpec:
    values = {
        f.name: getattr(ns, f.name) for f in dataclasses.fields(LoadSpec) if hasattr(ns, f.name)
    }
    values["file_size"] = SizeDist.parse(ns.file_size)
    return LoadSpec(**values)

"""State one load generator process shares between its devices."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator

from bench.loadgen.content import Content
from bench.loadgen.spec import LoadSpec
from bench.loadgen.stats import Stats


class Context:
    def __init__(self, spec: LoadSpec, shard_devices: int) -> None:
        self.spec = spec
        self.content = Content(spec.seed)
        self.stats = Stats(devices=shard_devices)
        self.loop = asyncio.get_running_loop()
        #: set when uploads may go beyond ``stop_after`` segments (restart scenario)
        self.released = spec.stop_after == 0
        self.held = 0
        self.all_held: asyncio.Future[None] = self.loop.create_future()
        self.shard_devices = shard_devices
        self.deadline = 0.0  # monotonic time after which no new file starts (duration mode)
        self._on_release: list[Callable[[], None]] = []

    def start(self) -> None:
        if self.spec.duration:
            self.deadline = time.monotonic() + self.spec.duration

    def files(self, index: int) -> Iterator[int]:
        """Sizes of the files device ``index`` uploads, in order (deterministic per seed)."""
        spec = self.spec
        rng = random.Random(spec.seed * 1_000_003 + index)
        if spec.files:
            for _ in range(spec.files):
                yield spec.file_size.draw(rng)
            return
        if spec.total_bytes:
            share = spec.total_bytes // spec.devices + (index < spec.total_bytes % spec.devices)
            while share > 0:
                size = min(spec.file_size.draw(rng), share)
                share -= size
                yield size
            return
        if spec.stop_after and not spec.duration:
            yield spec.file_size.draw(rng)
            return
        while time.monotonic() < self.deadline:
            yield spec.file_size.draw(rng)

    def device_held(self, resume: Callable[[], None] | None) -> None:
        """A device reached ``stop_after`` (or finished); ``resume`` continues it."""
        self.held += 1
        if resume is not None:
            self._on_release.append(resume)
        if self.held >= self.shard_devices and not self.all_held.done():
            self.all_held.set_result(None)

    def release(self) -> None:
        self.released = True
        self.stats.wire_at_release = self.stats.wire_bytes
        callbacks, self._on_release = self._on_release, []
        for resume in callbacks:
            resume()

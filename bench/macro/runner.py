"""One measured run: load generator processes against a service, with the service's CPU,
RSS and reads measured over exactly the upload phase (from GO to the last result)."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict
from typing import Any

from bench.loadgen.spec import LoadSpec
from bench.macro.procstat import Sampler
from bench.macro.services import Service

RUN_TIMEOUT = 900.0
GiB = 1 << 30


class LoadgenFailed(RuntimeError):
    pass


class Loadgen:
    """A load generator process driven through its READY/HELD/GO handshake (or another
    module's, e.g. ``bench.loadgen.stall``: ``STALLED {...}``, then GO)."""

    def __init__(self, spec: LoadSpec | None, err: Any, argv: list[str] | None = None) -> None:
        if argv is None:
            assert spec is not None
            argv = [sys.executable, "-m", "bench.loadgen", *spec.to_argv(), "--sync-stdin"]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
        )
        self.q: queue.Queue[str | None] = queue.Queue()
        self._pumping = threading.Thread(target=self._pump, daemon=True)
        self._pumping.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.q.put(line)
        self.q.put(None)

    def get(self, timeout: float) -> str:
        try:
            line = self.q.get(timeout=timeout)
        except queue.Empty:
            raise LoadgenFailed(f"load generator silent for {timeout}s") from None
        if line is None:
            raise LoadgenFailed(f"load generator exited ({self.proc.wait()})")
        return line

    def expect(self, word: str, timeout: float) -> None:
        line = self.get(timeout)
        if line.strip() != word:
            raise LoadgenFailed(f"load generator said {line!r}, expected {word}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("GO\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._pumping.join(5)  # the pipe ends with the process
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def run_loads(
    service: Service,
    specs: list[LoadSpec],
    *,
    on_held: Callable[[], dict[str, Any]] | None = None,
    timeout: float = RUN_TIMEOUT,
    allow_errors: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run every spec at once against ``service`` (all connect, then all start together);
    returns each load generator's result and the service's usage, plus what ``on_held``
    returned (called once every generator reports HELD, for specs with ``stop_after``).
    Raises :class:`LoadgenFailed` when an upload failed, unless ``allow_errors`` (then the
    results carry the error count and samples)."""
    specs = [
        s.replace(port=service.port, target=service.target, verify_dir=service.verify_dir)
        for s in specs
    ]
    held = any(s.stop_after for s in specs)
    sampler = Sampler(service.pids, service.name_of)
    started = False
    with ExitStack() as stack:
        err = stack.enter_context(open(service.workdir / "loadgen.err", "a"))
        gens = [Loadgen(s, err) for s in specs]
        try:
            for g in gens:
                g.expect("READY", timeout)
            sampler.start()
            started = True
            t_go = time.time()
            for g in gens:
                g.go()
            extra: dict[str, Any] = {}
            if held:
                for g in gens:
                    g.expect("HELD", timeout)
                assert on_held is not None
                extra = on_held()
                for g in gens:
                    g.go()
            results = [json.loads(g.get(timeout)) for g in gens]
        finally:
            usage = sampler.stop() if started else None
            for g in gens:
                g.kill()
    assert usage is not None
    server = asdict(usage)
    server["t_go"] = t_go
    server.update(extra)
    failed = [r for r in results if not r["ok"]]
    if failed and not allow_errors:
        r = failed[0]
        raise LoadgenFailed(
            f"{service.label}: {r['errors']} error(s), {r['files']} file(s) done: "
            f"{r['error_samples'][:5]} (see {service.workdir}/loadgen.err)"
        )
    return results, server


def run_load(
    service: Service, spec: LoadSpec, timeout: float = RUN_TIMEOUT, allow_errors: bool = False
) -> dict[str, Any]:
    """One load generator: its result, with the service's usage under ``server`` and the
    server's CPU seconds per GiB uploaded."""
    [result], server = run_loads(service, [spec], timeout=timeout, allow_errors=allow_errors)
    result["server"] = server
    gib = result["bytes"] / GiB
    result["server_cpu_s_per_GiB"] = server["cpu_s"] / gib if gib else 0.0
    return result

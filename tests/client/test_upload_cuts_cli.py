"""The uploader's done-when: ``ftserver upload`` of a large file through a proxy that cuts the
connection every few seconds arrives byte-identical, resending at most 10 % extra data.

On loopback an upload runs at a few hundred MiB/s, so that 200 MiB would be done before the
first cut: the proxy also limits the link's rate (what a cut costs is the data in flight,
which depends on the link; see ftserver/client/flight.py). Size, rate and cut interval come
from the environment so that the figures in docs/client.md can be measured by hand::

    FTSERVER_CUT_UPLOAD_MIB=200 FTSERVER_CUT_RATE_MIB=16 FTSERVER_CUT_EVERY=2,4 \\
        .venv/bin/python -m pytest tests/client/test_upload_cuts_cli.py -s

Defaults: 200 MiB at 32 MiB/s, a cut (close or reset, at random) every 1 to 2 s: about eight
seconds, several cuts. The test asserts that cuts did happen, so a run that finished first
fails instead of passing vacuously. (``FTSERVER_CUT_RATE_MIB=0``: no rate limit.)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from clienthelpers import exported, sha256_of, write_random
from faultproxy import FaultProxy

from ftharness import ServerProcess

MiB = 1024 * 1024
SIZE_MIB = int(os.environ.get("FTSERVER_CUT_UPLOAD_MIB", "200"))
RATE_MIB = float(os.environ.get("FTSERVER_CUT_RATE_MIB", "32"))
EVERY = tuple(float(x) for x in os.environ.get("FTSERVER_CUT_EVERY", "1,2").split(","))


def test_cli_upload_through_a_proxy_that_cuts_every_few_seconds(
    server: ServerProcess, tmp_path: Path
) -> None:
    path = tmp_path / "large.bin"
    size = SIZE_MIB * MiB
    digest = write_random(path, size, seed=200)
    assert len(EVERY) == 2
    proxy = FaultProxy(
        server.mqtt_port,
        faults=("close", "reset"),
        every=(EVERY[0], EVERY[1]),
        rate=int(RATE_MIB * MiB) or None,
    )

    async def main() -> tuple[int, str, str, float]:
        port = await proxy.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ftserver", "upload", str(path),
                "--port", str(port), "--client-id", "cuts-cli",
                "--state", str(tmp_path / "state.json"), "--progress", "log",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await proc.communicate()
            assert proc.returncode is not None
            return proc.returncode, out.decode(), err.decode(), loop.time() - t0
        finally:
            await proxy.stop()

    rc, out, err, elapsed = asyncio.run(main())
    assert rc == 0, err
    summary = json.loads(out)
    assert sha256_of(exported(server, "cuts-cli", summary["fileid"], "large.bin")) == digest
    cuts = sum(proxy.struck.values())
    extra = summary["bytes_resent"] / size
    wire = proxy.up_bytes / size - 1
    print(
        f"\n{SIZE_MIB} MiB at <= {RATE_MIB:g} MiB/s through {cuts} cuts ({dict(proxy.struck)}) "
        f"in {elapsed:.1f}s: "
        f"{summary['reconnects']} reconnects, resent {summary['bytes_resent']} bytes "
        f"({100 * extra:.2f} %), client-to-server bytes on the wire {100 * wire:+.2f} %"
    )
    assert cuts >= 1 and summary["reconnects"] >= 1
    assert extra <= 0.10
    assert wire <= 0.10
    assert not (tmp_path / "state.json").exists()

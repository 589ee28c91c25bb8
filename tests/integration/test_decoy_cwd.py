"""The installed server does not care what its current directory holds (issue 13, item 7).

A directory with folders called ``ftserver/`` and ``ftcore/`` (a source checkout whose extension
is not built in place, or just a user's folder) must not be imported instead of the installed
packages: not by the supervisor (started through the console script) and not by the workers it
starts with ``python -m``.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

from ftharness import FtClient, ServerProcess, find_export, metric, scrape

DECOY = "raise SystemExit('decoy {name} imported from the current directory')\n"


def test_server_ignores_decoy_packages_in_its_current_directory(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    for name in ("ftserver", "ftcore"):
        (cwd / name).mkdir(parents=True)
        (cwd / name / "__init__.py").write_text(DECOY.format(name=name))
        (cwd / name / "__main__.py").write_text(DECOY.format(name=name))
    srv = ServerProcess(tmp_path / "data", "--workers", "2")
    srv.argv0 = [str(Path(sys.executable).with_name("ftserver"))]
    srv.cwd = cwd
    srv.start()
    try:
        deadline = time.monotonic() + 20
        while metric(scrape(srv.http_port), "ftserver_workers_up") != 2:
            assert time.monotonic() < deadline, srv.stderr()
            time.sleep(0.1)
        data = hashlib.sha256(b"decoy").digest() * 1000
        client = FtClient(srv.mqtt_port, "decoy-client")
        try:
            assert client.upload("f1", data, segment=4096) == 0
        finally:
            client.close()
        assert find_export(srv.exports, "decoy-client", "f1", "file.bin").read_bytes() == data
    finally:
        assert srv.stop() == 0, srv.stderr()
    # (the client's id, "decoy-client", is in the transfer's log lines: look for the message)
    assert "imported from the current directory" not in srv.stderr()

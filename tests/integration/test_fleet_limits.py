"""A fleet larger than the server's descriptors (issue 13): a real server started with a low
``RLIMIT_NOFILE`` sizes its limits from it, says so in one log line, and answers every
command of more transfers than it can keep open with the truth: success, or 0x97 to resend.
And an init whose declared size exceeds ``max_file_size`` is cancelled at once (0x83).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from ftharness import FtClient, ServerProcess, find_export, metric, read_manifest, scrape

NOFILE = 256
#: files per client, all in flight at once: more transfers than the server keeps open
FILES = 6
CLIENTS = 30
#: how often a command answered 0x97 is resent before the test gives up
RESENDS = 200


def limited(argv0: list[str], nofile: int) -> list[str]:
    """``argv0`` run with RLIMIT_NOFILE set to ``nofile`` (soft and hard) in the child."""
    code = (
        "import resource, runpy, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile}))\n"
        "sys.argv = ['ftserver'] + sys.argv[1:]\n"
        "runpy.run_module('ftserver', run_name='__main__', alter_sys=True)\n"
    )
    assert argv0[-2:] == ["-m", "ftserver"]
    return [*argv0[:-2], "-c", code]


def resend(client: FtClient, topic: str, payload: bytes | str, codes: list[int]) -> int:
    """Send a command until its answer is not 0x97 (pause); every answer is recorded."""
    for _ in range(RESENDS):
        rc = client.command(topic, payload)
        codes.append(rc)
        if rc != 0x97:
            return rc
        time.sleep(0.05)
    raise AssertionError(f"{topic}: still 0x97 after {RESENDS} resends")


def test_more_transfers_than_descriptors_get_true_answers(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    srv = ServerProcess(tmp_path / "data", "--workers", "1")
    srv.argv0 = limited(srv.argv0, NOFILE)
    srv.start()
    try:
        log = srv.stderr()
        m = re.search(
            r"descriptors: limit (\d+); this process accepts at most (\d+) connections and "
            r"keeps at most (\d+) transfers open",
            log,
        )
        assert m is not None, log
        nofile, connections, open_transfers = map(int, m.groups())
        assert nofile == NOFILE
        assert connections + open_transfers < NOFILE
        assert open_transfers < CLIENTS * FILES  # more than it can keep open

        clients = [FtClient(srv.mqtt_port, f"fleet-{i}") for i in range(CLIENTS)]
        files = {
            (i, f): os.urandom(2000 + 37 * i + f) for i in range(CLIENTS) for f in range(FILES)
        }
        codes: list[int] = []
        for (i, f), data in files.items():  # every transfer started before any finishes
            name = json.dumps({"name": f"f{f}.bin", "size": len(data)})
            assert resend(clients[i], f"$file/f{f}/init", name, codes) == 0
        for (i, f), data in files.items():
            assert resend(clients[i], f"$file/f{f}/0", data[:1000], codes) == 0
        for (i, f), data in files.items():
            assert resend(clients[i], f"$file/f{f}/1000", data[1000:], codes) == 0
        fins: dict[tuple[int, int], int] = {}
        for (i, f), data in files.items():
            fins[(i, f)] = resend(clients[i], f"$file/f{f}/fin/{len(data)}", b"", codes)
        for c in clients:
            c.close()

        assert set(codes) <= {0x00, 0x97}, sorted(set(codes))
        for (i, f), data in files.items():
            path = find_export(srv.exports, f"fleet-{i}", f"f{f}", f"f{f}.bin")
            assert fins[(i, f)] == 0
            assert path.read_bytes() == data
            assert read_manifest(path)["checksum"] == hashlib.sha256(data).hexdigest().upper()

        samples = scrape(srv.http_port)
        assert metric(samples, "ftserver_open_transfers_closed_total", why="cache_full") > 0
        assert metric(samples, "ftserver_limit_hits_total", limit="server_busy") == codes.count(
            0x97
        )
        assert "internal_error" not in srv.stderr()
    finally:
        assert srv.stop() == 0, srv.stderr()


def test_init_size_beyond_max_file_size_is_file_too_large(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    cfg = tmp_path / "ftserver.toml"
    cfg.write_text('[limits]\nmax_file_size = "1MiB"\n')
    srv = make_server("--config", str(cfg))
    c = FtClient(srv.mqtt_port, "sized")
    try:
        too_big = json.dumps({"name": "big.bin", "size": (1 << 20) + 1})
        assert c.command("$file/big/init", too_big) == 0x83
        fits = json.dumps({"name": "ok.bin", "size": 1 << 20})
        assert c.command("$file/ok/init", fits) == 0
        assert c.command("$file/ok/0", b"x" * 10) == 0
        assert c.command("$file/ok/fin/10") == 0
    finally:
        c.close()
    assert not list((srv.data_dir / "staging").rglob("big"))  # nothing staged for it

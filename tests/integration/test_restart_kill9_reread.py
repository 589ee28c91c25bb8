"""kill -9 of a real server process in the middle of a large transfer: the restarted process
resumes it without reading the received bytes again (docs/performance.md, target 6).

What the restarted server reads is measured with ``/proc/<pid>/io`` ``rchar`` (every byte it
read, from files and sockets alike), from the moment it listens to the moment it answered the
first command of the transfer (which makes it recover the transfer from its journal).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

import pytest

from ftharness import FtClient, ServerProcess, find_export

MiB = 1 << 20
SEG = 64 * 1024
SIZE = 40 * MiB
RECEIVED = 30 * MiB + 5 * SEG


def rchar(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@pytest.mark.parametrize("durability", ["fast", "sync"])
def test_restart_after_kill9_reads_none_of_the_data(
    make_server: Callable[..., ServerProcess], cid: str, durability: str
) -> None:
    srv = make_server("--workers", "1", "--durability", durability)
    data = os.urandom(SIZE)
    offsets = list(range(0, SIZE, SEG))
    a = FtClient(srv.mqtt_port, cid)
    assert a.command("$file/big/init", json.dumps({"name": "big.bin", "size": SIZE})) == 0
    sent = [o for o in offsets if o < RECEIVED]
    for start in range(0, len(sent), 64):  # a window of 64 segments in flight
        mids = [a.publish(f"$file/big/{o}", data[o : o + SEG]) for o in sent[start : start + 64]]
        for mid in mids:
            assert a.wait_ack(mid) == 0
    assert srv.kill() == -9
    a.client.loop_stop()

    srv2 = make_server("--workers", "1", "--durability", durability, data=srv.data_dir)
    assert srv2.proc is not None
    pid = srv2.proc.pid
    before = rchar(pid)
    b = FtClient(srv2.mqtt_port, cid)
    fin = f"$file/big/fin/{SIZE}"
    assert b.command(fin) == 0x80  # incomplete: answered once the transfer was recovered
    assert b.doc_for(fin)["missing"] == [[RECEIVED, SIZE]]
    reread = rchar(pid) - before
    # the journal, the meta file and a few MQTT packets; not the 30 MiB received before
    assert reread < MiB, f"the restarted server read {reread} bytes"

    mids = [b.publish(f"$file/big/{o}", data[o : o + SEG]) for o in offsets if o >= RECEIVED]
    for mid in mids:
        assert b.wait_ack(mid) == 0
    assert b.command(f"{fin}/{hashlib.sha256(data).hexdigest()}") == 0
    b.close()
    assert find_export(srv2.exports, cid, "big", "big.bin").read_bytes() == data
    assert srv2.stop() == 0, srv2.stderr()

"""Smoke tests of the bench's load generator against real servers (a few MiB, no timings).

The load generator must report success only when every upload really succeeded: a server
that answers 0 but exports the wrong bytes, or refuses a fin, must make the run fail. These
tests check that, not speed (benchmarks are not unit tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.loadgen.run import run_load
from bench.loadgen.spec import KiB, LoadSpec, MiB, SizeDist, from_args, parser
from bench.macro import floors, stalled
from bench.macro.scale import FD_MARGIN, loadgen_procs
from bench.macro.services import FtServer, HttpUpload, Mosquitto, Naive, Service, free_port
from ftserver.mqtt import codec
from ftserver.mqtt.packets import Publish


@pytest.fixture(scope="module")
def ftserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtServer]:
    srv = FtServer(tmp_path_factory.mktemp("bench") / "ft", workers=1)
    srv.start()
    yield srv
    srv.stop()


def spec_for(srv: Service, tag: str, **changes: object) -> LoadSpec:
    base = LoadSpec(
        target=srv.target,
        port=srv.port,
        devices=2,
        files=2,
        file_size=SizeDist(MiB, MiB + 5000),
        segment=64 * KiB,
        tag=tag,
        verify_dir=srv.verify_dir,
        verify_content=True,
    )
    return base.replace(**changes)


def test_uploads_succeed_and_are_verified(ftserver: FtServer) -> None:
    stats = run_load(spec_for(ftserver, "ok"))
    assert stats.errors == 0, stats.error_samples
    assert stats.files == 4
    assert len(stats.exports) == 4
    assert stats.bytes == sum(size for *_, size in stats.exports)
    # the scale scenario's count of exports: on disk and through the HTTP API alike
    assert ftserver.exported_files() == ftserver.listed_files() >= 4


def test_churn_and_other_modes_succeed(ftserver: FtServer) -> None:
    for tag, changes in {
        "churn": {"churn": 0.005, "churn_pause": 0.005},
        "async": {"mode": "async", "checksum": "both"},
        "v311": {"mqtt_version": 4, "checksum": "segment"},
    }.items():
        stats = run_load(spec_for(ftserver, tag, **changes))
        assert stats.errors == 0, (tag, stats.error_samples)
        assert stats.files == 4, tag
        assert (stats.drops > 0) == (tag == "churn"), (tag, stats.drops)
        assert stats.reconnects == stats.drops, tag


def test_export_of_the_wrong_size_is_an_error(ftserver: FtServer) -> None:
    # fin announces one byte less: the server exports what it was told (reason 0), and only
    # the verification of the export can notice
    stats = run_load(spec_for(ftserver, "short", fin_size_delta=-1, checksum="none"))
    assert stats.errors == 4
    assert all("bytes, uploaded" in e for e in stats.error_samples)


def test_refused_fin_is_an_error(ftserver: FtServer) -> None:
    stats = run_load(spec_for(ftserver, "long", fin_size_delta=1))
    assert stats.files == 0
    assert stats.errors == 4
    assert all("reason 0x80" in e for e in stats.error_samples)
    assert stats.error_kinds == {"fin 0x80": 4}


def test_missing_export_is_an_error(ftserver: FtServer, tmp_path: Path) -> None:
    stats = run_load(spec_for(ftserver, "elsewhere").replace(verify_dir=str(tmp_path)))
    assert stats.errors == 4
    assert all(e.startswith("export missing") for e in stats.error_samples)
    assert stats.error_kinds == {"export missing": 4}


def test_refused_connections_are_counted_by_reason() -> None:
    # nothing listens there: every device fails to connect (after its retries)
    spec = LoadSpec(port=free_port(), devices=2, files=1, file_size=SizeDist(KiB, KiB), tag="no")
    stats = run_load(spec.replace(verify_dir="/nonexistent"))
    assert stats.files == 0
    assert stats.error_kinds.get("connect refused") == 2, stats.error_kinds


def test_scale_spreads_connections_over_enough_processes() -> None:
    import resource

    per_proc = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - FD_MARGIN
    for n in (10, 10_000, 3 * per_proc + 1):
        procs = loadgen_procs(n)
        assert procs >= 2
        assert -(-n // procs) <= per_proc, (n, procs)


def test_stalled_connections_are_held_and_measured(tmp_path: Path) -> None:
    # the stalled scenario's shape, tiny: 4 connections stop 1 MiB into a 2 MiB segment
    shape = stalled.Shape(
        connections=4, segment=2 * MiB, send=MiB, honest_size=2 * MiB, honest_segment=256 * KiB
    )
    srv = FtServer(tmp_path / "ft", workers=1).start()
    try:
        m = stalled.measure(srv, shape, "stall")
    finally:
        srv.stop()
    report = m["stall"]
    assert report["errors"] == 0, report["error_samples"]
    assert m["stalled"] == 4
    assert m["server_connections"] >= 4  # the server side holds them open
    assert report["open_end"] == 4  # still open when released: nobody closed them
    assert m["rss_before_MB"] > 1 and m["rss_stalled_MB"] > 1  # RSS was sampled
    assert m["honest_ok"] == 1.0 and m["honest_s"] > 0


def test_floors_are_measured(tmp_path: Path) -> None:
    got = floors.measure(tmp_path, size=256 * MiB)
    parts = ("sha256", "recycled_write", "receive", "pagecache_write")
    for name in parts:
        assert got[f"{name}_cpu_s_per_GiB"] > 0, got
    assert got["floor_cpu_s_per_GiB"] == pytest.approx(
        sum(got[f"{name}_cpu_s_per_GiB"] for name in parts[:3])
    )


def test_publish_headers_are_the_codecs() -> None:
    # the generator's headers must be what ftserver's own codec decodes
    header = codec.encode_publish_header(Publish("$file/f/0", b"x" * 10, 1, packet_id=7), 5)
    dec = codec.Decoder(1 << 20, protocol_level=5)
    dec.feed(header + b"x" * 10)
    packet = dec.next_packet()
    assert isinstance(packet, Publish) and bytes(packet.payload) == b"x" * 10


def test_command_line_round_trip() -> None:
    spec = LoadSpec(
        port=1,
        devices=3,
        file_size=SizeDist(KiB, 64 * KiB, log=True),
        duration=2.5,
        churn=0.5,
        checksum="both",
        mqtt_version=4,
    )
    assert from_args(parser().parse_args(spec.to_argv())) == spec


@pytest.mark.parametrize("kind", ["mosquitto", "naive", "http"])
def test_baselines_succeed(kind: str, tmp_path: Path) -> None:
    srv: Service = {"mosquitto": Mosquitto, "naive": Naive, "http": HttpUpload}[kind](tmp_path)
    srv.start()
    try:
        stats = run_load(spec_for(srv, kind, churn=0.005 if kind == "http" else 0.0))
    finally:
        srv.stop()
    assert stats.errors == 0, stats.error_samples
    assert stats.files == 4

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
from bench.macro.services import FtServer, HttpUpload, Mosquitto, Naive, Service
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


def test_missing_export_is_an_error(ftserver: FtServer, tmp_path: Path) -> None:
    stats = run_load(spec_for(ftserver, "elsewhere").replace(verify_dir=str(tmp_path)))
    assert stats.errors == 4
    assert all(e.startswith("export missing") for e in stats.error_samples)


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

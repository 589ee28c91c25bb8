"""Relay mode to a broker behind TLS with fixed credentials: a real Mosquitto with a TLS
listener that requires a client certificate and a password file, ftserver relaying to it.

(The behaviour of relay mode itself, against a plain Mosquitto, is in ``tests/relay/``.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from bench.baselines.mosquitto import find_mosquitto
from ftharness import FtClient, ServerProcess, metric, scrape

USER, PASSWORD = "ftserver-relay", "relay-pw-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, "mosquitto exited at start"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"mosquitto did not listen on {port}")


class Broker:
    def __init__(self, plain: int, tls: int, ca: trustme.CA) -> None:
        self.plain, self.tls, self.ca = plain, tls, ca


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Mosquitto on 127.0.0.1: a plain listener and a TLS one requiring a client certificate,
    both behind a password file."""
    d = tmp_path_factory.mktemp("mosquitto")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    server.private_key_pem.write_to_path(str(d / "server.key"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    passwd = d / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwd), USER, PASSWORD],
        check=True,
        capture_output=True,
    )
    passwd.chmod(0o600)
    plain, tls = _free_port(), _free_port()
    conf = d / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                # run as root (the test's user here), mosquitto would switch to its own
                # user, which cannot read the test's files
                *(["user root"] if os.geteuid() == 0 else []),
                "per_listener_settings false",
                "allow_anonymous false",
                f"password_file {passwd}",
                "persistence false",
                f"listener {plain} 127.0.0.1",
                f"listener {tls} 127.0.0.1",
                f"cafile {d / 'ca.pem'}",
                f"certfile {d / 'server.pem'}",
                f"keyfile {d / 'server.key'}",
                "require_certificate true",
                "log_dest stderr",
                "log_type error",
                "",
            ]
        )
    )
    proc = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        _wait_port(plain, proc)
        _wait_port(tls, proc)
        yield Broker(plain, tls, ca)
    finally:
        proc.terminate()
        proc.wait(10)


def _client_cert(d: Path, ca: trustme.CA) -> tuple[str, str]:
    cert = ca.issue_cert("ftserver-relay", common_name="ftserver-relay")
    certfile, keyfile = d / "relay.pem", d / "relay.key"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    return str(certfile), str(keyfile)


def _relay_args(broker: Broker, ca_file: str, cert: tuple[str, str]) -> list[str]:
    return [
        "--workers", "1",
        "--upstream", f"mqtts://localhost:{broker.tls}",
        "--set", f"relay.ca_file={ca_file}",
        "--set", f"relay.cert_file={cert[0]}",
        "--set", f"relay.key_file={cert[1]}",
        "--set", "relay.credentials=fixed",
        "--set", f"relay.username={USER}",
        "--set", f"relay.password={PASSWORD}",
        "--set", "relay.connect_timeout=5s",
    ]  # fmt: skip


def test_telemetry_and_upload_through_a_tls_broker(
    broker: Broker, make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    broker.ca.cert_pem.write_to_path(str(ca_file))
    srv = make_server(*_relay_args(broker, str(ca_file), _client_cert(tmp_path, broker.ca)))
    # a subscriber on the broker itself, with the broker's own credentials
    watcher = FtClient(broker.plain, "watcher", subscribe=False, username=USER, password=PASSWORD)
    _, mid = watcher.client.subscribe("tele/#", qos=1)
    watcher._wait(lambda: ("sub", mid) in watcher.acks, "SUBACK")
    # the device has no credentials: ftserver's fixed ones open its upstream leg
    device = FtClient(srv.mqtt_port, "tls-relay-dev")
    assert device.connack[1] == 0
    info = device.client.publish("tele/tls-relay-dev", b"23.5", qos=1)
    assert device.wait_ack(info.mid) == 0  # the broker's PUBACK, passed down
    message = watcher.messages.get(timeout=10)
    assert (message.topic, message.payload) == ("tele/tls-relay-dev", b"23.5")
    # file transfer on the same connection stays local
    data = os.urandom(200_000)
    assert device.upload("f1", data, name="f1.bin", segment=32 * 1024) == 0
    device.close()
    watcher.close()
    # nothing of the upload went to the broker: one message up, the telemetry
    deadline = time.monotonic() + 10
    while metric(scrape(srv.http_port), "ftserver_relay_messages_total") < 1:
        assert time.monotonic() < deadline, "relay counters never flushed"
        time.sleep(0.2)
    samples = scrape(srv.http_port)
    assert metric(samples, "ftserver_relay_messages_total", direction="up") == 1
    assert metric(samples, "ftserver_relay_bytes_total", direction="up") == len(b"23.5")
    assert metric(samples, "ftserver_relay_connect_failures_total") == 0


def test_untrusted_broker_certificate_is_server_unavailable(
    broker: Broker, make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    other = trustme.CA()  # not the CA that signed the broker's certificate
    ca_file = tmp_path / "other-ca.pem"
    other.cert_pem.write_to_path(str(ca_file))
    srv = make_server(*_relay_args(broker, str(ca_file), _client_cert(tmp_path, broker.ca)))
    device = FtClient(srv.mqtt_port, "tls-untrusted", subscribe=False)
    assert device.connack[1] == 0x88  # Server unavailable
    device.close()
    samples = scrape(srv.http_port)
    assert metric(samples, "ftserver_relay_connect_failures_total", reason="tls") == 1
    assert "broker localhost" in srv.stderr() and "tls" in srv.stderr()

"""Issue 8: authentication (password file, client certificates), TLS, limits and quotas."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from ftharness import FtClient, ServerProcess, find_export, metric, scrape
from ftserver.auth import set_password
from ftserver.config import load_config
from ftserver.mqtt.packets import Connack, Publish, Suback
from ftserver.server import Server
from rawclient import RawClient


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    set_password(path, "alice", "correct horse")
    set_password(path, "bob", "battery staple")
    return path


@pytest.mark.parametrize("level", [5, 4])
def test_password_file_logins(
    make_server: Callable[..., ServerProcess], users: Path, level: int
) -> None:
    srv = make_server("--set", f"security.password_file={users}")
    ok_code = 0
    bad_code = 0x86 if level == 5 else 4
    with RawClient(srv.mqtt_port, level=level) as c:
        ack = c.connect("dev-a", username="alice", password=b"correct horse")
        assert isinstance(ack, Connack) and ack.reason_code == ok_code
    for user, pw in (("alice", b"wrong"), ("nobody", b"correct horse"), ("bob", b"")):
        with RawClient(srv.mqtt_port, level=level) as c:
            started = time.monotonic()
            ack = c.connect("dev-x", username=user, password=pw)
            assert isinstance(ack, Connack) and ack.reason_code == bad_code, (user, ack)
            assert time.monotonic() - started >= 0.4  # answered after a delay
            assert c.recv() is None
    # on a loopback-only listener a client without credentials is accepted
    with RawClient(srv.mqtt_port, level=level) as c:
        ack = c.connect("dev-anon")
        assert isinstance(ack, Connack) and ack.reason_code == 0
    # users added while running are picked up
    set_password(users, "carol", "new user")
    with RawClient(srv.mqtt_port, level=level) as c:
        ack = c.connect("dev-c", username="carol", password=b"new user")
        assert isinstance(ack, Connack) and ack.reason_code == 0
    assert metric(scrape(srv.http_port), "ftserver_login_failures_total") >= 3


def test_anonymous_refused_off_loopback(tmp_path: Path) -> None:
    """A server whose listener is not loopback-only refuses clients without credentials.
    (The listener is bound to 127.0.0.1 for the test; the context is told otherwise.)"""

    async def body() -> None:
        config = load_config(
            None,
            {
                "mqtt.listen": "127.0.0.1:0",
                "http.listen": "127.0.0.1:0",
                "server.data_dir": str(tmp_path / "d"),
                "server.workers": 1,
            },
        )
        server = Server(config)
        await server.start()
        assert server.ctx is not None and server.mqtt_address is not None
        server.ctx.anonymous_ok = False
        port = server.mqtt_address[1]

        def attempt() -> object:
            with RawClient(port) as c:
                return c.connect("anon")

        ack = await asyncio.get_running_loop().run_in_executor(None, attempt)
        assert isinstance(ack, Connack) and ack.reason_code == 0x87
        await server.stop()

    asyncio.run(body())


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_files(tmp_path: Path, ca: trustme.CA) -> dict[str, str]:
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {
        "cert": tmp_path / "server.pem",
        "key": tmp_path / "server.key",
        "ca": tmp_path / "ca.pem",
    }
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(files["cert"]))
    server_cert.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    return {k: str(v) for k, v in files.items()}


def client_cert(tmp_path: Path, ca: trustme.CA, cn: str) -> tuple[str, str]:
    cert = ca.issue_cert(cn, common_name=cn)
    certfile, keyfile = tmp_path / f"{cn}.pem", tmp_path / f"{cn}.key"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    return str(certfile), str(keyfile)


def test_tls_upload(
    make_server: Callable[..., ServerProcess], tmp_path: Path, ca: trustme.CA
) -> None:
    f = tls_files(tmp_path, ca)
    srv = make_server(
        "--set", "mqtt.tls_listen=127.0.0.1:0",
        "--set", f"mqtt.tls_cert={f['cert']}",
        "--set", f"mqtt.tls_key={f['key']}",
    )  # fmt: skip
    assert srv.mqtts_port
    data = os.urandom(300_000)
    c = FtClient(srv.mqtts_port, "tls-dev", tls={"ca_certs": f["ca"]})
    assert c.upload("t", data, name="t.bin", segment=64 * 1024) == 0
    c.close()
    assert find_export(srv.exports, "tls-dev", "t", "t.bin").read_bytes() == data
    # TLS 1.1 is refused
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(f["ca"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # we ask for it on purpose
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", srv.mqtts_port)) as s:
        ctx.wrap_socket(s, server_hostname="127.0.0.1")


def test_tls_client_certificate_identity(
    make_server: Callable[..., ServerProcess], tmp_path: Path, ca: trustme.CA
) -> None:
    f = tls_files(tmp_path, ca)
    srv = make_server(
        "--set", "mqtt.tls_listen=127.0.0.1:0",
        "--set", f"mqtt.tls_cert={f['cert']}",
        "--set", f"mqtt.tls_key={f['key']}",
        "--set", f"mqtt.tls_ca={f['ca']}",
        "--set", "mqtt.tls_client_cert=required",
        "--set", "mqtt.tls_identity=clientid",
    )  # fmt: skip
    certfile, keyfile = client_cert(tmp_path, ca, "camera-42")
    # the CONNECT says another client id: the certificate wins
    c = FtClient(
        srv.mqtts_port,
        "camera-42",
        subscribe=True,
        tls={"ca_certs": f["ca"], "certfile": certfile, "keyfile": keyfile},
    )
    assert c.command("$file/x/init", json.dumps({"name": "x"})) == 0
    assert c.command("$file/x/0", b"certified") == 0
    assert c.command("$file/x/fin/9") == 0
    c.close()
    assert find_export(srv.exports, "camera-42", "x", "x").read_bytes() == b"certified"
    # without a client certificate the server ends the handshake: no CONNACK ever comes
    ctx = ssl.create_default_context(cafile=f["ca"])
    got = b""
    with socket.create_connection(("127.0.0.1", srv.mqtts_port), timeout=10) as s:
        try:
            with ctx.wrap_socket(s, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00")
                got = tls.recv(10)
        except (ssl.SSLError, ConnectionError):
            got = b""
    assert got == b""


def test_quotas(make_server: Callable[..., ServerProcess]) -> None:
    srv = make_server(
        "--workers", "1",
        "--set", "limits.max_transfers_per_client=2",
        "--set", "limits.client_byte_rate=100KiB",
        "--set", "limits.max_connections_per_ip=3",
    )  # fmt: skip
    c = FtClient(srv.mqtt_port, "quota")
    assert c.command("$file/a/init", json.dumps({"name": "a"})) == 0
    assert c.command("$file/b/init", json.dumps({"name": "b"})) == 0
    assert c.command("$file/c/init", json.dumps({"name": "c"})) == 0x83
    assert c.doc_for("$file/c/init")["reason_description"] == "too_many_transfers"
    # faster than 100 KiB/s: paused (0x97), nothing stored; later it goes through
    assert c.command("$file/a/0", os.urandom(100 * 1024)) == 0
    assert c.command("$file/a/102400", os.urandom(60 * 1024)) == 0x97
    assert c.doc_for("$file/a/102400")["reason_description"] == "quota_exceeded"
    time.sleep(0.7)
    assert c.command("$file/a/102400", os.urandom(60 * 1024)) == 0
    # a fourth connection from this address is answered busy (3 allowed; c is one)
    others = [RawClient(srv.mqtt_port) for _ in range(2)]
    for k, o in enumerate(others):
        assert isinstance(o.connect(f"extra-{k}"), Connack)
    with RawClient(srv.mqtt_port) as refused:
        busy = refused.connect("extra-2")
        assert isinstance(busy, Connack) and busy.reason_code == 0x89
        assert refused.recv() is None
    for o in others:
        o.close()
    c.close()
    s = scrape(srv.http_port)
    assert metric(s, "ftserver_limit_hits_total", limit="too_many_transfers") == 1
    assert metric(s, "ftserver_limit_hits_total", limit="quota_exceeded") == 1
    assert metric(s, "ftserver_connections_refused_total") == 1


def test_storage_low_water_pauses_new_data_only(make_server: Callable[..., ServerProcess]) -> None:
    srv = make_server("--workers", "1")
    c = FtClient(srv.mqtt_port, "low")
    assert c.command("$file/w/init", json.dumps({"name": "w"})) == 0
    assert c.command("$file/w/0", b"before") == 0
    c.close()
    assert srv.stop() == 0
    # the same data directory, now "full": new data is paused, the fin still exports
    srv2 = ServerProcess(
        srv.data_dir, "--workers", "1", "--set", "limits.staging_low_water=1000000TiB"
    ).start()
    try:
        c = FtClient(srv2.mqtt_port, "low")
        assert c.command("$file/w/6", b"more") == 0x97
        assert c.doc_for("$file/w/6")["reason_description"] == "storage_full"
        assert c.command("$file/w/fin/6") == 0
        c.close()
        assert find_export(srv2.exports, "low", "w", "w").read_bytes() == b"before"
    finally:
        assert srv2.stop() == 0


def test_acl_rules(make_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    acl = tmp_path / "acl.toml"
    acl.write_text(
        '[[rule]]\nclientid = "monitor-*"\nsubscribe = ["$file-response/#"]\n\n'
        '[[rule]]\nclientid = "kiosk-*"\nupload = false\n'
    )
    srv = make_server("--set", f"security.acl_file={acl}")
    with RawClient(srv.mqtt_port) as mon:
        mon.connect("monitor-1")
        ack = mon.subscribe("$file-response/#", "$file-response/+", "$SYS/#")
        assert isinstance(ack, Suback) and ack.reason_codes == [1, 1, 0x87]
        with RawClient(srv.mqtt_port) as other:
            other.connect("device-9")
            ack = other.subscribe("$file-response/#", "$file-response/device-9")
            assert isinstance(ack, Suback) and ack.reason_codes == [0x87, 1]
            dev = FtClient(srv.mqtt_port, "device-7")
            assert dev.command("$file/m/init", json.dumps({"name": "m"})) == 0
            dev.close()
        # the monitor sees device-7's document (once per matching subscription filter: MQTT
        # delivers one copy per session)
        doc = mon.recv()
        assert isinstance(doc, Publish) and doc.topic == "$file-response/device-7"
        assert json.loads(doc.payload)["topic"] == "$file/m/init"
    kiosk = FtClient(srv.mqtt_port, "kiosk-3")
    assert kiosk.command("$file/k/init", json.dumps({"name": "k"})) == 0x87
    assert kiosk.doc_for("$file/k/init")["reason_description"] == "not_authorized"
    assert kiosk.command("telemetry/x", b"1") == 0x10  # ordinary publishes are unaffected
    kiosk.close()
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nclientid = "x"\nupload = "yes"\n')
    out = subprocess.run(
        [sys.executable, "-m", "ftserver", "serve", "--set", f"security.acl_file={bad}",
         "--data", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "security.acl_file" in out.stderr

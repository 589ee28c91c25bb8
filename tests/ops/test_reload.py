"""Issue 16: SIGHUP re-reads the password file, the ACL file and the TLS certificate in every
worker, without dropping a connection; a bad new file is refused and the old one stays.

Real ftserver processes (one process, and a supervisor with two workers), real paho clients,
certificates from a throw-away CA (trustme).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from ftharness import FtClient, ServerProcess, find_export
from ftserver.auth import delete_user, set_password

NOT_AUTHORIZED = 0x87
BAD_LOGIN = 0x86
ACL_V1 = '[[rule]]\nclientid = "kiosk-*"\nupload = false\n'
ACL_V2 = '[[rule]]\nclientid = "cam-*"\nupload = false\n'


def records(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].split("\n")[:-1]]


def reload(srv: ServerProcess, n: int) -> dict[str, Any]:
    """SIGHUP the server and wait for the line that ends its ``n``-th reload."""
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done = [d for d in records(srv.stderr_path) if d["event"] == "reload_done"]
        if len(done) >= n:
            assert len(done) == n
            return done[-1]
        time.sleep(0.05)
    raise AssertionError(f"reload {n} did not finish:\n{srv.stderr()[-3000:]}")


def login(port: int, user: str, password: str, cid: str = "login") -> int:
    c = FtClient(port, cid, subscribe=False, username=user, password=password)
    rc = c.connack[1]
    c.close()
    return int(getattr(rc, "value", rc))


def may_upload(port: int, cid: str) -> int:
    c = FtClient(port, cid, subscribe=False)
    try:
        return c.command("$file/acl/init", json.dumps({"name": "acl"}))
    finally:
        c.close()


def refusals(srv: ServerProcess, path: Path) -> list[dict[str, Any]]:
    return [
        d
        for d in records(srv.stderr_path)
        if d["event"] == "reload_refused" and d["file"] == str(path)
    ]


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_users_and_acl_keeps_connections(tmp_path: Path, workers: int) -> None:
    users = tmp_path / "users"
    set_password(users, "alice", "alice-pw")
    acl = tmp_path / "acl.toml"
    acl.write_text(ACL_V1)
    srv = ServerProcess(
        tmp_path / "data",
        "--workers", str(workers),
        "--log-format", "json",
        "--set", f"security.password_file={users}",
        "--set", f"security.acl_file={acl}",
    )  # fmt: skip
    srv.start()
    try:
        port = srv.mqtt_port
        assert login(port, "alice", "alice-pw") == 0
        assert login(port, "bob", "bob-pw") == BAD_LOGIN
        assert may_upload(port, "kiosk-1") == NOT_AUTHORIZED
        assert may_upload(port, "cam-1") == 0
        # an upload that runs across every reload of this test, on one connection
        data = os.urandom(256 * 1024)
        up = FtClient(port, "uploader", username="alice", password="alice-pw")
        assert up.command("$file/big/init", json.dumps({"name": "big.bin"})) == 0
        step = len(data) // 4

        def send(part: int) -> None:
            start = part * step
            mids = [
                up.publish(f"$file/big/{o}", data[o : o + 4096])
                for o in range(start, start + step, 4096)
            ]
            assert all(up.wait_ack(m) == 0 for m in mids)

        send(0)
        # bob added, alice removed, kiosks may upload and cameras may not
        set_password(users, "bob", "bob-pw")
        assert delete_user(users, "alice")
        acl.write_text(ACL_V2)
        done = reload(srv, 1)
        assert done["workers"] == workers and done["refused"] == []
        reloaded = [d for d in records(srv.stderr_path) if d["event"] == "reloaded"]
        assert sorted(d["file"] for d in reloaded) == sorted([str(users), str(acl)] * workers)
        assert login(port, "bob", "bob-pw") == 0
        assert login(port, "alice", "alice-pw") == BAD_LOGIN
        assert may_upload(port, "kiosk-2") == 0
        assert may_upload(port, "cam-2") == NOT_AUTHORIZED
        send(1)
        # broken files: refused with a line naming each, the ones before stay in force
        users.write_text("bob has no hash\n")
        acl.write_text('[[rule]]\nclientid = "x"\nupload = "maybe"\n')
        done = reload(srv, 2)
        assert done["refused"] == sorted([str(users), str(acl)])
        for path in (users, acl):
            lines = refusals(srv, path)
            assert len(lines) == workers and all(d["level"] == "error" for d in lines)
            assert all(d["error"] and str(path) in d["msg"] for d in lines)
        assert login(port, "bob", "bob-pw") == 0
        assert login(port, "alice", "alice-pw") == BAD_LOGIN
        assert may_upload(port, "cam-3") == NOT_AUTHORIZED
        assert may_upload(port, "kiosk-3") == 0
        send(2)
        send(3)
        assert up.command(f"$file/big/fin/{len(data)}") == 0
        assert up.disconnect_reason is None  # the same connection all along
        up.close()
    finally:
        assert srv.stop() == 0
    got = find_export(srv.exports, "uploader", "big", "big.bin").read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def _issue(ca: trustme.CA, directory: Path) -> bytes:
    """Write a new server certificate (and its key) for 127.0.0.1 over the listener's files;
    returns its DER."""
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(directory / "server.pem"))
    cert.private_key_pem.write_to_path(str(directory / "server.key"))
    import ssl

    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


def _peer_cert(port: int, ca_file: Path, cid: str) -> bytes:
    c = FtClient(port, cid, subscribe=False, tls={"ca_certs": str(ca_file)})
    try:
        sock = c.client.socket()
        der = sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
        assert der is not None
        return bytes(der)
    finally:
        c.close()


def test_reload_tls_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    first = _issue(ca, tmp_path)
    srv = ServerProcess(
        tmp_path / "data",
        "--workers", "2",
        "--log-format", "json",
        "--set", "mqtt.tls_listen=127.0.0.1:0",
        "--set", f"mqtt.tls_cert={tmp_path / 'server.pem'}",
        "--set", f"mqtt.tls_key={tmp_path / 'server.key'}",
    )  # fmt: skip
    srv.start()
    try:
        port = srv.mqtts_port
        assert _peer_cert(port, ca_file, "probe-0") == first
        old = FtClient(port, "old-tls", tls={"ca_certs": str(ca_file)})
        assert old.client.socket().getpeercert(binary_form=True) == first  # type: ignore[union-attr]
        assert old.command("$file/t/init", json.dumps({"name": "t"})) == 0
        assert old.command("$file/t/0", b"before") == 0
        second = _issue(ca, tmp_path)
        assert second != first
        assert reload(srv, 1)["refused"] == []
        # every new connection (whichever worker takes it) gets the new certificate
        for k in range(4):
            assert _peer_cert(port, ca_file, f"probe-{k + 1}") == second
        # a key that does not go with the certificate: refused, the last good pair stays
        other = ca.issue_cert("127.0.0.1")
        other.private_key_pem.write_to_path(str(tmp_path / "server.key"))
        assert reload(srv, 2)["refused"] == [str(tmp_path / "server.pem")]
        assert len(refusals(srv, tmp_path / "server.pem")) == 2
        for k in range(4):
            assert _peer_cert(port, ca_file, f"probe-{k + 5}") == second
        # the connection made before the reloads is still up, on its certificate
        assert old.command("$file/t/6", b" after") == 0
        assert old.command("$file/t/fin/12") == 0
        assert old.disconnect_reason is None
        old.close()
    finally:
        assert srv.stop() == 0
    assert find_export(srv.exports, "old-tls", "t", "t").read_bytes() == b"before after"

"""Credentials through the relay: with ``credentials = passthrough`` the broker decides, and a
refusal reaches the device with the broker's own code (Mosquitto 2 with a password file and
``allow_anonymous false``: MQTT 5 0x86/0x87, MQTT 3.1.1 return code 4/5: the direct run says
which). With ``credentials = fixed`` the relay's own user name and password go upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from relaybroker import Broker
from relaykit import paths, relay_only, start_relay, stop_server, versions
from relaypeers import Peer

from ftharness import ServerProcess
from ftserver.mqtt.packets import Connack
from rawclient import RawClient

USERS = {"dev1": "secret-1", "ops": "s3cret-ops"}
#: what a refusal of credentials may be: MQTT 5 reason codes, MQTT 3.1.1 return codes
REFUSED = {5: {0x86, 0x87}, 4: {4, 5}}
CASES = {
    "wrong-password": ("dev1", b"not-it"),
    "unknown-user": ("mallory", b"secret-1"),
    "anonymous": (None, None),
}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp("secured"), users=USERS).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def secured_relay(
    tmp_path_factory: pytest.TempPathFactory, secured: Broker
) -> Iterator[ServerProcess]:
    srv = start_relay(tmp_path_factory.mktemp("relay-sec") / "data", secured)
    yield srv
    stop_server(srv)


@pytest.fixture
def secured_port(request: pytest.FixtureRequest) -> Callable[[str], int]:
    def port(path: str) -> int:
        if path == "direct":
            return int(request.getfixturevalue("secured").port)
        return int(request.getfixturevalue("secured_relay").mqtt_port)

    return port


def connack_of(
    port: int, version: int, client_id: str, username: str | None, password: bytes | None
) -> tuple[int, bool]:
    """The raw CONNACK code (a 3.1.1 return code as sent), and whether the server then closed
    the connection."""
    with RawClient(port, level=version) as c:
        packet = c.connect(client_id, username=username, password=password)
        assert isinstance(packet, Connack), packet
        closed = packet.reason_code == 0 or c.recv() is None
        return packet.reason_code, closed


@paths
@versions
@pytest.mark.parametrize("case", list(CASES))
def test_refused_with_the_brokers_code(
    path: str, version: int, case: str, secured: Broker, secured_port: Callable[[str], int]
) -> None:
    username, password = CASES[case]
    mosquitto_says, _ = connack_of(secured.port, version, f"ref-{case}-d", username, password)
    assert mosquitto_says in REFUSED[version]
    code, closed = connack_of(secured_port(path), version, f"ref-{case}", username, password)
    assert code == mosquitto_says
    assert closed


@paths
@versions
def test_right_credentials_accepted(
    path: str,
    version: int,
    secured: Broker,
    secured_port: Callable[[str], int],
    peers: Callable[..., Peer],
    uid: str,
) -> None:
    device = peers(
        secured_port(path), f"{uid}-dev", version=version, username="dev1", password="secret-1"
    )
    assert device.connack is not None and device.connack[1] == 0
    app = peers(secured.port, f"{uid}-app", username="ops", password="s3cret-ops")
    app.subscribe([(f"t/{uid}", 1)])
    device.wait_ack(device.publish(f"t/{uid}", b"hello", 1))
    assert app.receive().payload == b"hello"


@relay_only
@versions
def test_fixed_credentials_go_upstream(
    version: int,
    secured: Broker,
    make_relay: Callable[..., ServerProcess],
    peers: Callable[..., Peer],
    uid: str,
) -> None:
    """credentials = fixed: a device without a user name is let in by the broker as the
    relay's user; a device's own (wrong) password is not what the broker sees."""
    relay = make_relay(
        secured,
        "--set", "relay.credentials=fixed",
        "--set", "relay.username=ops",
        "--set", "relay.password=s3cret-ops",
    )  # fmt: skip
    app = peers(secured.port, f"{uid}-app", username="dev1", password="secret-1")
    app.subscribe([(f"t/{uid}/#", 1)])
    for n, creds in enumerate(({}, {"username": "dev1", "password": "wrong"})):
        device = peers(relay.mqtt_port, f"{uid}-dev{n}", version=version, **creds)
        assert device.connack is not None and device.connack[1] == 0
        device.wait_ack(device.publish(f"t/{uid}/{n}", b"via fixed", 1))
        assert app.receive().topic == f"t/{uid}/{n}"

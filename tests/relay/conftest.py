"""Fixtures of the relay-mode tests (issue 14): a real Mosquitto on 127.0.0.1 and ftserver in
front of it (``--upstream mqtt://127.0.0.1:<port>``).

Every behavioural test runs twice, ``path="direct"`` (the devices connect straight to
Mosquitto) and ``path="relay"`` (they connect to ftserver, which relays to the same
Mosquitto): the direct run checks the test itself against the real broker, and the relay run
must behave the same. Tests that only make sense through ftserver (its upstream legs, the
broker being down, file uploads, events) run on the relay alone.

The marks are in ``relaykit.py`` (a module of its own: test modules import it; a ``conftest``
is not importable by name when several test directories have one).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from relaybroker import Broker
from relaykit import start_relay, stop_server
from relaypeers import Peer

from ftharness import ServerProcess

_ids = itertools.count()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One anonymous Mosquitto per test module (tests use topics and client ids of their own)."""
    b = Broker(tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[ServerProcess]:
    """ftserver in relay mode in front of the module's broker."""
    srv = start_relay(tmp_path_factory.mktemp("relay") / "data", broker)
    yield srv
    stop_server(srv)


@pytest.fixture
def make_relay(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start relays of the test's own, ``make_relay(broker, *extra_args)``."""
    started: list[ServerProcess] = []

    def start(broker: Broker, *extra: str) -> ServerProcess:
        srv = start_relay(tmp_path / f"relay{len(started)}", broker, *extra)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        stop_server(srv)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Brokers of the test's own (for tests that stop or kill them), ``own_broker(**options)``."""
    started: list[Broker] = []

    def start(**options: Any) -> Broker:
        b = Broker(tmp_path / f"mosquitto{len(started)}", **options).start()
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


@pytest.fixture
def uid(request: pytest.FixtureRequest) -> str:
    """A client id and topic prefix unique to the test."""
    name = "".join(ch if ch.isalnum() else "-" for ch in request.node.name[:40])
    return f"r{next(_ids)}-{name}"


@pytest.fixture
def port_of(
    request: pytest.FixtureRequest,
) -> Callable[[str], int]:
    """``port_of(path)``: the port a device dials on that path (the module's broker or relay;
    the relay is started only for the relay path)."""

    def port(path: str) -> int:
        if path == "direct":
            return int(request.getfixturevalue("broker").port)
        return int(request.getfixturevalue("relay").mqtt_port)

    return port


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    """``peers(port, client_id, **options)``: connected paho clients, closed after the test."""
    opened: list[Peer] = []

    def open_peer(port: int, client_id: str, **options: Any) -> Peer:
        connect = options.pop("connect", True)
        peer = Peer(port, client_id, connect=False, **options)
        opened.append(peer)
        if connect:
            peer.connect()
        return peer

    yield open_peer
    for peer in opened:
        peer.close()

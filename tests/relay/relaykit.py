"""The relay tests' marks, and how they start ftserver in relay mode.

Most tests run over both paths: ``direct`` (the devices connect to Mosquitto itself) and
``relay`` (they connect to ftserver in front of it). The direct variant checks the test and
its fixtures against the real broker; the relay must behave the same. ``relay_only`` marks what
makes sense through ftserver only (``pytest -m relay`` selects every relay test).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from relaybroker import Broker

from ftharness import ServerProcess

#: the mark of every test (or variant) that goes through the relay
relay_only = pytest.mark.relay

#: parametrize a test over both paths: ``path`` is "direct" or "relay"
paths = pytest.mark.parametrize(
    "path", [pytest.param("direct"), pytest.param("relay", marks=relay_only)]
)
#: parametrize a test over the MQTT versions: ``version`` is 4 (3.1.1) or 5
versions = pytest.mark.parametrize("version", [4, 5], ids=["mqtt311", "mqtt5"])


def relay_args(broker: Broker, *extra: str) -> tuple[str, ...]:
    """ftserver's arguments for relay mode in front of ``broker``."""
    return (
        "--upstream", broker.url,
        "--set", "relay.connect_timeout=5s",
        "--set", "limits.max_connections_per_ip=0",
        *extra,
    )  # fmt: skip


def start_relay(data: Path, broker: Broker, *extra: str) -> ServerProcess:
    return ServerProcess(data, *relay_args(broker, *extra)).start()


def stop_server(srv: ServerProcess) -> None:
    if srv.proc is not None and srv.proc.poll() is None:
        assert srv.stop() == 0, srv.stderr()

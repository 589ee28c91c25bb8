"""The relay tests' switch and marks, and how they start ftserver in relay mode.

``RELAY_READY`` is the single switch: while relay mode is being built, the relay variants are
expected failures and are not run (``FTSERVER_RELAY_TRY=1`` runs them anyway, to see how far
the implementation got); set it to True and they are plain tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from relaybroker import Broker

from ftharness import ServerProcess

#: relay mode works: its tests are plain tests (False: expected to fail, not run)
RELAY_READY = True

_TRY = os.environ.get("FTSERVER_RELAY_TRY", "") not in ("", "0")

#: the mark of every test (or variant) that goes through the relay
relay_only = pytest.mark.xfail(
    not RELAY_READY,
    reason="relay mode (issue 14) is not implemented yet: RELAY_READY in tests/relay/relaykit.py",
    run=_TRY,
    strict=False,
)

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

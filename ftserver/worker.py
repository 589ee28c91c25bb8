"""A worker process: one ``Server`` on the shared MQTT port, bridged to the supervisor.

Started by the supervisor as ``python -m ftserver _worker`` with its instructions in the
``FTSERVER_WORKER`` environment variable (JSON: worker id, control socket fd, MQTT port,
configuration source). The bridge makes the supervisor the single registry of client
identifiers and the router of response documents between workers; segment data never leaves
the worker that received it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from ftserver.config import load_config
from ftserver.control import Channel, Msg
from ftserver.mqtt.packets import Properties
from ftserver.mqtt.session import (
    props_from_json,
    props_to_json,
)
from ftserver.server import Server, new_runner, setup_logging
from ftserver.topics import topic_matches

log = logging.getLogger("ftserver.worker")

ENV = "FTSERVER_WORKER"
PR_SET_PDEATHSIG = 1


class WorkerBridge:
    """The :class:`ftserver.mqtt.session.Bridge` of a worker, over its control channel."""

    def __init__(self) -> None:
        self.channel: Channel | None = None
        #: filters subscribed in other workers -> in how many of them
        self._remote_exact: dict[str, int] = {}
        self._remote_wild: dict[str, int] = {}

    def _send(self, msg: Msg) -> None:
        if self.channel is not None:
            with contextlib.suppress(ConnectionError):
                self.channel.send(msg)

    # -- Bridge ------------------------------------------------------------------------------

    def filter_added(self, topic_filter: str) -> None:
        self._send({"op": "filter+", "f": topic_filter})

    def filter_removed(self, topic_filter: str) -> None:
        self._send({"op": "filter-", "f": topic_filter})

    def matches_remote(self, topic: str) -> bool:
        if topic in self._remote_exact:
            return True
        return any(topic_matches(f, topic) for f in self._remote_wild)

    def route_remote(self, topic: str, payload: bytes, properties: Properties) -> None:
        self._send(
            {
                "op": "route",
                "topic": topic,
                "payload": base64.b64encode(payload).decode(),
                "props": props_to_json(properties),
            }
        )

    def released(self, client_id: str) -> None:
        self._send({"op": "release", "cid": client_id})

    async def claim(self, client_id: str) -> dict[str, Any] | None:
        if self.channel is None:
            return None
        reply = await self.channel.call({"op": "claim", "cid": client_id})
        session: dict[str, Any] | None = reply.get("session")
        return session

    # -- from the supervisor -----------------------------------------------------------------

    def remote_filter(self, topic_filter: str, delta: int) -> None:
        table = (
            self._remote_wild if "+" in topic_filter or "#" in topic_filter else self._remote_exact
        )
        n = table.get(topic_filter, 0) + delta
        if n > 0:
            table[topic_filter] = n
        else:
            table.pop(topic_filter, None)


def _die_with_parent(parent: int) -> None:
    """If the supervisor dies (even by SIGKILL), so does this worker: a worker must never
    serve on without the registry that keeps each client in one place."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


async def _worker(spec: dict[str, Any]) -> int:
    wid = int(spec["id"])
    config = load_config(Path(spec["config"]) if spec["config"] else None, spec["overrides"])
    bridge = WorkerBridge()
    tls_port = spec.get("tls_port")
    server = Server(
        config,
        worker_id=wid,
        mqtt_port=int(spec["port"]),
        tls_port=None if tls_port is None else int(tls_port),
        bridge=bridge,
    )

    async def handle(msg: Msg) -> Msg | None:
        op = msg.get("op")
        if op == "takeover":
            cid = msg["cid"]
            blob = server.registry.hand_over(cid)
            if server.store is not None:
                server.store.release_client(cid)
            return {"session": blob}
        if op == "rfilter":
            bridge.remote_filter(msg["f"], int(msg["d"]))
        elif op == "deliver":
            server.registry.route_local(
                msg["topic"], base64.b64decode(msg["payload"]), props_from_json(msg["props"])
            )
        elif op == "stop":
            server.request_stop()
        elif op == "reload":
            return {"refused": server.reload()}
        return {}

    sock = socket.socket(fileno=int(spec["fd"]))
    channel = await Channel.from_socket(sock, handle, f"worker {wid}")
    bridge.channel = channel
    reader = asyncio.create_task(channel.run())
    try:
        await server.start()
    except OSError as exc:
        log.error("worker %d cannot start: %s", wid, exc)
        return 1
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, server.request_stop)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the supervisor decides
    loop.add_signal_handler(signal.SIGHUP, server.reload)  # the supervisor forwards its own
    channel.send({"op": "ready", "pid": os.getpid()})

    async def supervisor_gone() -> None:
        await channel.closed.wait()
        log.error("worker %d: supervisor gone, stopping", wid)
        server.request_stop()

    watcher = asyncio.create_task(supervisor_gone())
    await server.serve_until_stopped()
    watcher.cancel()
    channel.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(reader, 1.0)
    return 0


def main() -> int:
    spec = json.loads(os.environ[ENV])
    _die_with_parent(int(spec["parent"]))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the server can reload
    config = load_config(Path(spec["config"]) if spec["config"] else None, spec["overrides"])
    setup_logging(config, int(spec["id"]), f"w{spec['id']}")
    with new_runner() as runner:
        code = runner.run(_worker(spec))
    sys.stdout.flush()
    return code

"""The upstream legs of relay mode: one MQTT client connection to the broker per device.

A leg is driven by ftserver's own codec (client side), not by a client library: a library
acknowledges on its own, and the device's acknowledgements must be the broker's (QoS end to
end). The leg does only what belongs to the connection itself: the CONNECT and its deadline,
its own keep-alive (PINGREQ every ``keepalive`` seconds, closed when the broker stops
answering), encoding what the device's session core sends up and decoding what comes down.
Every decision about packets (which go up, packet identifiers, acknowledgements) is the
session core's (``ftserver.mqtt.core``), to which the leg reports through
:class:`~ftserver.mqtt.upstream.UpstreamListener`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from dataclasses import dataclass, replace

from ftserver import metrics
from ftserver.config import RelayConfig, relay_tls_context
from ftserver.errors import RateLimitedLog
from ftserver.mqtt import codec
from ftserver.mqtt.codec import Decoder, ProtocolError
from ftserver.mqtt.packets import (
    Connack,
    Connect,
    Disconnect,
    Packet,
    Payload,
    Pingresp,
    Puback,
    Publish,
    Pubrec,
)
from ftserver.mqtt.spec import MAX_PACKET_SIZE, MQTT_V5
from ftserver.mqtt.upstream import UpstreamListener

log = logging.getLogger(__name__)
#: a broker that is down fails every device's CONNECT at once: one line per interval
_failure_log = RateLimitedLog(log, logging.WARNING)

#: why an upstream CONNECT failed (the ``reason`` label of ftserver_relay_connect_failures_total)
CONNECT_FAILURES = ("unreachable", "tls", "timeout", "refused", "closed")
#: one QoS 1/2 PUBLISH in this many has its time to the broker's acknowledgement observed
LATENCY_SAMPLE = 8


@dataclass(slots=True)
class RelayCounts:
    """What the legs of a worker relayed since the last flush (plain ints on the hot path)."""

    up_messages: int = 0
    up_bytes: int = 0
    down_messages: int = 0
    down_bytes: int = 0
    sampled: int = 0


class RelayClient:
    """Opens the upstream legs of one worker (``ftserver.mqtt.upstream.Relay``)."""

    def __init__(self, config: RelayConfig, worker: str = "0") -> None:
        self.config = config
        self.host, self.port, tls = config.address
        self.ssl = relay_tls_context(config) if tls else None
        self.server_name = config.server_name or self.host if tls else None
        self.worker = worker
        self.counts = RelayCounts()
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections = metrics.RELAY_UPSTREAM_CONNECTIONS.labels(worker)
        # every series exists from the start at 0, so that its first count shows in rate()
        for reason in CONNECT_FAILURES:
            metrics.RELAY_CONNECT_FAILURES.labels(worker, reason)
        for direction in ("up", "down"):
            metrics.RELAY_MESSAGES.labels(worker, direction)
            metrics.RELAY_BYTES.labels(worker, direction)

    def open(self, connect: Connect, listener: UpstreamListener) -> None:
        cfg = self.config
        if cfg.credentials == "fixed":
            connect = replace(
                connect, username=cfg.username, password=cfg.password.encode() or None
            )
        connect = replace(connect, keep_alive=cfg.keepalive)
        task = asyncio.ensure_future(self._open(connect, listener))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, connect: Connect, listener: UpstreamListener) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.connect_timeout
        try:
            async with asyncio.timeout_at(deadline):
                await loop.create_connection(
                    lambda: UpstreamLeg(self, connect, listener, deadline),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.server_name,
                )
        except TimeoutError:
            self.failed(listener, "timeout", "no connection within relay.connect_timeout")
        except ssl.SSLError as exc:  # before OSError, of which it is one
            self.failed(listener, "tls", str(exc))
        except OSError as exc:
            self.failed(listener, "unreachable", str(exc))

    def failed(self, listener: UpstreamListener, reason: str, detail: str) -> None:
        _failure_log("broker %s:%s: %s (%s)", self.host, self.port, reason, detail)
        metrics.RELAY_CONNECT_FAILURES.labels(self.worker, reason).inc()
        listener.upstream_failed(reason)

    def leg_opened(self) -> None:
        self._connections.inc()

    def leg_closed(self) -> None:
        self._connections.dec()

    def flush(self) -> None:
        """Move the plain counters into the Prometheus series (every second)."""
        c = self.counts
        w = self.worker
        if c.up_messages:
            metrics.RELAY_MESSAGES.labels(w, "up").inc(c.up_messages)
            metrics.RELAY_BYTES.labels(w, "up").inc(c.up_bytes)
        if c.down_messages:
            metrics.RELAY_MESSAGES.labels(w, "down").inc(c.down_messages)
            metrics.RELAY_BYTES.labels(w, "down").inc(c.down_bytes)
        self.counts = RelayCounts(sampled=c.sampled)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class UpstreamLeg(asyncio.Protocol):
    """One device's connection to the broker (``ftserver.mqtt.upstream.Upstream``)."""

    def __init__(
        self,
        relay: RelayClient,
        connect: Connect,
        listener: UpstreamListener,
        deadline: float,
    ) -> None:
        self.relay = relay
        self.connect = connect
        self.listener: UpstreamListener | None = listener
        self.level = connect.protocol_level
        max_in = connect.properties.get("maximum_packet_size", MAX_PACKET_SIZE)
        self.decoder = Decoder(max_in, server=False, protocol_level=self.level)
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.deadline = deadline
        self._timer: asyncio.TimerHandle | None = None
        self._open = False  # the broker accepted the CONNECT
        self._ping_due = False  # a PINGREQ is unanswered
        self._broker_max = 0  # the broker's Maximum Packet Size (0: none)
        self._sent_at: dict[int, float] = {}
        self._accepted = False  # the CONNACK came (accepted or not)
        self._out: list[bytes] = []  # written at the end of this turn of the loop
        self._keep_alive = connect.keep_alive  # seconds between PINGREQs (0: none)
        self._disconnect: Disconnect | None = None  # the broker's, when it sent one

    # -- asyncio -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport = tr
        sock = tr.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tr.write(codec.encode_connect(self.connect))
        self._timer = self.loop.call_at(self.deadline, self._connect_timeout)

    def data_received(self, data: bytes) -> None:
        self.decoder.feed(data)
        try:
            while self.listener is not None:
                packet = self.decoder.next_packet()
                if packet is None:
                    break
                self._handle(packet)
        except ProtocolError as exc:
            log.warning(
                "upstream %r: the broker broke the protocol: %s", self.connect.client_id, exc
            )
            self._lost(None)
        if self.listener is not None and self._accepted:
            self.listener.upstream_read_done()

    def pause_writing(self) -> None:
        if self.listener is not None:
            self.listener.upstream_busy(True)

    def resume_writing(self) -> None:
        if self.listener is not None:
            self.listener.upstream_busy(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._open:
            self._open = False
            self.relay.leg_closed()
        listener, self.listener = self.listener, None
        if listener is None:
            return
        if self._accepted:
            listener.upstream_closed(self._disconnect)
        else:
            self.relay.failed(listener, "closed", "closed before its CONNACK")

    # -- the device connection's view (ftserver.mqtt.upstream.Upstream) -----------------------

    def send(self, packet: Packet, raw: memoryview | None = None) -> None:
        tr = self.transport
        if tr is None or tr.is_closing():
            return
        if isinstance(packet, Publish):
            header: bytes | memoryview
            payload: Payload
            if raw is not None:  # as the device sent it
                header, payload = raw, b""
            else:
                header, payload = codec.encode_publish_header(packet, self.level), packet.payload
            size = len(header) + len(payload)
            if self._broker_max and size > self._broker_max:
                self._too_large(packet)
                return
            counts = self.relay.counts
            counts.up_messages += 1
            counts.up_bytes += len(packet.payload)
            if packet.packet_id is not None:
                counts.sampled += 1
                if counts.sampled % LATENCY_SAMPLE == 0:
                    self._sent_at[packet.packet_id] = time.monotonic()
            # copied: the views are the device connection's receive buffer, which is reused
            # once this call returns, while the write may wait in the transport
            self._queue(bytes(header) + payload)
            return
        self._queue(codec.encode(packet, self.level))

    def _queue(self, data: bytes) -> None:
        """Send ``data`` with everything else sent during this turn of the event loop, in
        one write (one system call for all the packets of a device's read)."""
        if not self._out:
            self.loop.call_soon(self._write_out)
        self._out.append(data)

    def _write_out(self) -> None:
        out, self._out = self._out, []
        tr = self.transport
        if out and tr is not None and not tr.is_closing():
            tr.write(b"".join(out) if len(out) > 1 else out[0])

    def close(self, disconnect: Disconnect | None) -> None:
        self.listener = None  # asked for: nothing more to report
        tr = self.transport
        if tr is None:
            return
        if disconnect is not None and not tr.is_closing():
            self._write_out()
            tr.write(codec.encode_disconnect(disconnect, self.level))
            tr.close()
        else:
            tr.abort()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # -- packets from the broker -------------------------------------------------------------

    def _handle(self, packet: Packet) -> None:
        listener = self.listener
        assert listener is not None
        if not self._accepted:
            if not isinstance(packet, Connack):
                log.warning(
                    "upstream %r: the broker sent %s before CONNACK",
                    self.connect.client_id,
                    type(packet).__name__,
                )
                self._lost(None)
                return
            self._cancel_timer()
            if packet.reason_code == 0:
                self._accepted = self._open = True
                self.relay.leg_opened()
                self._broker_max = packet.properties.get("maximum_packet_size", 0)
                # MQTT 5 §3.2.2.3.14: the broker's Server Keep Alive replaces ours
                self._keep_alive = packet.properties.get("server_keep_alive", self._keep_alive)
                if self._keep_alive:
                    self._start_keepalive()
            else:
                metrics.RELAY_CONNECT_FAILURES.labels(self.relay.worker, "refused").inc()
            listener.upstream_connected(self, packet)
            return
        if isinstance(packet, Publish):
            counts = self.relay.counts
            counts.down_messages += 1
            counts.down_bytes += len(packet.payload)
        elif isinstance(packet, (Puback, Pubrec)):
            sent = self._sent_at.pop(packet.packet_id, None)
            if sent is not None:
                metrics.RELAY_SECONDS.observe(time.monotonic() - sent)
        elif isinstance(packet, Pingresp):
            self._ping_due = False
            return
        elif isinstance(packet, Disconnect):
            self._disconnect = packet
            self._lost(packet)
            return
        listener.upstream_packet(packet)

    def _lost(self, disconnect: Disconnect | None) -> None:
        """The leg is over (broker's DISCONNECT, protocol error, no ping answer)."""
        self._disconnect = disconnect
        if self.transport is not None:
            self.transport.abort()  # connection_lost reports it

    def _too_large(self, packet: Publish) -> None:
        log.warning(
            "upstream %r: PUBLISH on %r exceeds the broker's Maximum Packet Size, not sent",
            self.connect.client_id,
            packet.topic,
        )
        if packet.packet_id is None or self.listener is None:
            return
        # 0x83 Implementation specific error: valid in PUBACK and PUBREC, unlike 0x95
        rc = 0x83 if self.level == MQTT_V5 else 0
        answer = Puback if packet.qos == 1 else Pubrec
        self.listener.upstream_packet(answer(packet.packet_id, rc))
        self.listener.upstream_read_done()

    # -- timers ------------------------------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _connect_timeout(self) -> None:
        self._timer = None
        if not self._accepted and self.listener is not None:
            listener, self.listener = self.listener, None
            self.relay.failed(listener, "timeout", "no CONNACK within relay.connect_timeout")
            if self.transport is not None:
                self.transport.abort()

    def _start_keepalive(self) -> None:
        self._timer = self.loop.call_later(self._keep_alive, self._keepalive)

    def _keepalive(self) -> None:
        self._timer = None
        tr = self.transport
        if tr is None or tr.is_closing():
            return
        if self._ping_due:
            log.info("upstream %r: the broker stopped answering PINGREQ", self.connect.client_id)
            self._lost(None)
            return
        self._ping_due = True
        tr.write(codec.encode_pingreq(None, self.level))
        self._start_keepalive()

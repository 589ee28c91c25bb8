"""Relay mode's seam: what a device connection asks of its upstream leg, and what it is told.

In relay mode (docs/relay.md) every device connection has one upstream leg: an MQTT client
connection to the user's broker with the device's client identifier, opened on the device's
CONNECT. The session core (:class:`ftserver.mqtt.core.SessionCore`) decides what goes up and
what comes down; it asks for the leg with the :class:`~ftserver.mqtt.actions.OpenUpstream`
action and talks to it through :class:`~ftserver.mqtt.actions.SendUpstream` and
:class:`~ftserver.mqtt.actions.CloseUpstream`. The leg itself (``ftserver.relay``) implements
:class:`Upstream`; the connection glue implements :class:`UpstreamListener` and passes what the
leg reports to the core. The MQTT layer never imports ``ftserver.relay``.
"""

from __future__ import annotations

from typing import Protocol

from ftserver.mqtt.packets import Connack, Connect, Disconnect, Packet


class Upstream(Protocol):
    """One open upstream leg, as its device connection uses it."""

    def send(self, packet: Packet, raw: memoryview | None = None) -> None:
        """Encode ``packet`` at the leg's protocol level and write it to the broker now (a
        PUBLISH payload may be a view valid only during the call); ``raw``, when given, is
        ``packet`` already encoded, to be sent as it is."""
        ...

    def close(self, disconnect: Disconnect | None) -> None:
        """End the leg: with ``disconnect`` sent first, or (None) by closing the socket
        without one, so that the broker publishes the Will."""
        ...

    def pause_reading(self) -> None:
        """Stop reading from the broker (the device is not keeping up)."""
        ...

    def resume_reading(self) -> None: ...


class UpstreamListener(Protocol):
    """What a leg reports to the device connection it serves (once per leg, in this order:
    ``upstream_connected`` or ``upstream_failed``; then packets; then ``upstream_closed``)."""

    def upstream_connected(self, leg: Upstream, connack: Connack) -> None:
        """The broker answered the CONNECT (accepted or not: see ``connack.reason_code``)."""
        ...

    def upstream_failed(self, reason: str) -> None:
        """No CONNACK came: ``unreachable``, ``timeout`` or ``closed``."""
        ...

    def upstream_packet(self, packet: Packet) -> None:
        """A packet from the broker after its CONNACK (payload views valid during the call).
        What it causes towards the device is sent at :meth:`upstream_read_done`."""
        ...

    def upstream_read_done(self) -> None:
        """The packets of one read from the broker were reported: send what they caused to
        the device, in one write."""
        ...

    def upstream_closed(self, disconnect: Disconnect | None) -> None:
        """The broker ended the leg: with a DISCONNECT (MQTT 5), or (None) without one."""
        ...

    def upstream_busy(self, busy: bool) -> None:
        """The leg's send buffer is full (True) or drained again (False): the device's
        packets wait in its socket meanwhile (QoS 0 has no other bound)."""
        ...


class Relay(Protocol):
    """Opens upstream legs (one per device connection) to the configured broker."""

    def open(self, connect: Connect, listener: UpstreamListener) -> None:
        """Connect to the broker and send ``connect``; report to ``listener``."""
        ...

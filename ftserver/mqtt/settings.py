"""What an MQTT connection is told about its server: the protocol settings and the access rules.

Both are plain data handed to the session core, so the MQTT layer depends on no configuration
module: ``ftserver.server`` builds :class:`MqttSettings` from its ``Config`` (the defaults and
bounds of every value are defined there, once).
"""

from __future__ import annotations

from dataclasses import dataclass

from ftserver.acl import Acl
from ftserver.auth import PasswordFile


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """The protocol settings of every connection of a server."""

    #: largest packet accepted, fixed header included (announced as Maximum Packet Size)
    max_packet_size: int
    #: seconds a new connection has to send its CONNECT
    connect_timeout: float
    #: largest Keep Alive accepted (seconds; 0: the client's own, however long)
    keepalive_max: int
    #: largest Session Expiry Interval granted (seconds)
    session_expiry_max: int
    #: QoS 1/2 PUBLISHes a client may have unacknowledged towards the server
    receive_maximum: int
    #: highest topic alias a client may define
    topic_alias_maximum: int
    #: response documents in flight towards one client (also bounded by its Receive Maximum)
    max_inflight_responses: int
    #: relay mode: everything but file transfer passes to an upstream broker (docs/relay.md)
    relay: bool = False


@dataclass(slots=True)
class Access:
    """Who may connect, and what a client may do once connected.

    Mutable and shared by every connection of a server: a change applies from the next
    CONNECT on.
    """

    #: MQTT users (None: no password file)
    passwords: PasswordFile | None = None
    #: whether clients without credentials may connect
    anonymous_ok: bool = True
    #: what a verified client certificate's CN stands for: "none", "username", "clientid"
    tls_identity: str = "none"
    #: access rules (None: the built-in ones only)
    acl: Acl | None = None

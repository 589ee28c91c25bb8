"""The MQTT session rules of one connection, without IO: the server side of MQTT 3.1.1 and 5.

:class:`SessionCore` pulls decoded packets from its packet source (the connection's
``Decoder``) and gets timer ticks and the answers to its own requests; it emits
:mod:`~ftserver.mqtt.actions` (bytes to send, pause/resume reading, start/cancel the timer,
verify a login, claim the session, await a deferred command, run a group commit, close). It
owns no socket, no clock (time is passed in) and no event loop, so every rule can be tested by
feeding it bytes and reading what it emits.

It covers CONNECT (authentication, client identifier, keep-alive, session expiry), takeover,
topic aliases, the QoS 1 and QoS 2 flows with the server's Receive Maximum, the client's Receive
Maximum and Maximum Packet Size on what the server sends, subscriptions to response topics and
the batch acknowledgements: the acknowledgements of every packet of one read go out together
once the command handler made the batch durable (a group commit in sync durability).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ftserver.acl import DEFAULT_GRANT
from ftserver.auth import FAILED_LOGIN_DELAY
from ftserver.errors import NotAuthorized, Outcome, RateLimitedLog, outcome_of
from ftserver.mqtt import codec
from ftserver.mqtt.actions import (
    Action,
    AwaitResult,
    CancelTimer,
    ClaimSession,
    Close,
    CloseUpstream,
    Event,
    GroupCommit,
    OpenUpstream,
    PauseReading,
    ResumeReading,
    Send,
    SendUpstream,
    StartTimer,
    VerifyLogin,
)
from ftserver.mqtt.codec import ProtocolError
from ftserver.mqtt.handler import CommandHandler, Pending, SegmentTaker
from ftserver.mqtt.packets import (
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionOptions,
    Unsuback,
    Unsubscribe,
)
from ftserver.mqtt.relaying import (
    CONNACK_FROM_BROKER,
    is_local_topic,
    merge_codes,
    upstream_connect,
)
from ftserver.mqtt.session import NEVER_EXPIRES, Message, Session, SessionRegistry, Subscription
from ftserver.mqtt.settings import Access, MqttSettings
from ftserver.mqtt.spec import MQTT_V5, ReasonCode
from ftserver.names import esc_len
from ftserver.topics import RESPONSE_PREFIX, is_file_command_topic, is_valid_topic_filter

log = logging.getLogger(__name__)
#: refusals at the connection limits come in floods (a fleet reconnecting): rate-limited
_busy_log = RateLimitedLog(log, logging.WARNING)
#: relay mode: a broker that is away fails every device's CONNECT at once
_unavailable_log = RateLimitedLog(log, logging.WARNING)

R = ReasonCode
#: Receive Maximum a client has when it announces none (MQTT 5 §3.1.2.11.3)
DEFAULT_CLIENT_RECEIVE_MAXIMUM = 65535
#: longest client identifier once escaped for a directory name (ftserver.names)
MAX_CLIENT_ID_ESCAPED = 255
#: relay mode: states of the upstream leg
_NO_LEG, _LEG_CONNECTING, _LEG_OPEN = 0, 1, 2


class PacketSource(Protocol):
    """Where the core pulls decoded packets from (``ftserver.mqtt.codec.Decoder``)."""

    @property
    def protocol_level(self) -> int | None: ...

    def next_packet(self) -> Packet | None: ...

    def take_leading(self, take: Callable[[bytearray, int, int], int]) -> int: ...

    @property
    def raw_publish(self) -> memoryview | None:
        """The whole of the last PUBLISH decoded, as received."""
        ...


@dataclass(slots=True)
class _Done:
    """A processed command of the current batch: its acknowledgement and document."""

    pub: Publish
    topic: str
    outcome: Outcome
    document: bool


@dataclass(slots=True)
class _Taken:
    """Segments the native path placed in the current batch: their PUBACKs (success), as
    encoded, in arrival order (4 bytes each)."""

    acks: bytes

    def failed(self, reason_code: int, level: int) -> bytes:
        """The same PUBACKs carrying ``reason_code`` instead (the batch's commit failed)."""
        acks = self.acks
        return b"".join(
            codec.encode_puback(
                Puback(int.from_bytes(acks[k + 2 : k + 4], "big"), reason_code), level
            )
            for k in range(0, len(acks), 4)
        )


@dataclass(slots=True)
class _Job:
    """A deferred command waiting for its result (the token of :class:`AwaitResult`)."""

    session: Session
    pub: Publish
    #: the acknowledgement waits for the result too (else it was sent with the batch)
    held: bool


class SessionCore:
    """The session rules of one connection (see the module docstring).

    Inputs: :meth:`start`, :meth:`receive`, :meth:`timer_fired`, :meth:`login_verified`,
    :meth:`session_claimed`, :meth:`claim_failed`, :meth:`deferred_done`, :meth:`commit_done`,
    :meth:`deliver` and :meth:`close_for_takeover` (from the session registry),
    :meth:`shutdown`, :meth:`connection_lost`. Output: the actions given to ``emit``.
    """

    __slots__ = (
        "_admitted",
        "_aliases",
        "_batch",
        "_broker",
        "_client_max_packet",
        "_client_receive_maximum",
        "_connect",
        "_connecting",
        "_early",
        "_fast",
        "_grant",
        "_held",
        "_keep_alive",
        "_last_rx",
        "_on_timer",
        "_out",
        "_receive_maximum",
        "_sub_wait",
        "_unsub_wait",
        "_up_waiting",
        "_upstream",
        "access",
        "cert_cn",
        "client_id",
        "closed",
        "emit",
        "handler",
        "level",
        "peer",
        "registry",
        "session",
        "settings",
        "source",
    )

    def __init__(
        self,
        settings: MqttSettings,
        access: Access,
        registry: SessionRegistry,
        handler: CommandHandler,
        source: PacketSource,
        emit: Callable[[Action], None],
    ) -> None:
        self.settings = settings
        self.access = access
        self.registry = registry
        self.handler = handler
        self.source = source
        self.emit = emit
        self.level = MQTT_V5
        self.client_id = ""
        self.session: Session | None = None
        #: the peer's address (for the log) and verified certificate CN, from :meth:`start`
        self.peer = "?"
        self.cert_cn: str | None = None
        self.closed = False
        self._batch: list[_Done | _Taken] = []
        #: the native segment path of this connection, once it is the client's (None: none)
        self._fast: SegmentTaker | None = None
        self._out: list[bytes] = []
        #: what the running timer does when it fires (None: no timer)
        self._on_timer: Callable[[float], None] | None = None
        self._keep_alive = 0.0
        self._last_rx = 0.0
        self._aliases: dict[int, str] = {}
        #: QoS 1/2 PUBLISHes whose acknowledgement waits for a deferred result
        self._held = 0
        #: a CONNECT is being authenticated or claimed: nothing after it is processed yet
        self._connecting = False
        self._connect: tuple[Connect, bool] | None = None
        self._grant = DEFAULT_GRANT
        self._client_receive_maximum = DEFAULT_CLIENT_RECEIVE_MAXIMUM
        self._client_max_packet = 0
        #: False: the connection limits were reached; the CONNECT is answered Server busy
        self._admitted = True
        #: Receive Maximum announced to the client (relay mode: also within the broker's)
        self._receive_maximum = settings.receive_maximum
        #: relay mode: the upstream leg's state (_NO_LEG, _LEG_CONNECTING, _LEG_OPEN) and the
        #: broker's CONNACK
        self._upstream = _NO_LEG
        self._broker: Connack | None = None
        #: relay mode: QoS 1/2 packet ids passed to the broker, awaiting its PUBACK/PUBREC
        self._up_waiting: set[int] = set()
        #: relay mode: SUBSCRIBE/UNSUBSCRIBE packet id -> reason codes, -1 where the broker's
        #: answer goes (the local filters answered already)
        self._sub_wait: dict[int, list[int]] = {}
        self._unsub_wait: dict[int, list[int]] = {}
        #: relay mode: what the broker sent between its CONNACK and the session being ready
        #: (the session is claimed meanwhile), handled once it is
        self._early: list[Packet] | None = None

    # -- inputs ------------------------------------------------------------------------------

    def start(
        self, now: float, peer: str = "?", cert_cn: str | None = None, *, admitted: bool = True
    ) -> None:
        """The connection is open: the CONNECT must come within the connect timeout.

        ``admitted`` False: the server is at its connection limits. The CONNECT is then
        answered Server busy (MQTT 3.1.1: Server unavailable) and the connection closed, so
        the client learns why rather than seeing its connection reset; without a CONNECT
        within the connect timeout the connection is closed.
        """
        self.peer = peer
        self.cert_cn = cert_cn
        self._last_rx = now
        self._admitted = admitted
        self._start_timer(self.settings.connect_timeout, self._connect_timeout)

    def alive(self, now: float) -> None:
        """The client is sending (its bytes wait unread while the server holds reading
        back): for the keep-alive, as if they had been received ``now``."""
        self._last_rx = now

    def receive(self, now: float) -> None:
        """Bytes arrived (at ``now``): handle every complete packet of the source."""
        self._last_rx = now
        self._process()

    def timer_fired(self, now: float) -> None:
        action, self._on_timer = self._on_timer, None
        if action is not None:
            action(now)

    def connection_lost(self) -> None:
        """The transport is gone: the session stays (for its expiry interval) or goes."""
        self.closed = True
        self._on_timer = None
        self._end_upstream(None)
        self._drop_fast_path()
        if self.session is not None:
            self.registry.detach(self.session, self)

    def _drop_fast_path(self) -> None:
        fast, self._fast = self._fast, None
        if fast is not None:
            fast.release()

    def close(self, reason: int | None = None, properties: Properties | None = None) -> None:
        """Close the connection, with a DISCONNECT carrying ``reason`` first (MQTT 5).

        In relay mode the upstream leg closes too, without a DISCONNECT (the broker
        publishes the Will) unless the client's own DISCONNECT was passed up first.
        """
        if self.closed:
            return
        self._end_upstream(None)
        if reason is not None and self.level == MQTT_V5 and self.session is not None:
            self._send(codec.encode_disconnect(Disconnect(reason, properties or {}), MQTT_V5))
        self._flush()
        self.closed = True
        self.emit(Close())

    def shutdown(self) -> None:
        self.close(R.SERVER_SHUTTING_DOWN)

    # -- plumbing ----------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._out.append(data)

    def _flush(self) -> None:
        if self._out and not self.closed:
            out, self._out = self._out, []
            self.emit(Send(b"".join(out) if len(out) > 1 else out[0]))
        else:
            self._out.clear()

    def _start_timer(self, delay: float, then: Callable[[float], None]) -> None:
        self._on_timer = then
        self.emit(StartTimer(delay))

    def _cancel_timer(self) -> None:
        if self._on_timer is not None:
            self._on_timer = None
            self.emit(CancelTimer())

    def _process(self) -> None:
        """Handle every complete packet buffered (stopping while a CONNECT is pending).

        Before each packet the native segment path, when this connection has one and may use
        it, takes the run of plain segments at the head of the buffer: they join the batch as
        already placed, acknowledged in arrival order with everything else after the commit.
        """
        source = self.source
        fast = self._fast if self._fast_allowed() else None
        try:
            while not self.closed and not self._connecting:
                if fast is not None and source.take_leading(fast.take):
                    self._batch.append(_Taken(fast.take_acks()))
                packet = source.next_packet()
                if packet is None:
                    break
                self._handle(packet)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        self._end_batch()

    def _fast_allowed(self) -> bool:
        """The native path acknowledges segments without response documents: it runs only
        while nobody listens for this client's documents, and the client may upload."""
        return (
            self._fast is not None
            and self._grant.upload
            and not self.registry.has_subscribers(RESPONSE_PREFIX + self.client_id)
        )

    def _protocol_error(self, exc: ProtocolError) -> None:
        log.info("%s (%s): closing: %s", self.peer, self.client_id or "-", exc.message)
        self.emit(Event("protocol_error"))
        if self.session is None:
            # the CONNECT itself failed: CONNACK with the reason (3.1.1: its return code)
            level = exc.protocol_level or self.source.protocol_level
            if level == MQTT_V5:
                self._connack(Connack(False, exc.reason_code), MQTT_V5)
            elif exc.v3_return_code is not None:
                self._send(bytes((0x20, 2, 0, exc.v3_return_code)))
            self.close()
            return
        self.close(exc.reason_code)

    def _connect_timeout(self, now: float) -> None:
        if self.session is None and not self.closed:
            log.info("%s: no CONNECT within %ss, closing", self.peer, self.settings.connect_timeout)
            self.close()

    def _keep_alive_check(self, now: float) -> None:
        if self.closed:
            return
        limit = self._keep_alive * 1.5
        idle = now - self._last_rx
        if idle >= limit:
            log.info("%s (%s): keep-alive timeout", self.peer, self.client_id)
            self.close(R.KEEP_ALIVE_TIMEOUT)
            return
        self._start_timer(limit - idle, self._keep_alive_check)

    # -- packets -----------------------------------------------------------------------------

    def _handle(self, packet: Packet) -> None:
        if isinstance(packet, Publish):
            self._on_publish(packet)
        elif isinstance(packet, Puback):
            self._on_puback(packet)
        elif isinstance(packet, Connect):
            self._on_connect(packet)
        elif isinstance(packet, Pubrel):
            self._on_pubrel(packet)
        elif isinstance(packet, Pingreq):
            self._send(codec.encode_pingresp(None, self.level))
        elif isinstance(packet, Subscribe):
            self._on_subscribe(packet)
        elif isinstance(packet, Unsubscribe):
            self._on_unsubscribe(packet)
        elif isinstance(packet, Disconnect):
            self._on_disconnect(packet)
        elif isinstance(packet, Pubrec):
            self._on_pubrec(packet)
        elif isinstance(packet, Pubcomp):
            self._on_pubcomp(packet)
        else:
            raise ProtocolError(R.PROTOCOL_ERROR, f"unexpected {type(packet).__name__}")

    # -- CONNECT -----------------------------------------------------------------------------

    def _connack(self, connack: Connack, level: int) -> None:
        # a reason with no MQTT 3.1.1 return code: close without CONNACK
        with contextlib.suppress(ValueError):
            self._send(codec.encode_connack(connack, level))

    def _refuse(self, reason: int) -> None:
        self._connack(Connack(False, reason), self.level)
        self.close()

    def _on_connect(self, p: Connect) -> None:
        level = self.level = p.protocol_level
        self._cancel_timer()
        if not self._admitted:
            _busy_log("%s (%s): connection limit reached, answered busy", self.peer, p.client_id)
            self._refuse(R.SERVER_BUSY)
            return
        props = p.properties
        if level == MQTT_V5 and "authentication_method" in props:
            self._refuse(R.BAD_AUTHENTICATION_METHOD)
            return
        access = self.access
        client_id = p.client_id
        cert_cn = self.cert_cn
        identity = access.tls_identity if cert_cn is not None else "none"
        if identity == "clientid":
            client_id = cert_cn or ""  # the certificate decides who this is
        assigned = False
        if not client_id:
            if level != MQTT_V5 and not p.clean_start:
                self._refuse(R.CLIENT_IDENTIFIER_NOT_VALID)
                return
            client_id = "ft-" + secrets.token_hex(10)
            assigned = True
        if esc_len(client_id) > MAX_CLIENT_ID_ESCAPED:
            log.info("%s: client identifier too long once escaped, refused", self.peer)
            self._refuse(R.CLIENT_IDENTIFIER_NOT_VALID)
            return
        self.client_id = client_id
        username = cert_cn if identity == "username" else p.username
        if access.acl is not None:
            self._grant = access.acl.grant(username, client_id)
        # authentication and (with workers) the session registry answer asynchronously;
        # nothing after the CONNECT is processed until the CONNACK
        certified = identity != "none"
        if not certified and access.passwords is not None and p.username is not None:
            self._connecting = True
            self._connect = (p, assigned)
            self.emit(PauseReading("connect"))
            self.emit(VerifyLogin(p.username, p.password or b""))
            return
        if not certified and not access.anonymous_ok:
            log.info("%s (%s): anonymous client refused", self.peer, client_id)
            self.emit(Event("login_failed"))
            self._refuse(R.NOT_AUTHORIZED)
            return
        self._after_login(p, assigned)

    def login_verified(self, ok: bool) -> None:
        """The answer to :class:`VerifyLogin`."""
        if self.closed or self._connect is None:
            return
        p, assigned = self._connect
        if not ok:
            log.info("%s (%s): bad user name or password", self.peer, self.client_id)
            self.emit(Event("login_failed"))
            # answered only after a delay (slows guessing); reading stays paused meanwhile
            self._start_timer(FAILED_LOGIN_DELAY, self._login_refused)
            return
        self._connecting = False
        self.emit(ResumeReading("connect"))
        self._after_login(p, assigned)
        if not self._connecting:
            self._process()  # what arrived after the CONNECT, held until now

    def _after_login(self, p: Connect, assigned: bool) -> None:
        """The client may connect: in relay mode the broker must accept it too, first."""
        if not self.settings.relay:
            self._claim(p, assigned)
            return
        self._connecting = True
        self._connect = (p, assigned)
        self._upstream = _LEG_CONNECTING
        self.emit(PauseReading("connect"))
        # a v5 client without an identifier gets the broker's (3.1.1: ftserver's, unseen)
        up_id = "" if assigned and self.level == MQTT_V5 else self.client_id
        self.emit(OpenUpstream(upstream_connect(p, up_id, self.settings.session_expiry_max)))

    def upstream_connected(self, connack: Connack) -> None:
        """Relay mode: the broker answered the upstream CONNECT."""
        if self.closed or self._connect is None or self._upstream != _LEG_CONNECTING:
            self._upstream = _LEG_OPEN  # so that it is closed now
            self._end_upstream(None)
            return
        p, assigned = self._connect
        rc = connack.reason_code
        if rc:
            log.info(
                "%s (%s): the broker refused the connection: 0x%02X", self.peer, self.client_id, rc
            )
            self._upstream = _NO_LEG
            self.emit(Event("relay_refused"))
            self._refuse(rc)  # the broker's code (3.1.1: its return code)
            return
        self._upstream = _LEG_OPEN
        self._broker = connack
        broker_id = connack.properties.get("assigned_client_identifier")
        if assigned and broker_id:
            if esc_len(broker_id) > MAX_CLIENT_ID_ESCAPED:
                log.warning("%s: the broker assigned a client identifier too long", self.peer)
                self._refuse(R.CLIENT_IDENTIFIER_NOT_VALID)
                return
            self.client_id = broker_id
            acl = self.access.acl
            if acl is not None:
                self._grant = acl.grant(p.username, broker_id)
        self._connecting = False
        self.emit(ResumeReading("connect"))
        self._early = []
        self._claim(p, assigned)
        if not self._connecting:
            self._process()

    def upstream_failed(self, reason: str) -> None:
        """Relay mode: the broker could not be reached or did not answer in time."""
        if self.closed:
            return
        _unavailable_log(
            "%s (%s): broker unavailable (%s), answered Server unavailable",
            self.peer,
            self.client_id,
            reason,
        )
        self._upstream = _NO_LEG
        self._refuse(R.SERVER_UNAVAILABLE)

    def upstream_closed(self, disconnect: Disconnect | None) -> None:
        """Relay mode: the broker ended the upstream leg; the client is disconnected (MQTT 5:
        with the broker's reason code) and reconnects; its transfers stay staged."""
        self._upstream = _NO_LEG
        if self.closed:
            return
        if self.session is None:  # between the broker's CONNACK and the device's
            self._refuse(R.SERVER_UNAVAILABLE)
            return
        if disconnect is not None and self.level == MQTT_V5:
            props: Properties = {}
            for key in ("reason_string", "server_reference", "user_properties"):
                if key in disconnect.properties:
                    props[key] = disconnect.properties[key]
            reason = disconnect.reason_code or R.UNSPECIFIED_ERROR
        else:
            props, reason = {}, R.UNSPECIFIED_ERROR
        log.info(
            "%s (%s): the broker closed the upstream connection (0x%02X)",
            self.peer,
            self.client_id,
            disconnect.reason_code if disconnect is not None else reason,
        )
        self.emit(Event("relay_lost"))
        self.close(reason, props)

    def _end_upstream(self, disconnect: Disconnect | None) -> None:
        if self._upstream != _NO_LEG:
            self._upstream = _NO_LEG
            self.emit(CloseUpstream(disconnect))

    def _up(self, packet: Packet) -> None:
        self.emit(SendUpstream(packet))

    def upstream_packet(self, packet: Packet) -> None:
        """Relay mode: a packet from the broker (after its CONNACK)."""
        session = self.session
        if self.closed or self._upstream != _LEG_OPEN:
            return
        if session is None:
            if self._early is not None:  # the session is being claimed: handled once it is
                if isinstance(packet, Publish):
                    packet.payload = bytes(packet.payload)  # a view of the leg's buffer
                self._early.append(packet)
            return
        if isinstance(packet, Publish):
            self._relay_down(session, packet)
        elif isinstance(packet, Puback):
            if packet.packet_id in self._up_waiting:
                self._up_waiting.discard(packet.packet_id)
                self._held -= 1
                self._send(codec.encode_puback(packet, self.level))
        elif isinstance(packet, Pubrec):
            pid = packet.packet_id
            if pid in self._up_waiting:
                self._up_waiting.discard(pid)
                self._held -= 1
                if packet.reason_code < 0x80:
                    session.qos2_received[pid] = packet.reason_code
                    session.relayed_up.add(pid)
                else:
                    session.qos2_received.pop(pid, None)
                self._send(codec.encode_pubrec(packet, self.level))
        elif isinstance(packet, Pubcomp):
            pid = packet.packet_id
            if pid in session.relayed_up:
                session.relayed_up.discard(pid)
                session.qos2_received.pop(pid, None)
                self._send(codec.encode_pubcomp(packet, self.level))
        elif isinstance(packet, Pubrel):
            self._relay_pubrel(session, packet)
        elif isinstance(packet, Suback):
            codes = self._sub_wait.pop(packet.packet_id, None)
            if codes is not None:
                merged = merge_codes(codes, packet.reason_codes)
                suback = Suback(packet.packet_id, merged, packet.properties)
                self._send(codec.encode_suback(suback, self.level))
        elif isinstance(packet, Unsuback):
            codes = self._unsub_wait.pop(packet.packet_id, None)
            if codes is not None:
                merged = merge_codes(codes, packet.reason_codes) if self.level == MQTT_V5 else []
                unsuback = Unsuback(packet.packet_id, merged, packet.properties)
                self._send(codec.encode_unsuback(unsuback, self.level))

    def upstream_read_done(self) -> None:
        """Relay mode: the packets of one read from the broker were handled: what they
        caused goes to the client in one write."""
        self._flush()

    def _relay_up(self, session: Session, p: Publish, topic: str) -> None:
        """Pass the client's PUBLISH to the broker; its acknowledgement comes back from there."""
        props = p.properties
        # without a topic alias the packet goes up byte for byte as it came (same level,
        # same flags, same packet identifier): no encoding
        raw = self.source.raw_publish
        if "topic_alias" in props:
            props = {k: v for k, v in props.items() if k != "topic_alias"}  # type: ignore[assignment]
            raw = None
        pid = p.packet_id
        if pid is not None:
            self._held += 1
            self._up_waiting.add(pid)
            if p.qos == 2:
                session.qos2_received[pid] = None
        self.emit(SendUpstream(Publish(topic, p.payload, p.qos, p.retain, p.dup, pid, props), raw))

    def _relay_down(self, session: Session, p: Publish) -> None:
        """A message from the broker: to the client, under the client's Receive Maximum;
        acknowledged to the broker once the client acknowledged it."""
        props = p.properties
        if "topic_alias" in props:
            props = {k: v for k, v in props.items() if k != "topic_alias"}  # type: ignore[assignment]
        if p.qos == 0:
            self._send_message(None, Message(p.topic, p.payload, 0, props, p.retain), dup=False)  # type: ignore[arg-type]
            return
        up_id = p.packet_id
        assert up_id is not None
        if up_id in session.relay_down:
            return  # the broker resends what the client has (or waits for) already
        message = Message(p.topic, bytes(p.payload), p.qos, props, p.retain, up_id)
        if not session.queue and self._can_send_qos1(session):
            pid = session.allocate_packet_id()
            session.inflight[pid] = message
            session.relay_down[up_id] = pid
            self._send_message(pid, message, dup=False)
        else:
            session.enqueue(message)

    def _relay_pubrel(self, session: Session, p: Pubrel) -> None:
        pid = session.relay_down.get(p.packet_id)
        message = session.inflight.get(pid) if pid else None
        if pid and message is not None:
            message.released = True
            self._send(codec.encode_pubrel(Pubrel(pid), self.level))
            return
        # not (or no longer) known here: the flow ends now
        rc = R.PACKET_ID_NOT_FOUND if self.level == MQTT_V5 else 0
        self._up(Pubcomp(p.packet_id, rc))

    def _login_refused(self, now: float) -> None:
        self._refuse(R.BAD_USERNAME_OR_PASSWORD)

    def _claim(self, p: Connect, assigned: bool) -> None:
        if self.registry.bridge is None:
            self._finish_connect(p, assigned, None)
            return
        # the supervisor must make this worker the only place the client id lives (taking it
        # over from another worker if need be) before the CONNACK
        self._connecting = True
        self._connect = (p, assigned)
        self.emit(PauseReading("connect"))
        self.emit(ClaimSession(self.client_id))

    def claim_failed(self, exc: BaseException) -> None:
        """:class:`ClaimSession` failed: the session registry is unavailable."""
        if self.closed:
            return
        log.warning("%s (%s): session registry unavailable: %s", self.peer, self.client_id, exc)
        self._refuse(R.SERVER_UNAVAILABLE)

    def session_claimed(self, blob: dict[str, Any] | None) -> None:
        """The answer to :class:`ClaimSession`: the session another worker handed over."""
        assert self._connect is not None
        p, assigned = self._connect
        if self.closed:
            # the client left while we waited: keep what we were handed, then let go of it
            if blob is not None and not p.clean_start:
                session = self.registry.adopt(blob)
                session.connection = self
                self.registry.detach(session, self)
            elif self.registry.bridge is not None:
                self.registry.bridge.released(self.client_id)
            return
        self._finish_connect(p, assigned, blob)
        self._connecting = False
        self.emit(ResumeReading("connect"))
        self._process()

    def _finish_connect(self, p: Connect, assigned: bool, blob: dict[str, Any] | None) -> None:
        cfg = self.settings
        level = self.level
        props = p.properties
        client_id = self.client_id
        self._connect = None
        if level == MQTT_V5:
            requested = props.get("session_expiry_interval", 0)
        else:
            requested = 0 if p.clean_start else NEVER_EXPIRES
        expiry = min(requested, cfg.session_expiry_max)
        broker = self._broker
        clean = p.clean_start or (broker is not None and not broker.session_present)
        if broker is not None:
            expiry = min(expiry, broker.properties.get("session_expiry_interval", expiry))
        if blob is not None and not clean:
            self.registry.adopt(blob)  # the session comes from another worker
        # relay mode: a session the broker no longer has is gone here too (the client must
        # start afresh; MQTT-3.2.2-4)
        session, present = self.registry.attach(client_id, self, clean)
        self.session = session
        session.expiry_interval = expiry
        keep_alive = p.keep_alive
        server_keep_alive = None
        cap = cfg.keepalive_max
        if cap and level == MQTT_V5 and (keep_alive == 0 or keep_alive > cap):
            keep_alive = server_keep_alive = cap
        self._keep_alive = float(keep_alive)
        if keep_alive:
            self._start_timer(keep_alive * 1.5, self._keep_alive_check)
        self._client_receive_maximum = props.get("receive_maximum", DEFAULT_CLIENT_RECEIVE_MAXIMUM)
        self._client_max_packet = props.get("maximum_packet_size", 0)
        ack_props: Properties = {}
        if broker is not None:
            self._receive_maximum = min(
                cfg.receive_maximum, broker.properties.get("receive_maximum", 65535)
            )
        if level == MQTT_V5:
            ack_props["receive_maximum"] = self._receive_maximum
            ack_props["maximum_packet_size"] = cfg.max_packet_size
            ack_props["topic_alias_maximum"] = cfg.topic_alias_maximum
            if broker is None:
                ack_props["shared_subscription_available"] = 0
            else:
                for key in CONNACK_FROM_BROKER:
                    if key in broker.properties:
                        ack_props[key] = broker.properties[key]
            if assigned:
                ack_props["assigned_client_identifier"] = client_id
            if server_keep_alive is not None:
                ack_props["server_keep_alive"] = server_keep_alive
            if expiry != requested:
                ack_props["session_expiry_interval"] = expiry
        if broker is not None:
            present = broker.session_present
        self._connack(Connack(present, 0, ack_props), level)
        self.emit(Event(f"connect_v{'5' if level == MQTT_V5 else '311'}"))
        self._drop_fast_path()
        self._fast = self.handler.fast_path(client_id, level, cfg.max_packet_size)
        # resend what the session still owes the client, then what waited for it
        for pid, message in list(session.inflight.items()):
            if message.released:
                self._send(codec.encode_pubrel(Pubrel(pid), level))
            else:
                self._send_message(pid, message, dup=True)
        self._drain_queue()
        self._flush()
        early, self._early = self._early, None
        if early:
            for packet in early:
                self.upstream_packet(packet)
            self._flush()

    def _on_disconnect(self, p: Disconnect) -> None:
        if self.session is not None and self.level == MQTT_V5:
            new = p.properties.get("session_expiry_interval")
            if new is not None:
                if self.session.expiry_interval == 0 and new != 0:
                    raise ProtocolError(
                        R.PROTOCOL_ERROR,
                        "MQTT-3.14.2-2: session expiry set in DISCONNECT after 0 at CONNECT",
                    )
                self.session.expiry_interval = min(new, self.settings.session_expiry_max)
        if self._upstream == _LEG_OPEN:
            # passed up as it came: 0x04 keeps the Will, the new session expiry applies there
            self._end_upstream(Disconnect(p.reason_code, p.properties))
        self._end_batch()
        self.close()

    # -- publish (client -> server) ----------------------------------------------------------

    def _on_publish(self, p: Publish) -> None:
        session = self.session
        if session is None:
            raise ProtocolError(R.PROTOCOL_ERROR, "MQTT-3.1.0-1: PUBLISH before CONNECT")
        topic = p.topic
        if self.level == MQTT_V5:
            alias = p.properties.get("topic_alias")
            if alias is not None:
                topic = p.topic = self._resolve_alias(alias, topic)
        qos = p.qos
        if qos == 2:
            pid = p.packet_id
            assert pid is not None
            state = session.qos2_received
            if pid in state:
                rc = state[pid]
                if rc is not None:  # duplicate before PUBREL: acknowledge again only
                    self._send(codec.encode_pubrec(Pubrec(pid, rc), self.level))
                return
        if qos and self._held >= self._receive_maximum:
            raise ProtocolError(
                R.RECEIVE_MAXIMUM_EXCEEDED,
                "MQTT-3.3.4-9: more QoS 1/2 PUBLISH in flight than the Receive Maximum",
            )
        result: Outcome | Pending | None
        if not self._grant.upload and is_file_command_topic(topic):
            result = outcome_of(NotAuthorized())
        else:
            result = self.handler.process(self.client_id, topic, p.payload, qos)
        if result is None:
            if self._upstream == _LEG_OPEN and not is_local_topic(topic):
                self._relay_up(session, p, topic)
                return
            # not a file-transfer command: nobody to route it to in standalone mode
            if qos:
                self._batch.append(_Done(p, topic, Outcome(R.NO_MATCHING_SUBSCRIBERS, ""), False))
            return
        if isinstance(result, Outcome):
            self._batch.append(_Done(p, topic, result, True))
            return
        self._defer(session, p, topic, result)

    def _resolve_alias(self, alias: int, topic: str) -> str:
        """The topic of a PUBLISH carrying a Topic Alias (MQTT 5 §3.3.2.3.4, applied as
        §3.3.4 says; an empty topic without an alias is refused by the decoder)."""
        if not 0 < alias <= self.settings.topic_alias_maximum:
            raise ProtocolError(
                R.TOPIC_ALIAS_INVALID, f"MQTT-3.3.2-8/9: topic alias {alias} invalid"
            )
        if topic:
            self._aliases[alias] = topic
            return topic
        known = self._aliases.get(alias)
        if known is None:
            raise ProtocolError(R.PROTOCOL_ERROR, f"MQTT 5 §3.3.4: topic alias {alias} not defined")
        return known

    def _defer(self, session: Session, p: Publish, topic: str, pending: Pending) -> None:
        ack = pending.ack
        if ack is not None:
            self._batch.append(_Done(p, topic, ack, False))
        else:
            self._held += 1
            if p.qos == 2:
                assert p.packet_id is not None
                session.qos2_received[p.packet_id] = None
        # what answering needs, without the payload (a view of the receive buffer)
        props: Properties = dict(p.properties)  # type: ignore[assignment]
        pub = Publish(topic, b"", p.qos, False, False, p.packet_id, props)
        self.emit(AwaitResult(_Job(session, pub, ack is None), pending.final))

    def deferred_done(self, job: object, result: Outcome | BaseException) -> None:
        """The answer to :class:`AwaitResult`: the command's outcome, or what it raised."""
        assert isinstance(job, _Job)
        pub = job.pub
        if isinstance(result, Outcome):
            outcome = result
        else:  # never leave a command unanswered
            outcome = outcome_of(result, what=pub.topic, client_id=self.client_id)
        if job.held:
            self._held -= 1
            self._acknowledge(job.session, pub, outcome)
            self._flush()
        self._respond(pub, outcome)

    def _acknowledge(self, session: Session, pub: Publish, outcome: Outcome) -> None:
        pid = pub.packet_id
        if pid is None:
            return
        rc = outcome.reason_code
        if pub.qos == 1:
            if session.connection is self and not self.closed:
                self._send(codec.encode_puback(Puback(pid, rc), self.level))
            return
        # QoS 2: the packet id is session state; answer on whichever connection has it now
        if rc < 0x80:
            session.qos2_received[pid] = rc
        else:
            session.qos2_received.pop(pid, None)
        conn = session.connection
        if isinstance(conn, SessionCore) and not conn.closed:
            conn._send(codec.encode_pubrec(Pubrec(pid, rc), conn.level))
            if conn is not self:
                conn._flush()

    def _end_batch(self) -> None:
        if not self._batch:
            self._flush()
            return
        batch, self._batch = self._batch, []
        if self.handler.group_commit_due:
            self.emit(PauseReading("commit"))
            self.emit(GroupCommit(batch))
            return
        try:
            self.handler.commit()
        except Exception as exc:
            batch = self._failed(batch, exc)
        self._answer(batch)

    def commit_done(self, batch: object, error: BaseException | None) -> None:
        """The answer to :class:`GroupCommit`."""
        assert isinstance(batch, list)
        if error is not None:
            batch = self._failed(batch, error)
        self.emit(ResumeReading("commit"))
        self._answer(batch)

    def _failed(self, batch: list[_Done | _Taken], exc: BaseException) -> list[_Done | _Taken]:
        """The batch whose commit raised ``exc``: the commands that succeeded are answered
        with the failure instead."""
        failure = outcome_of(exc, what="commit", client_id=self.client_id)
        out: list[_Done | _Taken] = []
        for d in batch:
            if isinstance(d, _Taken):
                out.append(_Taken(d.failed(failure.reason_code, self.level)))
            elif d.document and d.outcome.reason_code == 0:
                out.append(_Done(d.pub, d.topic, failure, True))
            else:
                out.append(d)
        return out

    def _answer(self, batch: list[_Done | _Taken]) -> None:
        session = self.session
        if session is None:
            return
        for done in batch:
            if isinstance(done, _Taken):
                if session.connection is self and not self.closed:
                    self._send(done.acks)
            else:
                self._acknowledge(session, done.pub, done.outcome)
        self._flush()
        for done in batch:
            if isinstance(done, _Done) and done.document:
                self._respond(done.pub, done.outcome, done.topic)
        self._flush()

    def _respond(self, pub: Publish, outcome: Outcome, topic: str | None = None) -> None:
        props = pub.properties
        self.handler.respond(
            self.client_id,
            pub.topic if topic is None else topic,
            pub.packet_id or 0,
            outcome,
            response_topic=props.get("response_topic"),
            correlation_data=props.get("correlation_data"),
        )

    def _on_pubrel(self, p: Pubrel) -> None:
        session = self.session
        if session is None:
            raise ProtocolError(R.PROTOCOL_ERROR, "MQTT-3.1.0-1: PUBREL before CONNECT")
        state = session.qos2_received
        if self._upstream == _LEG_OPEN and (
            p.packet_id in session.relayed_up or p.packet_id not in state
        ):
            # the broker holds this flow's state (or knows best that there is none)
            session.relayed_up.add(p.packet_id)
            self._up(p)
            return
        if p.packet_id in state and state[p.packet_id] is not None:
            del state[p.packet_id]
            rc = 0
        else:
            rc = R.PACKET_ID_NOT_FOUND if p.packet_id not in state else 0
        self._send(codec.encode_pubcomp(Pubcomp(p.packet_id, rc), self.level))

    # -- publish (server -> client) ----------------------------------------------------------

    def deliver(self, message: Message) -> None:
        """A response document routed to this connection's session."""
        session = self.session
        if session is None or self.closed:
            return
        if message.qos == 0:
            self._send_message(None, message, dup=False)
        elif not session.queue and self._can_send_qos1(session):
            pid = session.allocate_packet_id()
            session.inflight[pid] = message
            self._send_message(pid, message, dup=False)
        else:
            session.enqueue(message)
        self._flush()

    def _can_send_qos1(self, session: Session) -> bool:
        limit = self._client_receive_maximum
        if self._broker is None:
            limit = min(limit, self.settings.max_inflight_responses)
        return len(session.inflight) < limit

    def _send_message(self, pid: int | None, message: Message, *, dup: bool) -> None:
        props = message.properties if self.level == MQTT_V5 else {}
        pub = Publish(
            message.topic,
            message.payload,
            message.qos if pid else 0,
            message.retain,
            dup,
            pid,
            props,
        )
        data = codec.encode_publish(pub, self.level)
        if self._client_max_packet and len(data) > self._client_max_packet:
            log.warning(
                "%s: message on %r exceeds the client's Maximum Packet Size, dropped",
                self.client_id,
                message.topic,
            )
            if pid is not None and self.session is not None:
                self.session.inflight.pop(pid, None)
                self._settle_down(self.session, message, R.UNSPECIFIED_ERROR)
            return
        self._send(data)

    def _settle_down(self, session: Session, message: Message, rc: int) -> None:
        """A relayed message's flow towards the client ended: acknowledge it to the broker."""
        up_id = message.upstream_id
        if up_id is None:
            return
        session.relay_down.pop(up_id, None)
        if self._upstream != _LEG_OPEN:
            return  # the broker sends it again on the next leg
        if self.level != MQTT_V5:
            rc = 0
        if message.qos == 1:
            self._up(Puback(up_id, rc))
        elif message.released:
            self._up(Pubcomp(up_id, rc))
        else:
            self._up(Pubrec(up_id, rc))

    def _drain_queue(self) -> None:
        session = self.session
        if session is None:
            return
        while session.queue and self._can_send_qos1(session):
            message = session.queue.popleft()
            pid = session.allocate_packet_id()
            session.inflight[pid] = message
            if message.upstream_id is not None:
                session.relay_down[message.upstream_id] = pid
            self._send_message(pid, message, dup=False)

    def _on_puback(self, p: Puback) -> None:
        session = self.session
        if session is None:
            raise ProtocolError(R.PROTOCOL_ERROR, "MQTT-3.1.0-1: PUBACK before CONNECT")
        message = session.inflight.pop(p.packet_id, None)
        if message is not None:
            self._settle_down(session, message, p.reason_code)
            self._drain_queue()

    def _on_pubrec(self, p: Pubrec) -> None:
        """The client received a QoS 2 message from the broker (ftserver's own documents are
        QoS 1): passed to the broker, whose PUBREL comes back down."""
        session = self.session
        if session is None:
            raise ProtocolError(R.PROTOCOL_ERROR, "MQTT-3.1.0-1: PUBREC before CONNECT")
        message = session.inflight.get(p.packet_id)
        if message is None or message.qos != 2 or message.upstream_id is None:
            return
        if p.reason_code >= 0x80:  # the flow ends here
            del session.inflight[p.packet_id]
            self._settle_down(session, message, p.reason_code)
            self._drain_queue()
            return
        message.released = True
        if self._upstream == _LEG_OPEN:
            rc = p.reason_code if self.level == MQTT_V5 else 0
            self._up(Pubrec(message.upstream_id, rc))

    def _on_pubcomp(self, p: Pubcomp) -> None:
        session = self.session
        if session is None:
            raise ProtocolError(R.PROTOCOL_ERROR, "MQTT-3.1.0-1: PUBCOMP before CONNECT")
        message = session.inflight.get(p.packet_id)
        if message is None or not message.released:
            return
        del session.inflight[p.packet_id]
        self._settle_down(session, message, p.reason_code)
        self._drain_queue()

    # -- subscriptions -----------------------------------------------------------------------

    def _subscription_code(self, topic_filter: str, qos: int) -> int:
        if not is_valid_topic_filter(topic_filter):
            return R.TOPIC_FILTER_INVALID
        if topic_filter.startswith("$share/"):
            return R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
        if topic_filter.startswith("$"):
            own = RESPONSE_PREFIX + self.client_id
            wild = "+" in topic_filter or "#" in topic_filter
            if (topic_filter != own or wild) and not self._grant.may_subscribe(topic_filter):
                return R.NOT_AUTHORIZED
        return min(qos, 1)

    def _on_subscribe(self, p: Subscribe) -> None:
        session = self.session
        if session is None:
            raise ProtocolError(R.PROTOCOL_ERROR, "MQTT-3.1.0-1: SUBSCRIBE before CONNECT")
        codes: list[int] = []
        ids: list[int | None] = list(p.properties.get("subscription_identifiers", [])) or [None]
        relay = self._upstream == _LEG_OPEN
        upstream: list[tuple[str, SubscriptionOptions]] = []
        for topic_filter, options in p.subscriptions:
            if relay and not is_local_topic(topic_filter):
                if is_valid_topic_filter(topic_filter):
                    upstream.append((topic_filter, options))
                    codes.append(-1)
                else:
                    codes.append(R.TOPIC_FILTER_INVALID if self.level == MQTT_V5 else 0x80)
                continue
            code = self._subscription_code(topic_filter, options.qos)
            if code < 0x80:
                sub = Subscription(options, ids[0])
                self.registry.subscribe(session, topic_filter, sub)
            elif self.level != MQTT_V5:
                code = 0x80
            codes.append(code)
        if upstream:  # the SUBACK waits for the broker's
            self._sub_wait[p.packet_id] = codes
            self._up(Subscribe(p.packet_id, upstream, p.properties))
            return
        self._send(codec.encode_suback(Suback(p.packet_id, codes), self.level))

    def _on_unsubscribe(self, p: Unsubscribe) -> None:
        session = self.session
        if session is None:
            raise ProtocolError(R.PROTOCOL_ERROR, "MQTT-3.1.0-1: UNSUBSCRIBE before CONNECT")
        relay = self._upstream == _LEG_OPEN
        upstream = [f for f in p.topic_filters if relay and not is_local_topic(f)]
        codes = [
            -1
            if relay and not is_local_topic(f)
            else 0
            if self.registry.unsubscribe(session, f)
            else R.NO_SUBSCRIPTION_EXISTED
            for f in p.topic_filters
        ]
        if upstream:  # the UNSUBACK waits for the broker's
            self._unsub_wait[p.packet_id] = codes
            self._up(Unsubscribe(p.packet_id, upstream, p.properties))
            return
        if self.level != MQTT_V5:
            codes = []
        self._send(codec.encode_unsuback(Unsuback(p.packet_id, codes), self.level))

    # -- session -----------------------------------------------------------------------------

    def close_for_takeover(self) -> None:
        """Another connection took the session over (MQTT-3.1.4-3)."""
        log.info("%s (%s): session taken over", self.peer, self.client_id)
        self.emit(Event("takeover"))
        self.close(R.SESSION_TAKEN_OVER)
        self._drop_fast_path()
        self.session = None

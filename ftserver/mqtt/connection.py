"""One MQTT connection: the asyncio glue around the IO-free codec and the session.

Bytes arrive in the decoder's own buffer (``asyncio.BufferedProtocol``); every complete packet
of a read is handled in turn, and the acknowledgements of that batch are sent together after
the store has made its segments durable enough for the configured mode (``fast``: journal
records written; ``sync``: data and journal flushed, one group commit). Reading stops while
the transport's write buffer is full or a sync commit is running (backpressure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ftserver.acl import DEFAULT_GRANT, Acl
from ftserver.auth import FAILED_LOGIN_DELAY, PasswordFile
from ftserver.errors import FtError, NotAuthorized, Outcome, outcome_of
from ftserver.limits import ConnectionCounter, Limits
from ftserver.mqtt import codec
from ftserver.mqtt.codec import Decoder, ProtocolError
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
    Unsuback,
    Unsubscribe,
)
from ftserver.mqtt.session import (
    NEVER_EXPIRES,
    Bridge,
    Message,
    Session,
    SessionRegistry,
    Subscription,
)
from ftserver.mqtt.spec import MQTT_V5, ReasonCode
from ftserver.names import esc_len
from ftserver.topics import RESPONSE_PREFIX, is_file_command_topic, is_valid_topic_filter
from ftserver.transfer.dispatch import Deferred, Dispatcher

if TYPE_CHECKING:
    from ftserver.config import Config

log = logging.getLogger(__name__)

R = ReasonCode
#: Receive Maximum a client has when it announces none (MQTT 5 §3.1.2.11.3)
DEFAULT_CLIENT_RECEIVE_MAXIMUM = 65535


class ServerContext:
    """What every connection of a worker shares."""

    def __init__(
        self,
        config: Config,
        registry: SessionRegistry,
        dispatcher: Dispatcher,
        *,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.dispatcher = dispatcher
        self.store = dispatcher.store
        self.sync_durability = dispatcher.store.durability == "sync"
        self.connections: set[MqttConnection] = set()
        self.on_event = on_event or (lambda _name: None)
        #: connection limits (total, per source address) of this process
        self.admission = ConnectionCounter(Limits())
        #: MQTT users (None: no password file); whether clients without credentials may connect
        self.passwords: PasswordFile | None = None
        self.anonymous_ok = True
        #: what a verified client certificate's CN stands for: "none", "username", "clientid"
        self.tls_identity = "none"
        #: access rules (None: the built-in ones only)
        self.acl: Acl | None = None


@dataclass(slots=True)
class _Done:
    """A processed command in the current batch: its acknowledgement and document."""

    pub: Publish
    topic: str
    outcome: Outcome
    document: bool


class MqttConnection(asyncio.BufferedProtocol):
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.decoder = Decoder(cfg.limits.max_packet_size)
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_event_loop()
        self.level = MQTT_V5
        self.client_id = ""
        self.session: Session | None = None
        self.peer = "?"
        self.closed = False
        self._batch: list[_Done] = []
        self._out: list[bytes] = []
        self._pauses: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._keep_alive = 0.0
        self._last_rx = 0.0
        self._aliases: dict[int, str] = {}
        self._held = 0
        self._connecting = False
        self._admitted = True
        self._ip = ""
        self._grant = DEFAULT_GRANT
        self._client_receive_maximum = DEFAULT_CLIENT_RECEIVE_MAXIMUM
        self._client_max_packet = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # -- asyncio protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr: asyncio.Transport = transport  # type: ignore[assignment]  # uvloop's: no subclass
        self.transport = tr
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._ip = str(peer[0]) if isinstance(peer, tuple) else self.peer
        if not self.ctx.admission.admit(self._ip):
            log.warning("%s: connection limit reached, refused", self.peer)
            self.ctx.on_event("connection_refused")
            self._admitted = False
            self.closed = True
            tr.abort()
            return
        self.ctx.connections.add(self)
        self._last_rx = self.loop.time()
        self._timer = self.loop.call_later(
            self.ctx.config.mqtt.connect_timeout, self._connect_timeout
        )
        self.ctx.on_event("connection_opened")

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.decoder.buffer_updated(nbytes)
        self._last_rx = self.loop.time()
        self._process()

    def _process(self) -> None:
        """Handle every complete packet buffered (stopping while a CONNECT is pending)."""
        decoder = self.decoder
        try:
            while not self.closed and not self._connecting:
                packet = decoder.next_packet()
                if packet is None:
                    break
                self._handle(packet)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        self._end_batch()

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self._pause("write")

    def resume_writing(self) -> None:
        self._resume("write")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._admitted:
            return
        self.ctx.admission.release(self._ip)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.ctx.connections.discard(self)
        if self.session is not None:
            self.ctx.registry.detach(self.session, self)
        self.decoder.detach()
        self.ctx.on_event("connection_closed")

    # -- plumbing ----------------------------------------------------------------------------

    def _pause(self, reason: str) -> None:
        if not self._pauses and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self._pauses.add(reason)

    def _resume(self, reason: str) -> None:
        self._pauses.discard(reason)
        if not self._pauses and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _send(self, data: bytes) -> None:
        self._out.append(data)

    def _flush(self) -> None:
        if self._out and self.transport is not None and not self.closed:
            out, self._out = self._out, []
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        else:
            self._out.clear()

    def close(self, reason: int | None = None) -> None:
        """Close the connection, with a DISCONNECT carrying ``reason`` first (MQTT 5)."""
        if self.closed:
            return
        if reason is not None and self.level == MQTT_V5 and self.session is not None:
            self._send(codec.encode_disconnect(Disconnect(reason), MQTT_V5))
        self._flush()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _protocol_error(self, exc: ProtocolError) -> None:
        log.info("%s (%s): closing: %s", self.peer, self.client_id or "-", exc.message)
        self.ctx.on_event("protocol_error")
        if self.session is None:
            # the CONNECT itself failed: CONNACK with the reason (3.1.1: its return code)
            level = exc.protocol_level or self.decoder.protocol_level
            if level == MQTT_V5:
                self._connack(Connack(False, exc.reason_code), MQTT_V5)
            elif exc.v3_return_code is not None:
                self._send(bytes((0x20, 2, 0, exc.v3_return_code)))
            self.close()
            return
        self.close(exc.reason_code)

    def _connect_timeout(self) -> None:
        self._timer = None
        if self.session is None and not self.closed:
            log.info(
                "%s: no CONNECT within %ss, closing",
                self.peer,
                self.ctx.config.mqtt.connect_timeout,
            )
            self.close()

    def _keep_alive_check(self) -> None:
        self._timer = None
        if self.closed:
            return
        limit = self._keep_alive * 1.5
        idle = self.loop.time() - self._last_rx
        if idle >= limit:
            log.info("%s (%s): keep-alive timeout", self.peer, self.client_id)
            self.close(R.KEEP_ALIVE_TIMEOUT)
            return
        self._timer = self.loop.call_later(limit - idle, self._keep_alive_check)

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
        elif isinstance(packet, (Pubrec, Pubcomp)):
            pass  # ftserver never sends QoS 2: nothing to do (and nothing to break)
        else:
            raise ProtocolError(R.PROTOCOL_ERROR, f"unexpected {type(packet).__name__}")

    def _connack(self, connack: Connack, level: int) -> None:
        # a reason with no MQTT 3.1.1 return code: close without CONNACK
        with contextlib.suppress(ValueError):
            self._send(codec.encode_connack(connack, level))

    def _on_connect(self, p: Connect) -> None:
        level = self.level = p.protocol_level
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        props = p.properties
        if level == MQTT_V5 and "authentication_method" in props:
            self._connack(Connack(False, R.BAD_AUTHENTICATION_METHOD), level)
            self.close()
            return
        client_id = p.client_id
        cert_cn = self._certificate_cn()
        identity = self.ctx.tls_identity if cert_cn is not None else "none"
        if identity == "clientid":
            client_id = cert_cn or ""  # the certificate decides who this is
        assigned = False
        if not client_id:
            if level != MQTT_V5 and not p.clean_start:
                self._connack(Connack(False, R.CLIENT_IDENTIFIER_NOT_VALID), level)
                self.close()
                return
            client_id = "ft-" + secrets.token_hex(10)
            assigned = True
        if esc_len(client_id) > 255:
            log.info("%s: client identifier too long once escaped, refused", self.peer)
            self._connack(Connack(False, R.CLIENT_IDENTIFIER_NOT_VALID), level)
            self.close()
            return
        self.client_id = client_id
        username = cert_cn if identity == "username" else p.username
        if self.ctx.acl is not None:
            self._grant = self.ctx.acl.grant(username, client_id)
        # authentication and (with workers) the session registry answer asynchronously;
        # nothing after the CONNECT is processed until the CONNACK
        certified = identity != "none"
        passwords = self.ctx.passwords
        if not certified and passwords is not None and p.username is not None:
            self._connecting = True
            self._pause("connect")
            self._spawn(self._login_then_connect(passwords, p, assigned))
            return
        if not certified and not self.ctx.anonymous_ok:
            log.info("%s (%s): anonymous client refused", self.peer, client_id)
            self.ctx.on_event("login_failed")
            self._connack(Connack(False, R.NOT_AUTHORIZED), level)
            self.close()
            return
        self._claim(p, assigned)

    def _certificate_cn(self) -> str | None:
        """The subject CN of a verified client certificate (TLS listener), if any."""
        if self.transport is None:
            return None
        cert = self.transport.get_extra_info("peercert")
        if not cert:
            return None
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
        return None

    async def _login_then_connect(
        self, passwords: PasswordFile, p: Connect, assigned: bool
    ) -> None:
        assert p.username is not None
        ok = await passwords.verify(p.username, p.password or b"")
        if self.closed:
            return
        if not ok:
            log.info("%s (%s): bad user name or password", self.peer, self.client_id)
            self.ctx.on_event("login_failed")
            await asyncio.sleep(FAILED_LOGIN_DELAY)
            self._connack(Connack(False, R.BAD_USERNAME_OR_PASSWORD), self.level)
            self.close()
            return
        self._connecting = False
        self._resume("connect")
        self._claim(p, assigned)
        if not self._connecting:
            self._process()  # what arrived after the CONNECT, held until now

    def _claim(self, p: Connect, assigned: bool) -> None:
        bridge = self.ctx.registry.bridge
        if bridge is None:
            self._finish_connect(p, assigned, None)
            return
        # the supervisor must make this worker the only place the client id lives (taking it
        # over from another worker if need be) before the CONNACK
        self._connecting = True
        self._pause("connect")
        self._spawn(self._claim_then_connect(bridge, p, assigned))

    async def _claim_then_connect(self, bridge: Bridge, p: Connect, assigned: bool) -> None:
        try:
            blob = await bridge.claim(self.client_id)
        except Exception as exc:
            log.warning("%s (%s): session registry unavailable: %s", self.peer, self.client_id, exc)
            self._connack(Connack(False, R.SERVER_UNAVAILABLE), self.level)
            self.close()
            return
        if self.closed:
            # the client left while we waited: keep what we were handed, then let go of it
            if blob is not None and not p.clean_start:
                self.ctx.registry.adopt(blob)
                session = self.ctx.registry.sessions[self.client_id]
                session.connection = self
                self.ctx.registry.detach(session, self)
            else:
                bridge.released(self.client_id)
            return
        self._finish_connect(p, assigned, blob)
        self._connecting = False
        self._resume("connect")
        self._process()

    def _finish_connect(self, p: Connect, assigned: bool, blob: dict[str, Any] | None) -> None:
        cfg = self.ctx.config
        level = self.level
        props = p.properties
        client_id = self.client_id
        if level == MQTT_V5:
            requested = props.get("session_expiry_interval", 0)
        else:
            requested = 0 if p.clean_start else NEVER_EXPIRES
        expiry = min(requested, cfg.mqtt.session_expiry_max)
        if blob is not None and not p.clean_start:
            self.ctx.registry.adopt(blob)  # the session comes from another worker
        session, present = self.ctx.registry.attach(client_id, self, p.clean_start)
        self.session = session
        session.expiry_interval = expiry
        keep_alive = p.keep_alive
        server_keep_alive = None
        cap = cfg.mqtt.keepalive_max
        if cap and level == MQTT_V5 and (keep_alive == 0 or keep_alive > cap):
            keep_alive = server_keep_alive = cap
        self._keep_alive = float(keep_alive)
        if keep_alive:
            self._timer = self.loop.call_later(keep_alive * 1.5, self._keep_alive_check)
        self._client_receive_maximum = props.get("receive_maximum", DEFAULT_CLIENT_RECEIVE_MAXIMUM)
        self._client_max_packet = props.get("maximum_packet_size", 0)
        ack_props: Properties = {}
        if level == MQTT_V5:
            ack_props["receive_maximum"] = cfg.mqtt.receive_maximum
            ack_props["maximum_packet_size"] = cfg.limits.max_packet_size
            ack_props["topic_alias_maximum"] = cfg.mqtt.topic_alias_maximum
            ack_props["shared_subscription_available"] = 0
            if assigned:
                ack_props["assigned_client_identifier"] = client_id
            if server_keep_alive is not None:
                ack_props["server_keep_alive"] = server_keep_alive
            if expiry != requested:
                ack_props["session_expiry_interval"] = expiry
        self._connack(Connack(present, 0, ack_props), level)
        self.ctx.on_event(f"connect_v{'5' if level == MQTT_V5 else '311'}")
        # resend what the session still owes the client, then what waited for it
        for pid, message in list(session.inflight.items()):
            self._send_message(pid, message, dup=True)
        self._drain_queue()
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
                self.session.expiry_interval = min(new, self.ctx.config.mqtt.session_expiry_max)
        self._end_batch()
        self.close()

    # -- publish (client -> server) ----------------------------------------------------------

    def _on_publish(self, p: Publish) -> None:
        if self.session is None:
            raise ProtocolError(R.PROTOCOL_ERROR, "MQTT-3.1.0-1: PUBLISH before CONNECT")
        topic = p.topic
        if self.level == MQTT_V5:
            alias = p.properties.get("topic_alias")
            if alias is not None:
                if not 0 < alias <= self.ctx.config.mqtt.topic_alias_maximum:
                    raise ProtocolError(
                        R.TOPIC_ALIAS_INVALID, f"MQTT-3.3.2-8/9: topic alias {alias} invalid"
                    )
                if topic:
                    self._aliases[alias] = topic
                else:
                    known = self._aliases.get(alias)
                    if known is None:
                        raise ProtocolError(
                            R.PROTOCOL_ERROR, f"MQTT-3.3.4-?: topic alias {alias} not defined"
                        )
                    topic = p.topic = known
            # (an empty topic without an alias is refused by the decoder)
        qos = p.qos
        if qos == 2:
            pid = p.packet_id
            assert pid is not None
            state = self.session.qos2_received
            if pid in state:
                rc = state[pid]
                if rc is not None:  # duplicate before PUBREL: acknowledge again only
                    self._send(codec.encode_pubrec(Pubrec(pid, rc), self.level))
                return
        if qos and self._held >= self.ctx.config.mqtt.receive_maximum:
            raise ProtocolError(
                R.RECEIVE_MAXIMUM_EXCEEDED,
                "MQTT-3.3.4-9: more QoS 1/2 PUBLISH in flight than the Receive Maximum",
            )
        if not self._grant.upload and is_file_command_topic(topic):
            result: Outcome | Deferred | None = outcome_of(NotAuthorized())
        else:
            result = self.ctx.dispatcher.process(self.client_id, topic, p.payload, qos)
        if result is None:
            # not a file-transfer command: nobody to route it to in standalone mode
            if qos:
                self._batch.append(_Done(p, topic, Outcome(R.NO_MATCHING_SUBSCRIBERS, ""), False))
            return
        if isinstance(result, Outcome):
            self._batch.append(_Done(p, topic, result, True))
            return
        # Deferred
        if result.ack is not None:
            self._batch.append(_Done(p, topic, result.ack, False))
        else:
            self._held += 1
            if qos == 2:
                assert p.packet_id is not None
                self.session.qos2_received[p.packet_id] = None
        props = dict(p.properties)
        packet = Publish(topic, b"", qos, False, False, p.packet_id, props)  # type: ignore[arg-type]
        self._spawn(self._complete_deferred(self.session, packet, result))

    async def _complete_deferred(self, session: Session, pub: Publish, deferred: Deferred) -> None:
        try:
            outcome = await deferred.final
        except Exception as exc:  # never leave a command unanswered
            outcome = outcome_of(exc, what=pub.topic, client_id=self.client_id)
        if deferred.ack is None:
            self._held -= 1
            self._acknowledge(session, pub, outcome)
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
        if isinstance(conn, MqttConnection) and not conn.closed:
            conn._send(codec.encode_pubrec(Pubrec(pid, rc), conn.level))
            if conn is not self:
                conn._flush()

    def _end_batch(self) -> None:
        if not self._batch:
            self._flush()
            return
        store = self.ctx.store
        if self.ctx.sync_durability and store.needs_commit:
            batch, self._batch = self._batch, []
            self._pause("commit")
            self._spawn(self._commit_then_answer(batch))
            return
        batch, self._batch = self._batch, []
        try:
            store.commit()
        except FtError as exc:
            batch = [self._failed(d, exc) for d in batch]
        self._answer(batch)

    async def _commit_then_answer(self, batch: list[_Done]) -> None:
        try:
            await self.ctx.store.commit_sync()
        except FtError as exc:
            batch = [self._failed(d, exc) for d in batch]
        finally:
            self._resume("commit")
        self._answer(batch)

    @staticmethod
    def _failed(done: _Done, exc: FtError) -> _Done:
        if done.document and done.outcome.reason_code == 0:
            return _Done(done.pub, done.topic, outcome_of(exc), True)
        return done

    def _answer(self, batch: list[_Done]) -> None:
        session = self.session
        if session is None:
            return
        for done in batch:
            self._acknowledge(session, done.pub, done.outcome)
        self._flush()
        for done in batch:
            if done.document:
                self._respond(done.pub, done.outcome, done.topic)
        self._flush()

    def _respond(self, pub: Publish, outcome: Outcome, topic: str | None = None) -> None:
        props = pub.properties
        self.ctx.dispatcher.respond(
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
        limit = min(self._client_receive_maximum, self.ctx.config.limits.max_inflight_responses)
        return len(session.inflight) < limit

    def _send_message(self, pid: int | None, message: Message, *, dup: bool) -> None:
        props = message.properties if self.level == MQTT_V5 else {}
        pub = Publish(
            message.topic, message.payload, message.qos if pid else 0, False, dup, pid, props
        )
        data = codec.encode_publish(pub, self.level)
        if self._client_max_packet and len(data) > self._client_max_packet:
            log.warning(
                "%s: response on %r exceeds the client's Maximum Packet Size, dropped",
                self.client_id,
                message.topic,
            )
            if pid is not None and self.session is not None:
                self.session.inflight.pop(pid, None)
            return
        self._send(data)

    def _drain_queue(self) -> None:
        session = self.session
        if session is None:
            return
        while session.queue and self._can_send_qos1(session):
            message = session.queue.popleft()
            pid = session.allocate_packet_id()
            session.inflight[pid] = message
            self._send_message(pid, message, dup=False)

    def _on_puback(self, p: Puback) -> None:
        session = self.session
        if session is None:
            raise ProtocolError(R.PROTOCOL_ERROR, "MQTT-3.1.0-1: PUBACK before CONNECT")
        if session.inflight.pop(p.packet_id, None) is not None:
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
        for topic_filter, options in p.subscriptions:
            code = self._subscription_code(topic_filter, options.qos)
            if code < 0x80:
                sub = Subscription(options, ids[0])
                self.ctx.registry.subscribe(session, topic_filter, sub)
            elif self.level != MQTT_V5:
                code = 0x80
            codes.append(code)
        self._send(codec.encode_suback(Suback(p.packet_id, codes), self.level))

    def _on_unsubscribe(self, p: Unsubscribe) -> None:
        session = self.session
        if session is None:
            raise ProtocolError(R.PROTOCOL_ERROR, "MQTT-3.1.0-1: UNSUBSCRIBE before CONNECT")
        codes = [
            0 if self.ctx.registry.unsubscribe(session, f) else R.NO_SUBSCRIPTION_EXISTED
            for f in p.topic_filters
        ]
        if self.level != MQTT_V5:
            codes = []
        self._send(codec.encode_unsuback(Unsuback(p.packet_id, codes), self.level))

    # -- session -----------------------------------------------------------------------------

    def close_for_takeover(self) -> None:
        """Another connection took the session over (MQTT-3.1.4-3)."""
        log.info("%s (%s): session taken over", self.peer, self.client_id)
        self.ctx.on_event("takeover")
        self.close(R.SESSION_TAKEN_OVER)
        self.session = None

    def shutdown(self) -> None:
        self.close(R.SERVER_SHUTTING_DOWN)

    async def wait_idle(self) -> None:
        """Wait for deferred commands (held fins) of this connection."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

"""The incremental MQTT 3.1.1 / 5.0 decoder: bytes in, packets out, nothing else.

:class:`Decoder` frames and decodes the packets a peer sends. It owns its receive buffer and
fits ``asyncio.BufferedProtocol`` directly (:meth:`Decoder.get_buffer`,
:meth:`Decoder.buffer_updated`); :meth:`Decoder.feed` copies bytes in for everything else.
Decoded packets come out of :meth:`Decoder.next_packet` one at a time. Every length read from
the wire is checked against the bytes left in the packet and against the limits before it is
used; anything that breaks the specification raises a :class:`ProtocolError` whose message
names the statement broken and whose ``reason_code`` is what MQTT 5 says to answer with.

The module reads top to bottom: the checks made on the first byte of a packet, the
bounds-checked reader of one packet's body (:class:`_Reader`), the receive buffer
(:class:`_ReceiveBuffer`: how bytes are held between reads, nothing about MQTT), then the
:class:`Decoder` that frames packets in that buffer and decodes their bodies.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, Final, cast

from ftserver.mqtt.errors import (
    MalformedPacket,
    PacketTooLarge,
    ProtocolError,
    UnsupportedProtocolVersion,
    malformed,
    null_rule,
    packet_id_rule,
    protocol_error,
    utf8_rule,
)
from ftserver.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
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
    Will,
)
from ftserver.mqtt.spec import (
    FIXED_HEADER_FLAGS,
    MAX_PACKET_SIZE,
    MQTT_V5,
    MQTT_V311,
    PROPERTIES_ALLOWED,
    PROPERTY_BY_ID,
    PROTOCOL_NAME,
    REASON_CODES,
    SENT_BY_CLIENT,
    SENT_BY_SERVER,
    SUPPORTED_PROTOCOL_LEVELS,
    V3_SUBACK_RETURN_CODES,
    WILL_PROPERTIES_ALLOWED,
    ConnackReturnCode,
    PacketType,
    PropertySpec,
    PropertyType,
    ReasonCode,
    ValueRule,
)

__all__ = ["DEFAULT_READ_SIZE", "Decoder"]

#: Free space the decoder offers to each read when no larger packet is pending.
DEFAULT_READ_SIZE: Final = 64 * 1024

_TOPIC_NAME_INVALID: Final = int(ReasonCode.TOPIC_NAME_INVALID)


# --------------------------------------------------------------------------------------------
# Fixed tables, and which first bytes may start a packet


_FLAG_RULES: Final = {
    PacketType.PUBREL: "MQTT-3.6.1-1",
    PacketType.SUBSCRIBE: "MQTT-3.8.1-1",
    PacketType.UNSUBSCRIBE: "MQTT-3.10.1-1",
    PacketType.DISCONNECT: "MQTT-3.14.1-1",
    PacketType.AUTH: "MQTT-3.15.1-1",
}
_REASON_RULES: Final = {
    PacketType.CONNACK: "MQTT-3.2.2-8",
    PacketType.PUBACK: "MQTT-3.4.2-1",
    PacketType.PUBREC: "MQTT-3.5.2-1",
    PacketType.PUBREL: "MQTT-3.6.2-1",
    PacketType.PUBCOMP: "MQTT-3.7.2-1",
    PacketType.SUBACK: "MQTT-3.9.3-2",
    PacketType.UNSUBACK: "MQTT-3.11.3-2",
    PacketType.DISCONNECT: "MQTT-3.14.2-1",
    PacketType.AUTH: "MQTT-3.15.2-1",
}
#: Largest Remaining Length of packets whose size is fixed, checked from the header so that a
#: bogus length is refused before its body is buffered.
_MAX_BODY_V311: Final[dict[int, int]] = {
    PacketType.CONNACK: 2,
    PacketType.PUBACK: 2,
    PacketType.PUBREC: 2,
    PacketType.PUBREL: 2,
    PacketType.PUBCOMP: 2,
    PacketType.UNSUBACK: 2,
    PacketType.PINGREQ: 0,
    PacketType.PINGRESP: 0,
    PacketType.DISCONNECT: 0,
}
_MAX_BODY_V5: Final[dict[int, int]] = {PacketType.PINGREQ: 0, PacketType.PINGRESP: 0}
_PUBLISH: Final = int(PacketType.PUBLISH)

#: Every valid SUBSCRIBE options byte decoded once (frozen, so shared between packets).
_SUB_OPTIONS: Final = tuple(
    SubscriptionOptions(
        qos=b & 0x03,
        no_local=bool(b & 0x04),
        retain_as_published=bool(b & 0x08),
        retain_handling=(b >> 4) & 0x03,
    )
    for b in range(64)
)


def _first_byte_error(first: int, server: bool, level: int | None) -> MalformedPacket | None:
    """Why a packet may not start with ``first`` in this state, or None if it may."""
    ptype = first >> 4
    flags = first & 0x0F
    v5 = level != MQTT_V311
    if ptype == 0 or (ptype == PacketType.AUTH and not v5):
        return malformed("§2.1.2", f"packet type {ptype} is reserved")
    kind = PacketType(ptype)
    if server:
        if level is None:
            if kind != PacketType.CONNECT:
                return protocol_error("MQTT-3.1.0-1", f"{kind.name} before CONNECT")
        elif kind == PacketType.CONNECT:
            return protocol_error("MQTT-3.1.0-2", "a second CONNECT")
        elif kind not in SENT_BY_CLIENT:
            return protocol_error("§2.1.2", f"{kind.name} is sent by a Server, not a Client")
    elif kind not in SENT_BY_SERVER or (kind == PacketType.DISCONNECT and not v5):
        return protocol_error("§2.1.2", f"{kind.name} is not sent by a Server")
    if kind == PacketType.PUBLISH:
        qos = (flags >> 1) & 0x03
        if qos == 3:
            return malformed("MQTT-3.3.1-4", "PUBLISH with both QoS bits set")
        if not qos and flags & 0x08:
            return malformed("MQTT-3.3.1-2", "PUBLISH QoS 0 with the DUP flag set")
    elif flags != FIXED_HEADER_FLAGS[kind]:
        rule = _FLAG_RULES.get(kind, "MQTT-2.1.3-1" if v5 else "MQTT-2.2.2-1")
        return malformed(rule, f"{kind.name} with reserved flags 0b{flags:04b}")
    return None


@functools.cache
def _first_byte_table(server: bool, level: int | None) -> bytes:
    """1 for each first byte a packet may start with in this state, else 0."""
    return bytes(_first_byte_error(b, server, level) is None for b in range(256))


# --------------------------------------------------------------------------------------------
# One packet's body


def _varint_at(
    buf: bytearray, pos: int, end: int, too_long: str, not_shortest: str
) -> tuple[int, int] | None:
    """The Variable Byte Integer at ``buf[pos:end]`` and the position after it, or None when
    it is not complete yet. MQTT-1.5.5-1 refusals carry the caller's wording."""
    value = 0
    shift = 0
    while True:
        if pos >= end:
            return None
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift == 28:
            raise malformed("MQTT-1.5.5-1", too_long)
    if byte == 0 and shift:
        raise malformed("MQTT-1.5.5-1", not_shortest)
    return value, pos


class _Reader:
    """A bounds-checked cursor over one packet's body inside the receive buffer."""

    __slots__ = ("buf", "end", "pos", "v5", "view")

    def __init__(self, buf: bytearray, view: memoryview, pos: int, end: int, v5: bool) -> None:
        self.buf = buf
        self.view = view
        self.pos = pos
        self.end = end
        self.v5 = v5

    def short(self, what: str) -> MalformedPacket:
        return malformed("§2.1.4", f"{what} runs past the end of the packet (Remaining Length)")

    def u8(self, what: str) -> int:
        pos = self.pos
        if pos >= self.end:
            raise self.short(what)
        self.pos = pos + 1
        return self.buf[pos]

    def u16(self, what: str) -> int:
        pos = self.pos
        if self.end - pos < 2:
            raise self.short(what)
        self.pos = pos + 2
        buf = self.buf
        return (buf[pos] << 8) | buf[pos + 1]

    def u32(self, what: str) -> int:
        pos = self.pos
        if self.end - pos < 4:
            raise self.short(what)
        self.pos = pos + 4
        return int.from_bytes(self.buf[pos : pos + 4], "big")

    def varint(self, what: str) -> int:
        got = _varint_at(
            self.buf,
            self.pos,
            self.end,
            f"{what} is a Variable Byte Integer over 4 bytes",
            f"{what} is not encoded in the fewest bytes",
        )
        if got is None:
            raise self.short(what)
        value, self.pos = got
        return value

    def raw(self, n: int, what: str) -> memoryview:
        pos = self.pos
        if self.end - pos < n:
            raise self.short(what)
        self.pos = pos + n
        return self.view[pos : pos + n]

    def utf8(self, what: str) -> str:
        data = self.raw(self.u16(f"length of {what}"), what)
        try:
            text = str(data, "utf-8")
        except UnicodeDecodeError:
            raise malformed(utf8_rule(self.v5), f"{what} is not well-formed UTF-8") from None
        if "\x00" in text:
            raise malformed(null_rule(self.v5), f"{what} contains U+0000")
        return text

    def binary(self, what: str) -> bytes:
        return bytes(self.raw(self.u16(f"length of {what}"), what))

    def topic_name(self, what: str) -> str:
        """A topic name (here the Will Topic) that may be empty but has no wildcards."""
        topic = self.utf8(what)
        if "+" in topic or "#" in topic:
            raise malformed(
                "MQTT-4.7.0-1", f"{what} {topic!r} contains a wildcard", _TOPIC_NAME_INVALID
            )
        return topic

    def properties(self, packet_type: PacketType | None) -> Properties:
        """A property set; ``packet_type`` None means the Will Properties of CONNECT."""
        buf = self.buf
        pos = self.pos
        if pos < self.end and buf[pos] == 0:  # Property Length 0, the common case
            self.pos = pos + 1
            return {}
        length = self.varint("Property Length")
        if length > self.end - self.pos:
            raise self.short("property set")
        outer_end = self.end
        self.end = end = self.pos + length
        if packet_type is None:
            allowed = WILL_PROPERTIES_ALLOWED
        else:
            allowed = PROPERTIES_ALLOWED[packet_type]
        props: dict[str, Any] = {}
        while self.pos < end:
            pos = self.pos
            ident = buf[pos]
            if ident < 0x80:  # every identifier fits one byte; others are still read right
                self.pos = pos + 1
            else:
                ident = self.varint("property identifier")
            spec = PROPERTY_BY_ID.get(ident)
            if spec is None or ident not in allowed:
                name = spec.id.name if spec is not None else f"0x{ident:02X}"
                where = _where(packet_type)
                raise malformed("§2.2.2.2", f"property {name} is not valid in {where}")
            kind = spec.type
            if kind is _UTF8:
                value: Any = self.utf8(spec.key)
            elif kind is _TWO_BYTE_INT:
                value = self.u16(spec.key)
            elif kind is _UTF8_PAIR:
                value = (self.utf8(spec.key), self.utf8(spec.key))
            elif kind is _BINARY:
                value = self.binary(spec.key)
            elif kind is _BYTE:
                value = self.u8(spec.key)
            elif kind is _FOUR_BYTE_INT:
                value = self.u32(spec.key)
            else:
                value = self.varint(spec.key)
            if spec.rule is not _ANY:
                _check_rule(spec, value, packet_type)
            key = spec.key
            if spec.repeatable_in:
                values = props.get(key)
                if values is None:
                    props[key] = [value]
                elif packet_type is None or packet_type in spec.repeatable_in:
                    values.append(value)
                else:
                    raise protocol_error(
                        "§2.2.2.2", f"{spec.id.name} appears twice in {packet_type.name}"
                    )
            elif key in props:
                where = _where(packet_type)
                raise protocol_error("§2.2.2.2", f"{spec.id.name} appears twice in {where}")
            else:
                props[key] = value
        self.end = outer_end
        return cast(Properties, props)


_UTF8: Final = PropertyType.UTF8
_TWO_BYTE_INT: Final = PropertyType.TWO_BYTE_INT
_UTF8_PAIR: Final = PropertyType.UTF8_PAIR
_BINARY: Final = PropertyType.BINARY
_BYTE: Final = PropertyType.BYTE
_FOUR_BYTE_INT: Final = PropertyType.FOUR_BYTE_INT
_ANY: Final = ValueRule.ANY


def _where(packet_type: PacketType | None) -> str:
    return "Will Properties" if packet_type is None else packet_type.name


def _check_rule(spec: PropertySpec, value: Any, packet_type: PacketType | None) -> None:
    """Value constraints beyond the wire type; breaking one is a Protocol Error."""
    rule = spec.rule
    if rule is ValueRule.BOOLEAN:
        if value not in (0, 1):
            where = _where(packet_type)
            raise protocol_error("§2.2.2.2", f"{spec.id.name} in {where} is {value!r}, not 0 or 1")
    elif rule is ValueRule.NONZERO:
        if value == 0:
            raise protocol_error("§2.2.2.2", f"{spec.id.name} in {_where(packet_type)} is 0")
    elif rule is ValueRule.TOPIC_NAME:
        if not value:
            raise protocol_error(
                "MQTT-4.7.3-1", f"{spec.id.name} in {_where(packet_type)} is empty"
            )
        if "+" in value or "#" in value:
            raise protocol_error("MQTT-3.3.2-14", f"{spec.id.name} {value!r} contains a wildcard")


# --------------------------------------------------------------------------------------------
# The receive buffer


class _ReceiveBuffer:
    """Where received bytes wait until the packet they belong to is complete.

    This class is all the buffer management there is; the :class:`Decoder` below only frames
    and decodes packets in it. Its contract with the decoder, for whoever replaces it:

    - ``_buf`` (a bytearray) and ``_view`` (a memoryview of it) hold the unconsumed bytes at
      ``[_start, _end)``; the decoder reads them there and advances ``_start`` past each
      packet it decodes, then calls :meth:`_consumed`. Payloads are handed out as slices of
      ``_view``.
    - ``_need`` is the total size of the packet at ``_start`` once its header has been read
      (0 before): the decoder sets it, the buffer sizes the next read with it.
    - :meth:`_release` drops the buffer for good (the decoder failed).

    The allocation policy is what keeps an idle connection cheap and a stalled one bounded
    by what it sent: there is no buffer while nothing is buffered (one is allocated by the
    read that needs it, ``read_size`` bytes, and dropped once its last packet is consumed);
    a packet larger than that grows the buffer as its bytes arrive, by half of what is held
    at most (``tight``: an eighth), never to the announced size at once (unless the peer
    already completed a packet that large, see :meth:`_want`); and bytes are
    moved down within the buffer when that makes room and no view is pinned, or copied into
    a smaller one when the buffer is more than twice what the pending packet needs.
    Dropping never invalidates a payload view: the view keeps its buffer alive, and a
    dropped buffer is never written again.
    """

    __slots__ = ("_buf", "_end", "_large", "_need", "_pinned", "_read_size", "_start", "_view")

    def __init__(self, read_size: int) -> None:
        if read_size < 1:
            raise ValueError("read_size must be positive")
        self._read_size = read_size
        self._buf = _NO_BUFFER
        self._view = _NO_VIEW
        self._start = 0  # first byte not yet consumed
        self._end = 0  # one past the last byte received
        self._need = 0  # total size of the packet being buffered, once its header is known
        self._large = 0  # size of the last packet larger than read_size that completed
        self._pinned = False  # views into _buf are in use: never move bytes within it

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed by a decoded packet."""
        return self._end - self._start

    @property
    def missing(self) -> int:
        """Bytes the packet being received still lacks (0: none pending, or its header is
        not complete yet)."""
        return self._need - (self._end - self._start) if self._need else 0

    @property
    def capacity(self) -> int:
        """Size of the receive buffer in bytes (0: none allocated)."""
        return len(self._buf)

    def get_buffer(self, sizehint: int = -1, *, tight: bool = False) -> memoryview:
        """Writable free space for the next read (``asyncio.BufferedProtocol.get_buffer``).

        The view is at least ``read_size`` bytes; for a pending packet larger than that it
        is up to half the bytes already held (so the buffer grows with what arrives), an
        eighth when ``tight`` (the worker's budget for partial packets is half spent).
        ``sizehint`` is only a hint (asyncio allows ignoring it) and is used as a lower bound
        when positive.
        """
        want = self._want(tight)
        if sizehint > want:
            want = sizehint
        self._reserve(want)
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """Record that ``nbytes`` were written into the view :meth:`get_buffer` returned."""
        if not 0 <= nbytes <= len(self._buf) - self._end:
            raise ValueError(f"buffer_updated({nbytes}) exceeds the buffer handed out")
        self._end += nbytes

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (copied into the receive buffer)."""
        n = data.nbytes if isinstance(data, memoryview) else len(data)
        if not n:
            return
        self._reserve(max(n, self._want(False)))
        end = self._end
        self._buf[end : end + n] = data
        self._end = end + n

    def detach(self) -> None:
        """Keep every payload view handed out so far valid for as long as it is referenced.

        The decoder stops reusing the memory behind them and continues in a new buffer the
        next time it needs room. Costs one allocation and a copy of the unconsumed bytes then.
        """
        self._pinned = True

    def close(self) -> None:
        """The peer is gone: let the receive buffer go now, not when the decoder is collected
        (payload views handed out stay valid: they keep their part of it alive)."""
        self._drop()

    def shrink(self) -> None:
        """Drop the receive buffer if nothing is buffered (the decoder does so itself once a
        read's packets are consumed; this is for a buffer a read left empty)."""
        if self._start == self._end:
            self._drop()

    def _want(self, tight: bool) -> int:
        """Free space to offer the next read (see the class docstring).

        Once the rest of a large packet fits, a read size more is offered, so that the read
        goes on into the next packet and the buffer is reused for it rather than emptied.
        A packet no larger than the last large one this peer completed gets its room at once
        (unless ``tight``): a stream of large segments does not regrow the buffer for each.
        """
        rs = self._read_size
        need = self._need
        if not need:
            return rs
        missing = need - (self._end - self._start)
        if missing <= rs:
            return rs
        if tight:
            step = (self._end - self._start) >> 3
        elif need <= self._large:
            return missing + rs
        else:
            step = (self._end - self._start) >> 1
        if step < rs:
            step = rs
        return missing + rs if missing <= step else step

    def _reserve(self, want: int) -> None:
        """Make at least ``want`` bytes free after ``_end``."""
        start = self._start
        end = self._end
        size = len(self._buf)
        if size - end >= want:
            return
        used = end - start
        if not self._pinned and size - used >= want and size <= 2 * max(used + want, self._need):
            buf = self._buf
            buf[:used] = buf[start:end]  # same length: an in-place move, allowed with views out
            self._start = 0
            self._end = used
            return
        self._new_buffer(used + want)

    def _new_buffer(self, size: int) -> None:
        used = self._end - self._start
        buf = bytearray(size)
        buf[:used] = self._view[self._start : self._end]
        self._buf = buf
        self._view = memoryview(buf)
        self._start = 0
        self._end = used
        self._pinned = False

    def _consumed(self) -> None:
        """The decoder advanced ``_start``: with nothing left, let the buffer go."""
        if self._start == self._end:
            self._drop()

    def _drop(self) -> None:
        """No buffer until the next read (views handed out keep their part of it alive)."""
        self._buf = _NO_BUFFER
        self._view = _NO_VIEW
        self._start = self._end = self._need = 0
        self._pinned = False

    def _release(self) -> None:
        """Drop the receive buffer for good: the decoder failed."""
        self._drop()


#: The buffer of every decoder holding nothing (never written: it has no room).
_NO_BUFFER: Final = bytearray()
_NO_VIEW: Final = memoryview(_NO_BUFFER)


# --------------------------------------------------------------------------------------------
# The decoder


class Decoder(_ReceiveBuffer):
    """Incremental decoder of the packets one peer sends.

    ``max_packet_size`` bounds the whole packet (fixed header included, as MQTT 5's Maximum
    Packet Size does); a larger Remaining Length raises :class:`PacketTooLarge` from the header,
    before any of the body is buffered. It is a plain attribute: a session may start low and
    raise it once the CONNECT is accepted; a change applies to the next packet header read.

    A server-side decoder (``server=True``, the default) with no ``protocol_level`` accepts
    only CONNECT first (MQTT-3.1.0-1) and learns the level from it; a second CONNECT is a
    Protocol Error (MQTT-3.1.0-2). Given a ``protocol_level`` it assumes the CONNECT was
    handled elsewhere. A client-side decoder (``server=False``) must be told the level it sent.

    Bytes come in through the methods of its receive buffer (:meth:`get_buffer` and
    :meth:`buffer_updated`, or :meth:`feed`); ``read_size`` is the free space it offers each
    read.

    **Payload lifetime.** A decoded PUBLISH carries ``payload`` as a memoryview into the
    receive buffer: no copy is made. Such a view stays valid until the next call to
    :meth:`get_buffer` or :meth:`feed` (those may move unconsumed bytes over it);
    :meth:`next_packet` never invalidates earlier payloads, so all the packets of one read
    can be decoded first and handled afterwards. To keep payloads longer, call :meth:`detach`:
    the memory behind every view handed out so far is then never reused. Copy with
    ``bytes(payload)`` to keep one past that.

    After a :class:`ProtocolError` the decoder stays failed: every later :meth:`next_packet`
    raises the same error. It drops its receive buffer then (payload views already handed out
    stay valid).
    """

    __slots__ = (
        "_error",
        "_first_ok",
        "_max_body",
        "_protocol_level",
        "_reader_level",
        "_server",
        "keep_raw_publish",
        "max_packet_size",
        "raw_publish",
    )

    def __init__(
        self,
        max_packet_size: int,
        *,
        server: bool = True,
        protocol_level: int | None = None,
        read_size: int = DEFAULT_READ_SIZE,
    ) -> None:
        if not 2 <= max_packet_size <= MAX_PACKET_SIZE:
            raise ValueError(f"max_packet_size must be in [2, {MAX_PACKET_SIZE}]")
        if protocol_level is not None and protocol_level not in SUPPORTED_PROTOCOL_LEVELS:
            raise ValueError(f"unsupported protocol level {protocol_level}")
        if not server and protocol_level is None:
            raise ValueError("a client-side decoder needs the protocol level it connected with")
        super().__init__(read_size)
        self.max_packet_size = max_packet_size
        self._server = server
        self._protocol_level: int | None = None
        self._reader_level: int | None = None
        self._error: ProtocolError | None = None
        self._first_ok = b""
        self._max_body: dict[int, int] = {}
        #: the whole of the last PUBLISH decoded, as received (valid as long as its payload),
        #: kept only when asked for (relay mode passes such packets on unchanged)
        self.keep_raw_publish = False
        self.raw_publish: memoryview | None = None
        self._set_level(protocol_level)

    # -- state ---------------------------------------------------------------------------

    @property
    def protocol_level(self) -> int | None:
        """4 or 5 once known (from the constructor or the decoded CONNECT), else None."""
        return self._protocol_level

    def _set_level(self, level: int | None) -> None:
        self._protocol_level = self._reader_level = level
        self._first_ok = _first_byte_table(self._server, level)
        self._max_body = _MAX_BODY_V311 if level == MQTT_V311 else _MAX_BODY_V5

    # -- output --------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Packet]:
        """Yield every complete packet buffered so far."""
        while (packet := self.next_packet()) is not None:
            yield packet

    def next_packet(self) -> Packet | None:
        """The next complete packet, or None until more bytes arrive.

        Raises :class:`ProtocolError` (and keeps raising it) when the input breaks the spec.
        """
        if self._error is not None:
            raise self._error
        ptype = 0
        try:
            start = self._start
            avail = self._end - start
            total = self._need
            if total:
                if avail < total:
                    return None
            else:
                if not avail:
                    return None
                first = self._buf[start]
                ptype = first >> 4
                if not self._first_ok[first]:
                    error = _first_byte_error(first, self._server, self._protocol_level)
                    assert error is not None
                    raise error
                total = self._read_header(start, avail, ptype)
                if not total or avail < total:
                    return None
            buf = self._buf
            first = buf[start]
            ptype = first >> 4
            self._need = 0
            if total > self._read_size:
                self._large = total
            self._start = start + total
            body = start + 2
            while buf[body - 1] & 0x80:
                body += 1
            level = self._reader_level
            reader = _Reader(buf, self._view, body, start + total, level == MQTT_V5)
            decode = _DECODERS[ptype]
            assert decode is not None  # type 0 was refused with the first byte
            packet = decode(self, reader, first)
            if reader.pos != reader.end:
                raise malformed("§2.1.4", f"{reader.end - reader.pos} bytes follow the last field")
            if ptype == _PUBLISH and self.keep_raw_publish:
                self.raw_publish = self._view[start : start + total]
            if self._start == self._end:
                self._drop()  # the packet keeps its payload's buffer alive as long as it needs
            return packet
        except ProtocolError as exc:
            if exc.packet_type is None and ptype:
                exc.packet_type = PacketType(ptype)
            if exc.protocol_level is None:
                exc.protocol_level = self._reader_level
            self._error = exc
            self._release()
            raise

    def take_leading(self, take: Callable[[bytearray, int, int], int]) -> int:
        """Let ``take`` consume complete packets at the head of the buffer itself.

        ``take(buf, start, end)`` sees the unconsumed bytes ``buf[start:end]`` and returns the
        position after the last packet it took, which must be a packet boundary; the decoder
        goes on from there. This is the seam of the native segment path (``ftcore``), which
        handles the run of plain segment PUBLISHes without building packet objects. Returns
        the number of bytes taken.
        """
        start = self._start
        if self._error is not None or start == self._end:
            return 0
        pos = take(self._buf, start, self._end)
        if pos == start:
            return 0
        if not start < pos <= self._end:
            raise ValueError(f"take_leading: position {pos} outside [{start}, {self._end}]")
        self._start = pos
        if self._need > self._read_size:
            self._large = self._need  # (the packet whose header was read is among them)
        self._need = 0
        self._consumed()
        return pos - start

    def _read_header(self, start: int, avail: int, ptype: int) -> int:
        """Total size of the packet at ``start``, or 0 if its length is not complete yet."""
        got = _varint_at(
            self._buf,
            start + 1,
            start + avail,
            "Remaining Length over 4 bytes",
            "Remaining Length not encoded in the fewest bytes",
        )
        if got is None:
            return 0
        value, pos = got
        total = pos - start + value
        if total > self.max_packet_size:
            raise PacketTooLarge(total, self.max_packet_size)
        fixed = self._max_body.get(ptype)
        if fixed is not None and value > fixed:
            name = PacketType(ptype).name
            raise malformed("§2.1.4", f"{name} with Remaining Length {value} (at most {fixed})")
        self._need = total
        return total

    # -- packet bodies ---------------------------------------------------------------------

    def _connect(self, r: _Reader, first: int) -> Connect:
        name = r.utf8("protocol name")
        level = r.u8("protocol level")
        if name != PROTOCOL_NAME or level not in SUPPORTED_PROTOCOL_LEVELS:
            raise UnsupportedProtocolVersion(name, level)
        self._reader_level = level
        v5 = r.v5 = level == MQTT_V5
        cflags = r.u8("connect flags")
        if cflags & 0x01:
            raise malformed("MQTT-3.1.2-3", "CONNECT reserved flag is 1")
        will_flag = cflags & 0x04
        will_qos = (cflags >> 3) & 0x03
        will_retain = bool(cflags & 0x20)
        has_password = cflags & 0x40
        has_username = cflags & 0x80
        if will_flag:
            if will_qos == 3:
                raise malformed("MQTT-3.1.2-14", "Will QoS 3")
        elif will_qos:
            raise malformed("MQTT-3.1.2-13", "Will QoS without the Will Flag")
        elif will_retain:
            raise malformed("MQTT-3.1.2-15", "Will Retain without the Will Flag")
        if has_password and not has_username and not v5:
            raise malformed("MQTT-3.1.2-22", "password without a user name")
        keep_alive = r.u16("keep alive")
        props: Properties = r.properties(PacketType.CONNECT) if v5 else {}
        client_id = r.utf8("client identifier")
        will = None
        if will_flag:
            will_props: Properties = r.properties(None) if v5 else {}
            will_topic = r.topic_name("will topic")
            if not will_topic:
                raise malformed("MQTT-4.7.3-1", "empty will topic", _TOPIC_NAME_INVALID)
            will = Will(will_topic, r.binary("will payload"), will_qos, will_retain, will_props)
        username = r.utf8("user name") if has_username else None
        password = r.binary("password") if has_password else None
        self._set_level(level)
        return Connect(
            client_id=client_id,
            protocol_level=level,
            clean_start=bool(cflags & 0x02),
            keep_alive=keep_alive,
            will=will,
            username=username,
            password=password,
            properties=props,
        )

    def _connack(self, r: _Reader, first: int) -> Connack:
        ack_flags = r.u8("acknowledge flags")
        if ack_flags & 0xFE:
            raise malformed("MQTT-3.2.2-1", "CONNACK reserved acknowledge flags set")
        code = r.u8("reason code")
        if r.v5:
            self._check_reason(PacketType.CONNACK, code)
            return Connack(bool(ack_flags), code, r.properties(PacketType.CONNACK))
        if code > ConnackReturnCode.NOT_AUTHORIZED:
            raise malformed("§3.2.2.3", f"CONNACK return code {code} is reserved")
        return Connack(bool(ack_flags), code)

    def _publish(self, r: _Reader, first: int) -> Publish:
        # The hot path (one per file segment): the topic and packet id are read inline.
        v5 = r.v5
        buf = r.buf
        pos = r.pos
        end = r.end
        if end - pos < 2:
            raise r.short("length of topic name")
        topic_end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
        if topic_end > end:
            raise r.short("topic name")
        try:
            topic = str(r.view[pos + 2 : topic_end], "utf-8")
        except UnicodeDecodeError:
            raise malformed(utf8_rule(v5), "topic name is not well-formed UTF-8") from None
        if "\x00" in topic:
            raise malformed(null_rule(v5), "topic name contains U+0000")
        if "+" in topic or "#" in topic:
            raise malformed(
                "MQTT-3.3.2-2", f"topic name {topic!r} contains a wildcard", _TOPIC_NAME_INVALID
            )
        qos = (first >> 1) & 0x03
        packet_id = None
        if qos:
            if end - topic_end < 2:
                raise r.short("packet identifier")
            packet_id = (buf[topic_end] << 8) | buf[topic_end + 1]
            if not packet_id:
                raise malformed(packet_id_rule(v5), "PUBLISH QoS > 0 with packet identifier 0")
            topic_end += 2
        r.pos = topic_end
        props: Properties
        if v5:
            props = r.properties(PacketType.PUBLISH)
            if props:
                if self._server and "subscription_identifiers" in props:
                    raise protocol_error(
                        "MQTT-3.3.4-6", "PUBLISH from a Client with a subscription id"
                    )
                if not topic and "topic_alias" not in props:
                    raise protocol_error("§3.3.2.1", "empty Topic Name without a Topic Alias")
            elif not topic:
                raise protocol_error("§3.3.2.1", "empty Topic Name without a Topic Alias")
        else:
            props = {}
            if not topic:
                raise malformed("MQTT-4.7.3-1", "empty topic name", _TOPIC_NAME_INVALID)
        pos = r.pos
        end = r.end
        r.pos = end
        return Publish(
            topic, r.view[pos:end], qos, bool(first & 0x01), bool(first & 0x08), packet_id, props
        )

    def _check_reason(self, ptype: PacketType, code: int) -> None:
        if code not in REASON_CODES[ptype]:
            raise protocol_error(
                _REASON_RULES[ptype], f"0x{code:02X} is not a {ptype.name} reason code"
            )

    def _ack_id(self, r: _Reader, ptype: PacketType) -> int:
        packet_id = r.u16("packet identifier")
        if not packet_id:
            raise protocol_error(
                "MQTT-2.2.1-5" if r.v5 else "MQTT-2.3.1-1", f"{ptype.name} for id 0"
            )
        return packet_id

    def _puback(self, r: _Reader, first: int) -> Puback | Pubrec | Pubrel | Pubcomp:
        ptype = PacketType(first >> 4)
        packet_id = self._ack_id(r, ptype)
        code = 0
        props: Properties = {}
        if r.v5 and r.pos < r.end:
            code = r.u8("reason code")
            self._check_reason(ptype, code)
            if r.pos < r.end:
                props = r.properties(ptype)
        return _ACK_CLASSES[ptype](packet_id, code, props)

    def _subscribe(self, r: _Reader, first: int) -> Subscribe:
        v5 = r.v5
        packet_id = r.u16("packet identifier")
        if not packet_id:
            raise malformed(packet_id_rule(v5), "SUBSCRIBE with packet identifier 0")
        props: Properties = r.properties(PacketType.SUBSCRIBE) if v5 else {}
        subscriptions: list[tuple[str, SubscriptionOptions]] = []
        while r.pos < r.end:
            topic_filter = r.utf8("topic filter")
            options = r.u8("subscription options")
            if v5:
                if options & 0xC0:
                    raise malformed("MQTT-3.8.3-5", "reserved subscription option bits set")
                if options & 0x03 == 3:
                    raise malformed("§3.8.3.1", "subscription with QoS 3")
                if options & 0x30 == 0x30:
                    raise protocol_error("§3.8.3.1", "Retain Handling 3")
                if options & 0x04 and topic_filter.startswith("$share/"):
                    raise protocol_error("MQTT-3.8.3-4", "No Local on a shared subscription")
            elif options & 0xFC or options == 3:
                raise malformed("MQTT-3.8.3-4", f"subscription options byte 0x{options:02X}")
            subscriptions.append((topic_filter, _SUB_OPTIONS[options]))
        if not subscriptions:
            raise protocol_error(
                "MQTT-3.8.3-2" if v5 else "MQTT-3.8.3-3", "SUBSCRIBE without filters"
            )
        return Subscribe(packet_id, subscriptions, props)

    def _suback(self, r: _Reader, first: int) -> Suback:
        packet_id = self._ack_id(r, PacketType.SUBACK)
        props: Properties = r.properties(PacketType.SUBACK) if r.v5 else {}
        codes = list(r.raw(r.end - r.pos, "reason codes"))
        for code in codes:
            if r.v5:
                self._check_reason(PacketType.SUBACK, code)
            elif code not in V3_SUBACK_RETURN_CODES:
                raise malformed("§3.9.3", f"SUBACK return code 0x{code:02X} is reserved")
        return Suback(packet_id, codes, props)

    def _unsubscribe(self, r: _Reader, first: int) -> Unsubscribe:
        v5 = r.v5
        packet_id = r.u16("packet identifier")
        if not packet_id:
            raise malformed(packet_id_rule(v5), "UNSUBSCRIBE with packet identifier 0")
        props: Properties = r.properties(PacketType.UNSUBSCRIBE) if v5 else {}
        topic_filters: list[str] = []
        while r.pos < r.end:
            topic_filters.append(r.utf8("topic filter"))
        if not topic_filters:
            raise protocol_error("MQTT-3.10.3-2", "UNSUBSCRIBE without filters")
        return Unsubscribe(packet_id, topic_filters, props)

    def _unsuback(self, r: _Reader, first: int) -> Unsuback:
        packet_id = self._ack_id(r, PacketType.UNSUBACK)
        if not r.v5:
            return Unsuback(packet_id)
        props = r.properties(PacketType.UNSUBACK)
        codes = list(r.raw(r.end - r.pos, "reason codes"))
        for code in codes:
            self._check_reason(PacketType.UNSUBACK, code)
        return Unsuback(packet_id, codes, props)

    def _pingreq(self, r: _Reader, first: int) -> Pingreq:
        return Pingreq()

    def _pingresp(self, r: _Reader, first: int) -> Pingresp:
        return Pingresp()

    def _disconnect(self, r: _Reader, first: int) -> Disconnect | Auth:
        ptype = PacketType(first >> 4)
        code = 0
        props: Properties = {}
        if r.v5 and r.pos < r.end:
            code = r.u8("reason code")
            self._check_reason(ptype, code)
            if r.pos < r.end:
                props = r.properties(ptype)
        if ptype == PacketType.AUTH:
            return Auth(code, props)
        return Disconnect(code, props)


#: Body decoders by packet type (plain functions: no reference cycle through the Decoder).
_DECODERS: Final[tuple[Callable[[Decoder, _Reader, int], Packet] | None, ...]] = (
    None,
    Decoder._connect,
    Decoder._connack,
    Decoder._publish,
    Decoder._puback,
    Decoder._puback,
    Decoder._puback,
    Decoder._puback,
    Decoder._subscribe,
    Decoder._suback,
    Decoder._unsubscribe,
    Decoder._unsuback,
    Decoder._pingreq,
    Decoder._pingresp,
    Decoder._disconnect,
    Decoder._disconnect,  # AUTH has the same shape as DISCONNECT
)

_ACK_CLASSES: Final[dict[PacketType, type[Puback | Pubrec | Pubrel | Pubcomp]]] = {
    PacketType.PUBACK: Puback,
    PacketType.PUBREC: Pubrec,
    PacketType.PUBREL: Pubrel,
    PacketType.PUBCOMP: Pubcomp,
}

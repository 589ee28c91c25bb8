"""The errors the MQTT codec raises, and the builders its modules use to raise them.

Every error names the statement of the specification that the peer broke (``MQTT-x.y.z-n``
or a section) in its message, and carries the reason code MQTT 5 says to answer with, so the
connection can send its CONNACK or DISCONNECT without knowing why the packet was refused.
These errors concern the wire only: the outcome of a file-transfer command is an
:class:`ftserver.errors.FtError`, never one of these.
"""

from __future__ import annotations

from typing import Final

from ftserver.mqtt.spec import ConnackReturnCode, PacketType, ReasonCode

__all__ = [
    "MalformedPacket",
    "PacketTooLarge",
    "ProtocolError",
    "UnsupportedProtocolVersion",
]

_MALFORMED: Final = int(ReasonCode.MALFORMED_PACKET)
_PROTOCOL: Final = int(ReasonCode.PROTOCOL_ERROR)


class ProtocolError(Exception):
    """The peer broke the MQTT specification; the connection must be closed.

    ``reason_code`` is the MQTT 5 reason code to put in the CONNACK (when the CONNECT failed)
    or the DISCONNECT that precedes the close. ``v3_return_code`` is the MQTT 3.1.1 CONNACK
    return code to send, or None when 3.1.1 says to close without a CONNACK. The decoder fills
    in ``packet_type`` and ``protocol_level`` (as far as it knew them) before raising.
    """

    v3_return_code: int | None = None

    def __init__(self, reason_code: int, message: str) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        self.message = message
        self.packet_type: PacketType | None = None
        self.protocol_level: int | None = None


class MalformedPacket(ProtocolError):
    """A packet that cannot be parsed or breaks a MUST of the specification.

    ``reason_code`` is 0x81 (Malformed Packet), 0x82 (Protocol Error), 0x90 (Topic Name invalid)
    or 0x95 (Packet too large, see :class:`PacketTooLarge`), as MQTT 5 prescribes.
    """


class PacketTooLarge(MalformedPacket):
    """A packet whose size exceeds the decoder's ``max_packet_size``; raised from its header."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            ReasonCode.PACKET_TOO_LARGE,
            f"MQTT-3.2.2-15: packet of {size} bytes exceeds the Maximum Packet Size {limit}",
        )
        self.size = size
        self.limit = limit


class UnsupportedProtocolVersion(ProtocolError):
    """A CONNECT with a protocol name or level this server does not speak (MQTT-3.1.2-1/2).

    Answer with CONNACK 0x84 (MQTT 5) or return code 1 (3.1.1), then close.
    """

    v3_return_code = int(ConnackReturnCode.UNACCEPTABLE_PROTOCOL_VERSION)

    def __init__(self, protocol_name: str, protocol_level: int) -> None:
        super().__init__(
            ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
            f"MQTT-3.1.2-2: protocol {protocol_name!r} level {protocol_level} is not supported "
            "(MQTT 3.1.1 level 4 and MQTT 5.0 level 5 are)",
        )
        self.protocol_name = protocol_name
        self.received_level = protocol_level


# --------------------------------------------------------------------------------------------
# Builders for the codec's own modules. They are not part of the codec's public face
# (ftserver.mqtt.codec): callers catch the classes above and never build these errors.


def malformed(rule: str, what: str, reason: int = _MALFORMED) -> MalformedPacket:
    """A packet that breaks ``rule``; ``reason`` is the reason code MQTT 5 names for it."""
    return MalformedPacket(reason, f"{rule}: {what}")


def protocol_error(rule: str, what: str) -> MalformedPacket:
    """A packet that parses but breaks ``rule`` (MQTT 5 answers 0x82 Protocol Error)."""
    return MalformedPacket(_PROTOCOL, f"{rule}: {what}")


# The same statement has a different number in each version of the specification.


def utf8_rule(v5: bool) -> str:
    """The statement a string that is not well-formed UTF-8 breaks."""
    return "MQTT-1.5.4-1" if v5 else "MQTT-1.5.3-1"


def null_rule(v5: bool) -> str:
    """The statement a string holding U+0000 breaks."""
    return "MQTT-1.5.4-2" if v5 else "MQTT-1.5.3-2"


def packet_id_rule(v5: bool) -> str:
    """The statement a PUBLISH, SUBSCRIBE or UNSUBSCRIBE with packet identifier 0 breaks."""
    return "MQTT-2.2.1-3" if v5 else "MQTT-2.3.1-1"

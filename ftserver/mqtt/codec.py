"""An IO-free, incremental MQTT 3.1.1 / 5.0 codec: the public face of three modules.

- :mod:`ftserver.mqtt.decoder`: :class:`Decoder` frames and decodes the packets a peer sends,
  in a receive buffer it owns (it fits ``asyncio.BufferedProtocol`` directly); every length
  read from the wire is checked against the packet and the limits before it is used.
- :mod:`ftserver.mqtt.encoder`: the ``encode_*`` functions build the bytes of each packet for
  either protocol level, and :func:`encode` picks the right one.
- :mod:`ftserver.mqtt.errors`: what the decoder raises. A :class:`ProtocolError` names the
  statement of the specification the peer broke and carries the reason code MQTT 5 says to
  answer with.

Import from here (``from ftserver.mqtt.codec import Decoder, ProtocolError, encode_puback``):
the split behind it is an implementation detail. Nothing here does IO, keeps time or knows
about sessions.
"""

from __future__ import annotations

from ftserver.mqtt.decoder import DEFAULT_READ_SIZE, Decoder
from ftserver.mqtt.encoder import (
    PINGREQ_BYTES,
    PINGRESP_BYTES,
    encode,
    encode_auth,
    encode_connack,
    encode_connect,
    encode_disconnect,
    encode_pingreq,
    encode_pingresp,
    encode_puback,
    encode_pubcomp,
    encode_publish,
    encode_publish_header,
    encode_pubrec,
    encode_pubrel,
    encode_suback,
    encode_subscribe,
    encode_unsuback,
    encode_unsubscribe,
)
from ftserver.mqtt.errors import (
    MalformedPacket,
    PacketTooLarge,
    ProtocolError,
    UnsupportedProtocolVersion,
)

__all__ = [
    "DEFAULT_READ_SIZE",
    "PINGREQ_BYTES",
    "PINGRESP_BYTES",
    "Decoder",
    "MalformedPacket",
    "PacketTooLarge",
    "ProtocolError",
    "UnsupportedProtocolVersion",
    "encode",
    "encode_auth",
    "encode_connack",
    "encode_connect",
    "encode_disconnect",
    "encode_pingreq",
    "encode_pingresp",
    "encode_puback",
    "encode_pubcomp",
    "encode_publish",
    "encode_publish_header",
    "encode_pubrec",
    "encode_pubrel",
    "encode_suback",
    "encode_subscribe",
    "encode_unsuback",
    "encode_unsubscribe",
]

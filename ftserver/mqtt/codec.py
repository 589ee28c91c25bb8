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

from ftserver.mqtt import decoder, encoder, errors
from ftserver.mqtt.decoder import *  # noqa: F403 - the face re-exports each module's __all__
from ftserver.mqtt.encoder import *  # noqa: F403
from ftserver.mqtt.errors import *  # noqa: F403

__all__: list[str] = []
__all__ += errors.__all__
__all__ += decoder.__all__
__all__ += encoder.__all__

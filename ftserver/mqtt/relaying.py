"""Relay mode's rules that need no session state: what stays local, what the upstream CONNECT
carries, and what of the broker's CONNACK the device is told.

The session core (:mod:`ftserver.mqtt.core`) applies them; docs/relay.md describes the
behaviour as a user sees it.
"""

from __future__ import annotations

from typing import Final

from ftserver.mqtt.packets import Connect, Properties
from ftserver.mqtt.spec import MQTT_V5

#: Receive Maximum ftserver announces to the broker at most: the broker's messages waiting for
#: the device's Receive Maximum are held in memory, so this bounds them per device
RELAY_RECEIVE_MAXIMUM: Final = 256

#: CONNACK properties of the broker that the device is told as they are: what the broker
#: supports, its reason string and user properties, where else to connect
CONNACK_FROM_BROKER: Final = (
    "maximum_qos",
    "retain_available",
    "wildcard_subscription_available",
    "subscription_identifier_available",
    "shared_subscription_available",
    "reason_string",
    "user_properties",
    "response_information",
    "server_reference",
)

#: CONNECT properties never passed up: ftserver resolves the device's topic aliases and
#: announces no aliases of its own to the broker; authentication methods are refused earlier
_LOCAL_CONNECT_PROPERTIES: Final = (
    "topic_alias_maximum",
    "authentication_method",
    "authentication_data",
)


def is_local_topic(topic: str) -> bool:
    """Whether a topic or topic filter belongs to file transfer, which ftserver handles itself
    (``$file/…``, ``$file-async/…``, ``$file-response/…``): it never goes to the broker."""
    return topic.startswith("$file")


def upstream_connect(p: Connect, client_id: str, session_expiry_max: int) -> Connect:
    """The CONNECT of a device's upstream leg: the device's own, with its client identifier
    (empty: the broker assigns one), clean start, Will and credentials (the relay may replace
    the credentials and sets its own Keep Alive), the session expiry capped as ftserver caps
    it, and a Receive Maximum of at most :data:`RELAY_RECEIVE_MAXIMUM`."""
    props: Properties = {}
    if p.protocol_level == MQTT_V5:
        props = {k: v for k, v in p.properties.items() if k not in _LOCAL_CONNECT_PROPERTIES}  # type: ignore[assignment]
        expiry = props.get("session_expiry_interval")
        if expiry:
            props["session_expiry_interval"] = min(expiry, session_expiry_max)
        props["receive_maximum"] = min(props.get("receive_maximum", 65535), RELAY_RECEIVE_MAXIMUM)
    return Connect(
        client_id,
        p.protocol_level,
        p.clean_start,
        p.keep_alive,
        p.will,
        p.username,
        p.password,
        props,
    )


def merge_codes(codes: list[int], broker: list[int]) -> list[int]:
    """The reason codes of a split SUBSCRIBE/UNSUBSCRIBE: the broker's fill the places
    marked -1, in order (a broker answering too few leaves 0x80, Unspecified error)."""
    answers = iter(broker)
    return [next(answers, 0x80) if c < 0 else c for c in codes]

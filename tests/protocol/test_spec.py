"""The spec tables: internal consistency, and agreement with paho-mqtt's independent tables."""

from __future__ import annotations

import typing

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties
from paho.mqtt.reasoncodes import ReasonCode as PahoReasonCode

from ftserver.mqtt.packets import Properties
from ftserver.mqtt.spec import (
    FIXED_HEADER_FLAGS,
    PROPERTIES,
    PROPERTIES_ALLOWED,
    PROPERTY_BY_ID,
    REASON_CODES,
    SENT_BY_CLIENT,
    SENT_BY_SERVER,
    V3_CONNACK_RETURN_CODES,
    WILL_PROPERTIES_ALLOWED,
    PacketType,
    PropertyId,
    PropertyType,
    ReasonCode,
)

_PAHO_TYPES = {
    "Byte": PropertyType.BYTE,
    "Two Byte Integer": PropertyType.TWO_BYTE_INT,
    "Four Byte Integer": PropertyType.FOUR_BYTE_INT,
    "Variable Byte Integer": PropertyType.VARINT,
    "Binary Data": PropertyType.BINARY,
    "UTF-8 Encoded String": PropertyType.UTF8,
    "UTF-8 String Pair": PropertyType.UTF8_PAIR,
}


def test_every_property_id_has_one_row() -> None:
    assert [p.id for p in PROPERTIES] == sorted(PropertyId)
    assert set(PROPERTY_BY_ID) == set(PropertyId)


def test_properties_typeddict_matches_the_table() -> None:
    hints = typing.get_type_hints(Properties)
    assert set(hints) == {p.key for p in PROPERTIES}
    for spec in PROPERTIES:
        assert (typing.get_origin(hints[spec.key]) is list) == spec.repeatable, spec.key


def test_only_user_property_and_subscription_identifier_repeat() -> None:
    assert {p.id for p in PROPERTIES if p.repeatable} == {
        PropertyId.USER_PROPERTY,
        PropertyId.SUBSCRIPTION_IDENTIFIER,
    }
    sub_id = PROPERTY_BY_ID[PropertyId.SUBSCRIPTION_IDENTIFIER]
    assert sub_id.repeatable_in == {PacketType.PUBLISH}  # once only in SUBSCRIBE


def test_property_table_matches_paho() -> None:
    paho = PahoProperties(PacketTypes.PUBLISH)
    assert set(paho.properties) == {p.id for p in PROPERTIES}
    for spec in PROPERTIES:
        type_index, packets = paho.properties[spec.id]
        assert _PAHO_TYPES[paho.types[type_index]] is spec.type, spec.key
        ours = {int(t) for t in spec.packets} | ({PacketTypes.WILLMESSAGE} if spec.will else set())
        assert ours == set(packets), spec.key


#: Where paho 2.2's table differs from ours, and why ours follows the spec.
_PAHO_GAPS = {
    # MQTT 5 table 3-1 lists 0x99 Payload format invalid for CONNACK (a Will payload that
    # does not match its Payload Format Indicator); paho leaves it out. mqtt5 has it.
    PacketType.CONNACK: {ReasonCode.PAYLOAD_FORMAT_INVALID},
}


@pytest.mark.parametrize("packet_type", sorted(REASON_CODES))
def test_reason_codes_match_paho(packet_type: PacketType) -> None:
    paho = PahoReasonCode(PacketTypes.PUBACK).names
    theirs = {
        code
        for code, names in paho.items()
        if any(packet_type in types for types in names.values())
    }
    assert theirs | _PAHO_GAPS.get(packet_type, set()) == REASON_CODES[packet_type]


def test_reason_codes_are_known() -> None:
    for codes in REASON_CODES.values():
        assert codes <= set(ReasonCode)


def test_v3_connack_mapping() -> None:
    assert set(V3_CONNACK_RETURN_CODES) <= REASON_CODES[PacketType.CONNACK]
    assert set(V3_CONNACK_RETURN_CODES.values()) == set(range(6))
    assert ReasonCode.MALFORMED_PACKET not in V3_CONNACK_RETURN_CODES
    assert ReasonCode.PROTOCOL_ERROR not in V3_CONNACK_RETURN_CODES


def test_packet_tables_cover_every_type() -> None:
    assert set(FIXED_HEADER_FLAGS) == set(PacketType) - {PacketType.PUBLISH}
    assert set(PacketType) == SENT_BY_CLIENT | SENT_BY_SERVER
    assert set(PROPERTIES_ALLOWED) == set(PacketType)
    assert not PROPERTIES_ALLOWED[PacketType.PINGREQ]
    assert {1, 2, 3, 8, 9, 0x18, 0x26} == WILL_PROPERTIES_ALLOWED


def test_named_reason_codes() -> None:
    """The names callers use (the brief's list) exist with their spec values."""
    assert ReasonCode.NO_MATCHING_SUBSCRIBERS == 0x10
    assert ReasonCode.PACKET_TOO_LARGE == 0x95
    assert ReasonCode.SERVER_BUSY == 0x89
    assert ReasonCode.KEEP_ALIVE_TIMEOUT == 0x8D
    assert ReasonCode.SESSION_TAKEN_OVER == 0x8E
    assert ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED == 0x9E
    assert ReasonCode.NORMAL_DISCONNECTION == ReasonCode.SUCCESS == 0

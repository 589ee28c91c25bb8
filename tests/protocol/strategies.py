"""Hypothesis strategies for valid MQTT packets, driven by the spec tables."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

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
    MAX_U16,
    MAX_U32,
    MAX_VARINT,
    MQTT_V5,
    PROPERTIES,
    REASON_CODES,
    V3_SUBACK_RETURN_CODES,
    PacketType,
    PropertySpec,
    PropertyType,
    ValueRule,
)

_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
_TOPIC_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00+#")

text = st.text(_CHARS, max_size=12)
topic_names = st.text(_TOPIC_CHARS, min_size=1, max_size=24)
topic_filters = topic_names | st.sampled_from(
    ["#", "+", "a/+/b", "a/#", "+/+", "$share/g/a/b", "$file-response/c1", "/", "//"]
)
binary = st.binary(max_size=16)
packet_ids = st.integers(1, MAX_U16)


def _value(spec: PropertySpec) -> st.SearchStrategy[Any]:
    low = 1 if spec.rule is ValueRule.NONZERO else 0
    if spec.rule is ValueRule.BOOLEAN:
        return st.integers(0, 1)
    if spec.rule is ValueRule.TOPIC_NAME:
        return topic_names
    kind = spec.type
    if kind is PropertyType.BYTE:
        return st.integers(low, 0xFF)
    if kind is PropertyType.TWO_BYTE_INT:
        return st.integers(low, MAX_U16)
    if kind is PropertyType.FOUR_BYTE_INT:
        return st.integers(low, MAX_U32)
    if kind is PropertyType.VARINT:
        return st.integers(low, MAX_VARINT)
    if kind is PropertyType.UTF8:
        return text
    if kind is PropertyType.BINARY:
        return binary
    return st.tuples(text, text)


def properties(
    packet_type: PacketType | None, *, exclude: tuple[str, ...] = ()
) -> st.SearchStrategy[Properties]:
    """Valid property sets for a packet type (None: Will Properties)."""
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for spec in PROPERTIES:
        allowed = spec.will if packet_type is None else packet_type in spec.packets
        if not allowed or spec.key in exclude:
            continue
        value = _value(spec)
        if spec.repeatable_in:
            repeat = packet_type is None or packet_type in spec.repeatable_in
            value = st.lists(value, min_size=1, max_size=3 if repeat else 1)
        optional[spec.key] = value
    return st.fixed_dictionaries({}, optional=optional)  # type: ignore[return-value]


def _props(level: int, packet_type: PacketType | None, **kw: Any) -> st.SearchStrategy[Properties]:
    if level != MQTT_V5:
        return st.just({})  # type: ignore[arg-type]
    return properties(packet_type, **kw)


def _codes(level: int, packet_type: PacketType) -> st.SearchStrategy[int]:
    if level != MQTT_V5:
        return st.just(0)
    return st.sampled_from(sorted(REASON_CODES[packet_type]))


@st.composite
def publishes(draw: st.DrawFn, level: int, *, from_server: bool = False) -> Publish:
    qos = draw(st.integers(0, 2))
    exclude = () if from_server else ("subscription_identifiers",)
    props = draw(_props(level, PacketType.PUBLISH, exclude=exclude))
    topic = draw(topic_names)
    if level == MQTT_V5 and "topic_alias" in props and draw(st.booleans()):
        topic = ""  # MQTT 5: an empty topic with a Topic Alias
    return Publish(
        topic=topic,
        payload=draw(st.binary(max_size=300)),
        qos=qos,
        retain=draw(st.booleans()),
        dup=bool(qos) and draw(st.booleans()),
        packet_id=draw(packet_ids) if qos else None,
        properties=props,
    )


@st.composite
def connects(draw: st.DrawFn, level: int) -> Connect:
    will = None
    if draw(st.booleans()):
        will = Will(
            topic=draw(topic_names),
            payload=draw(binary),
            qos=draw(st.integers(0, 2)),
            retain=draw(st.booleans()),
            properties=draw(_props(level, None)),
        )
    username = draw(st.none() | text)
    password = draw(st.none() | binary)
    if level != MQTT_V5 and username is None:
        password = None
    return Connect(
        client_id=draw(text),
        protocol_level=level,
        clean_start=draw(st.booleans()),
        keep_alive=draw(st.integers(0, MAX_U16)),
        will=will,
        username=username,
        password=password,
        properties=draw(_props(level, PacketType.CONNECT)),
    )


def _acks(level: int) -> st.SearchStrategy[Packet]:
    return st.one_of(
        *(
            st.builds(cls, packet_ids, _codes(level, ptype), _props(level, ptype))
            for cls, ptype in (
                (Puback, PacketType.PUBACK),
                (Pubrec, PacketType.PUBREC),
                (Pubrel, PacketType.PUBREL),
                (Pubcomp, PacketType.PUBCOMP),
            )
        )
    )


@st.composite
def subscribes(draw: st.DrawFn, level: int) -> Subscribe:
    subs = []
    for topic_filter in draw(st.lists(topic_filters, min_size=1, max_size=4)):
        if level == MQTT_V5:
            no_local = draw(st.booleans()) and not topic_filter.startswith("$share/")
            options = SubscriptionOptions(
                qos=draw(st.integers(0, 2)),
                no_local=no_local,
                retain_as_published=draw(st.booleans()),
                retain_handling=draw(st.integers(0, 2)),
            )
        else:
            options = SubscriptionOptions(qos=draw(st.integers(0, 2)))
        subs.append((topic_filter, options))
    return Subscribe(draw(packet_ids), subs, draw(_props(level, PacketType.SUBSCRIBE)))


def client_packets(level: int) -> st.SearchStrategy[Packet]:
    """Packets a Client sends after CONNECT."""
    options: list[st.SearchStrategy[Packet]] = [
        publishes(level),
        _acks(level),
        subscribes(level),
        st.builds(
            Unsubscribe,
            packet_ids,
            st.lists(topic_filters, min_size=1, max_size=4),
            _props(level, PacketType.UNSUBSCRIBE),
        ),
        st.just(Pingreq()),
        st.builds(
            Disconnect, _codes(level, PacketType.DISCONNECT), _props(level, PacketType.DISCONNECT)
        ),
    ]
    if level == MQTT_V5:
        options.append(
            st.builds(Auth, _codes(level, PacketType.AUTH), _props(level, PacketType.AUTH))
        )
    return st.one_of(*options)


def server_packets(level: int) -> st.SearchStrategy[Packet]:
    """Packets a Server sends."""
    if level == MQTT_V5:
        connack_codes = _codes(level, PacketType.CONNACK)
        suback_codes = _codes(level, PacketType.SUBACK)
        unsuback_codes = st.lists(_codes(level, PacketType.UNSUBACK), min_size=1, max_size=4)
    else:
        connack_codes = st.integers(0, 5)
        suback_codes = st.sampled_from(sorted(V3_SUBACK_RETURN_CODES))
        unsuback_codes = st.just([])
    options: list[st.SearchStrategy[Packet]] = [
        st.builds(Connack, st.booleans(), connack_codes, _props(level, PacketType.CONNACK)),
        publishes(level, from_server=True),
        _acks(level),
        st.builds(
            Suback,
            packet_ids,
            st.lists(suback_codes, min_size=1, max_size=4),
            _props(level, PacketType.SUBACK),
        ),
        st.builds(Unsuback, packet_ids, unsuback_codes, _props(level, PacketType.UNSUBACK)),
        st.just(Pingresp()),
    ]
    if level == MQTT_V5:
        options.append(
            st.builds(
                Disconnect,
                _codes(level, PacketType.DISCONNECT),
                _props(level, PacketType.DISCONNECT),
            )
        )
        options.append(
            st.builds(Auth, _codes(level, PacketType.AUTH), _props(level, PacketType.AUTH))
        )
    return st.one_of(*options)

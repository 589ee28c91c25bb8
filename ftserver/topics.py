"""MQTT topic names and filters, and the topics of the file-transfer protocol.

- :func:`is_valid_topic_name`, :func:`is_valid_topic_filter`: MQTT's rules (§4.7, §4.8);
- :func:`topic_matches`: filter matching, with ``$`` topics hidden from first-level wildcards;
- the file-transfer topic prefixes (docs/protocol.md §1–§2) and :func:`is_file_command_topic`.

Pure functions; used by the codec, the session core, the dispatcher, the ACL and the
supervisor's router alike, so it sits at the bottom of the layers.
"""

from __future__ import annotations

__all__ = [
    "ASYNC_PREFIX",
    "RESPONSE_PREFIX",
    "SYNC_PREFIX",
    "is_file_command_topic",
    "is_valid_topic_filter",
    "is_valid_topic_name",
    "topic_matches",
]

#: topic prefix of synchronous commands (the result is in the PUBACK)
SYNC_PREFIX = "$file/"
#: topic prefix of asynchronous commands (the result is in a response document)
ASYNC_PREFIX = "$file-async/"
#: prefix of the topic a client's response documents go to: ``$file-response/{clientId}``
RESPONSE_PREFIX = "$file-response/"


def is_file_command_topic(topic: str) -> bool:
    """Whether ``topic`` is a file-transfer command (sync or async)."""
    return topic.startswith(SYNC_PREFIX) or topic.startswith(ASYNC_PREFIX)


def is_valid_topic_name(topic: str) -> bool:
    """A non-empty topic name without wildcards or U+0000 (MQTT-4.7.0-1, 4.7.3-1/2)."""
    return bool(topic) and "+" not in topic and "#" not in topic and "\x00" not in topic


def is_valid_topic_filter(topic_filter: str) -> bool:
    """Whether a subscription topic filter is well formed.

    Checks MQTT-4.7.1-1 (``#`` alone in the last level), MQTT-4.7.1-2 (``+`` fills a whole
    level), MQTT-4.7.3-1/2 (not empty, no U+0000) and, for ``$share/{name}/{filter}``,
    MQTT-4.8.2-1/2 (a non-empty share name without ``+``, ``#`` or ``/``, then a valid filter).
    A filter that fails deserves SUBACK 0x8F (3.1.1: 0x80), not a closed connection.
    """
    if not topic_filter or "\x00" in topic_filter:
        return False
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) < 3:
            return False
        share_name = parts[1]
        if not share_name or "+" in share_name or "#" in share_name:
            return False
        return is_valid_topic_filter(parts[2])
    if "+" not in topic_filter and "#" not in topic_filter:
        return True
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (§4.7), with the rule that wildcards at the first level do
    not match topics starting with ``$`` (MQTT-4.7.2-1)."""
    if topic_filter == topic:
        return True
    if "+" not in topic_filter and "#" not in topic_filter:
        return False
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    flevels = topic_filter.split("/")
    tlevels = topic.split("/")
    for i, f in enumerate(flevels):
        if f == "#":
            return True
        if i >= len(tlevels):
            return False
        if f != "+" and f != tlevels[i]:
            return False
    return len(flevels) == len(tlevels)

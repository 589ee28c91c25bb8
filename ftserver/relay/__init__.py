"""Relay mode: ftserver in front of the user's MQTT broker (docs/relay.md)."""

"""Completion notifications: one event per finished transfer, delivered at least once to the
user's broker (``relay.events_topic``) and/or a webhook (``notify.url``) from a durable
on-disk outbox (docs/events.md)."""

"""The webhook sink: each event POSTed to ``notify.url``, signed.

The body is the event document exactly as stored (``Content-Type: application/json``). Headers:

- ``X-Ftserver-Signature: sha256=<hex>``: HMAC-SHA256 of the exact body bytes, keyed with
  ``notify.secret`` (the receiver recomputes it and compares in constant time; see
  docs/events.md);
- ``X-Ftserver-Event-Id``: the event's ``id`` (the same as in the body): a delivery may be
  repeated (at least once), the receiver drops an id it has seen;
- ``X-Ftserver-Event``: ``exported`` or ``failed``.

A 2xx answer means delivered; any other status (redirects are not followed), a timeout
(``notify.timeout`` for the whole request) or a connection error means "try again later".
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

import aiohttp

from ftserver import __version__
from ftserver.config import NotifyConfig, webhook_url
from ftserver.notify.outbox import Entry

log = logging.getLogger(__name__)

#: webhook deliveries in flight at once
WINDOW = 4
SIGNATURE_HEADER = "X-Ftserver-Signature"
ID_HEADER = "X-Ftserver-Event-Id"
EVENT_HEADER = "X-Ftserver-Event"


class DeliveryRefused(Exception):
    """The receiver answered something else than 2xx."""


def signature(secret: str, body: bytes) -> str:
    """The ``X-Ftserver-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSink:
    """POSTs events to the webhook (see the module docstring)."""

    name = "webhook"
    window = WINDOW

    def __init__(self, notify: NotifyConfig) -> None:
        self.url = notify.url
        self._secret = notify.secret
        self.timeout = notify.timeout
        scheme, host, port = webhook_url(notify.url)
        # for log lines: the URL's user info and path (which may carry a token) stay out
        self._where = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{port}"
        self._session: aiohttp.ClientSession | None = None

    def describe(self) -> str:
        return self._where

    def admits(self, doc: dict[str, Any]) -> bool:
        return True

    async def connect(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": f"ftserver/{__version__}"},
            )

    async def send(self, entry: Entry) -> None:
        session = self._session
        if session is None:
            raise ConnectionError("no HTTP session")
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(self._secret, entry.body),
            ID_HEADER: entry.event_id,
            EVENT_HEADER: str(entry.doc.get("event", "")),
        }
        async with session.post(
            self.url, data=entry.body, headers=headers, allow_redirects=False
        ) as resp:
            if not 200 <= resp.status < 300:
                raise DeliveryRefused(f"HTTP {resp.status} {resp.reason or ''}".rstrip())

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

"""Completion notifications of one worker: the event of each finished transfer, into the
outbox of every configured sink (docs/events.md).

The server builds a :class:`Notifier` when ``relay.events_topic`` (with ``relay.upstream``)
or ``notify.url`` is set, hands :meth:`Notifier.finished` to the dispatcher as its
``on_finished`` hook, and starts and stops it with the worker.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

from ftserver.config import Config, is_loopback_host, webhook_url
from ftserver.notify.courier import Courier, Sink
from ftserver.notify.event import destination_of, document, encode
from ftserver.notify.mqtt import MqttSink, client_id
from ftserver.notify.outbox import OUTBOX_DIR, Outbox, adopt_orphans, outbox_dir
from ftserver.notify.webhook import WebhookSink
from ftserver.transfer.dispatch import Finished

log = logging.getLogger(__name__)


def wanted(config: Config) -> bool:
    """Whether any sink is configured."""
    return bool(config.notify.url or (config.relay.upstream and config.relay.events_topic))


class Notifier:
    """The sinks of one worker, each with its outbox and courier."""

    def __init__(
        self,
        config: Config,
        data_dir: Path,
        *,
        worker: int,
        workers: int,
        node: str | None = None,
    ) -> None:
        from ftserver import metrics  # only in the worker: the multiprocess setting is set

        self.node = node or socket.gethostname()
        self.worker = worker
        self._destination = destination_of(config.export)
        self.couriers: list[Courier] = []
        relay, notify = config.relay, config.notify
        label = str(worker)
        if relay.upstream and relay.events_topic:
            sink: Sink = MqttSink(
                relay, identifier=client_id(worker, self.node), timeout=notify.timeout
            )
            gauge = metrics.RELAY_EVENTS_PENDING.labels(label)
            self._add(config, data_dir, workers, sink, gauge.set)
        if notify.url:
            scheme, host, _port = webhook_url(notify.url)
            if scheme == "http" and not is_loopback_host(host):
                log.warning(
                    "notify.url is plain http:// to %s: event bodies travel unencrypted (the "
                    "signature proves who sent them, it does not hide them); prefer https://",
                    host,
                )
            gauge = metrics.WEBHOOK_PENDING.labels(label)
            self._add(config, data_dir, workers, WebhookSink(notify), gauge.set)

    def _add(
        self,
        config: Config,
        data_dir: Path,
        workers: int,
        sink: Sink,
        count: Callable[[int], None],
    ) -> None:
        from ftserver import metrics

        adopt_orphans(data_dir / OUTBOX_DIR / sink.name, self.worker, workers)
        outbox = Outbox(
            outbox_dir(data_dir, sink.name, self.worker),
            config.notify.max_pending,
            on_drop=metrics.NOTIFY_DROPPED.labels(sink.name).inc,
            on_count=count,
        )
        if len(outbox):
            log.info(
                "notify %s: %d event(s) pending from before, in %s",
                sink.name,
                len(outbox),
                outbox.directory,
            )
        self.couriers.append(Courier(outbox, sink, retry_max=config.notify.retry_max))

    def finished(self, f: Finished) -> None:
        """The dispatcher's ``on_finished`` hook: store the event in every sink's outbox
        (on disk before the fin is answered)."""
        doc = document(f, node=self.node, now=time.time(), destination=self._destination)
        body = encode(doc)
        for courier in self.couriers:
            if not courier.sink.admits(doc):
                continue
            try:
                courier.put(doc["id"], body)
            except OSError as exc:  # the disk is full or failing: nothing to keep it in
                log.error(
                    "notify %s: the %s event of %r/%r could not be stored in %s (%s): lost",
                    courier.sink.name,
                    doc["event"],
                    f.client_id,
                    f.file_id,
                    courier.outbox.directory,
                    exc,
                )
                if courier.outbox.on_drop is not None:
                    courier.outbox.on_drop()

    def start(self) -> None:
        for courier in self.couriers:
            courier.start()

    async def stop(self) -> None:
        """Stop delivering; pending events stay on disk for the next start."""
        for courier in self.couriers:
            await courier.stop()

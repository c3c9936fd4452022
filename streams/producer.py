"""Storefront producer client (kafka-python): validate, key by user, batch, retry, report.

Usage, with a broker listening (``tests/test_ingest_e2e.py`` runs it against one)::

    with StorefrontProducer("127.0.0.1:9092") as producer:
        report = producer.send_events([{"event_id": "e1", "type": "click", "user_id": "u1",
                                        "item_id": "sku-9", "ts": "2026-01-05T10:00:00Z"}])
    report.sent, report.failed  # (1, [])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import faust
import orjson
from kafka import KafkaProducer
from kafka.errors import KafkaError

from runtime.config import Config
from streams.validation import Invalid, Validator


@dataclass
class SendReport:
    """What happened to each message of one ``send_*`` call."""

    sent: int = 0
    failed: list[tuple[int, str, str]] = field(default_factory=list)  # (index, reason, detail)

    @property
    def ok(self) -> bool:
        return not self.failed


def _as_dict(message: Mapping | faust.Record) -> dict:
    return message.asdict() if isinstance(message, faust.Record) else dict(message)


class StorefrontProducer:
    """Send interaction and catalog events to streamrec's topics.

    Events are validated with the worker's own rules before they leave (an invalid one is
    reported, never sent), keyed by ``user_id`` so each user's events stay in order,
    batched by the client (``linger_ms``) and retried on transient broker errors.
    """

    def __init__(self, bootstrap_servers: str, *, events_topic: str = "streamrec-events",
                 catalog_topic: str = "streamrec-catalog", served_topic: str = "streamrec-served",
                 linger_ms: int = 20, retries: int = 10, validator: Validator | None = None, **kafka_options):
        self.events_topic = events_topic
        self.catalog_topic = catalog_topic
        self.served_topic = served_topic
        self.validator = validator or Validator()
        self.kafka = KafkaProducer(
            bootstrap_servers=bootstrap_servers, acks="all", retries=retries, linger_ms=linger_ms,
            batch_size=256 * 1024, max_in_flight_requests_per_connection=1,  # retries keep per-user order
            retry_backoff_ms=200, **kafka_options)

    @classmethod
    def from_config(cls, config: Config, **options) -> StorefrontProducer:
        validator = Validator(config.max_payload_bytes, config.max_future_s)
        return cls(config.bootstrap_servers, events_topic=config.events_topic,
                   catalog_topic=config.catalog_topic, served_topic=config.served_topic, validator=validator,
                   **options)

    def send_events(self, events: Iterable[Mapping | faust.Record], timeout_s: float = 60.0) -> SendReport:
        """Validate and send interaction events; waits until the broker has them all."""
        return self._send(events, self.events_topic, self.validator.interaction_from_obj,
                          lambda e: e["user_id"], timeout_s)

    def send_catalog(self, items: Iterable[Mapping | faust.Record], timeout_s: float = 60.0) -> SendReport:
        """Validate and send catalog events, keyed by item."""
        return self._send(items, self.catalog_topic, self.validator.catalog_from_obj,
                          lambda i: i["item_id"], timeout_s)

    def send_shown(self, reports: Iterable[Mapping | faust.Record], timeout_s: float = 60.0) -> SendReport:
        """Validate and send which positions of served lists were displayed
        (:class:`streams.schema.ShownPositions`: ``request_id``, ``shown``, optional ``ts``),
        keyed by request id like the lists themselves. Send one when the screen showed fewer
        items than the list held; reports of one list add up."""
        return self._send(reports, self.served_topic, self.validator.shown_from_obj,
                          lambda r: r["request_id"], timeout_s)

    def _send(self, messages, topic, validate, key_of, timeout_s) -> SendReport:
        report, pending = SendReport(), []
        for index, message in enumerate(messages):
            try:
                clean = validate(_as_dict(message))
                value = orjson.dumps(clean)
                if len(value) > self.validator.max_payload_bytes:
                    raise Invalid("payload_too_large", f"{len(value)} bytes")
            except Invalid as exc:
                report.failed.append((index, exc.reason, exc.detail))
                continue
            try:
                pending.append((index, self.kafka.send(topic, key=key_of(clean).encode(), value=value)))
            except KafkaError as exc:  # e.g. no metadata for the topic within max_block_ms
                report.failed.append((index, "send_failed", f"{type(exc).__name__}: {exc}"))
        try:
            self.kafka.flush(timeout=timeout_s)
        except KafkaError:
            pass  # each unsent message's future carries its own error, reported below
        for index, future in pending:
            try:
                future.get(timeout=timeout_s)
                report.sent += 1
            except Exception as exc:  # a broker error after all retries
                report.failed.append((index, "send_failed", f"{type(exc).__name__}: {exc}"))
        report.failed.sort()
        return report

    def close(self, timeout_s: float = 30.0) -> None:
        self.kafka.close(timeout=timeout_s)

    def __enter__(self) -> StorefrontProducer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""End to end: producer client and raw bad messages -> real broker -> worker process -> store.

Runs against a fresh Postgres database and against SQLite.
"""

from __future__ import annotations

import base64
import time
from collections import Counter

import orjson
import pytest
from kafka import KafkaProducer
from sqlalchemy import func, select

from store.db import make_engine
from store.models import ingest_stats, items
from store.replay import ReplayStore
from streams.producer import StorefrontProducer
from tests.harness import Worker, read_topic, wait_until, worker_env

pytestmark = pytest.mark.broker

VALID_EVENTS = 10_000
PER_REASON = 30


def valid_events(now_ms: int) -> list[dict]:
    return [{"event_id": f"ev-{i}", "type": "purchase" if i % 7 == 0 else "click", "user_id": f"u{i % 500}",
             "item_id": f"sku-{i % 300}", "ts": now_ms - (VALID_EVENTS - i) * 1000,
             "storefront": "shop-a" if i % 3 else "shop-b", "price": 9.99 if i % 7 == 0 else None}
            for i in range(VALID_EVENTS)]


def bad_messages(now_ms: int) -> list[tuple[bytes, str]]:
    """(payload, expected reason) pairs, PER_REASON of each reason the validator knows, but duplicates."""
    def ev(i, **overrides):
        base = {"event_id": f"bad-{i}", "type": "click", "user_id": "u1", "item_id": "sku-1", "ts": now_ms}
        return orjson.dumps({k: v for k, v in {**base, **overrides}.items() if v is not ...})

    makers = {
        "payload_too_large": lambda i: ev(i, session_id="x" * 70_000),
        "not_utf8": lambda i: b'{"event_id": "bad-%d", "user_id": "\xff\xfe"}' % i,
        "not_json": lambda i: b"{oops %d" % i,
        "not_an_object": lambda i: b"[%d]" % i,
        "missing_field": lambda i: ev(i, user_id=...),
        "empty_field": lambda i: ev(i, item_id=""),
        "wrong_type": lambda i: ev(i, user_id=i),
        "unknown_type": lambda i: ev(i, type="view"),
        "invalid_ts": lambda i: ev(i, ts=f"not-a-date-{i}"),
        "ts_in_future": lambda i: ev(i, ts=now_ms + 2 * 86_400_000),
        "ts_before_2000": lambda i: ev(i, ts=now_ms // 1000),
        "invalid_value": lambda i: ev(i, quantity=0),
    }
    return [(make(i), reason) for reason, make in makers.items() for i in range(PER_REASON)]


def outcome_totals(engine) -> Counter:
    with engine.connect() as conn:
        rows = conn.execute(select(ingest_stats.c.event_type, ingest_stats.c.outcome,
                                   func.sum(ingest_stats.c.count))
                            .group_by(ingest_stats.c.event_type, ingest_stats.c.outcome)).all()
    return Counter({(t, o): int(n) for t, o, n in rows})


def test_events_flow_through_the_worker_exactly_once(broker, database_url, topic_prefix, tmp_path):
    worker = Worker(worker_env(broker, database_url, topic_prefix), tmp_path / "worker.log")
    try:
        worker.wait_ready()
        config = worker.config
        engine = make_engine(database_url)
        now_ms = time.time_ns() // 1_000_000
        good = valid_events(now_ms)

        with StorefrontProducer.from_config(config) as producer:
            report = producer.send_catalog([{"item_id": "sku-1", "title": "Red running shoes",
                                             "category": "shoes", "storefront": "shop-a"}])
            assert report.ok, report.failed
            report = producer.send_events(good)
            assert (report.sent, report.failed) == (VALID_EVENTS, [])

        bad = bad_messages(now_ms)
        raw = KafkaProducer(bootstrap_servers=broker, linger_ms=5)
        for payload, _ in bad:
            raw.send(config.events_topic, key=b"u1", value=payload)
        raw.send(config.catalog_topic, value=b'{"item_id": "sku-2"}')  # catalog without title
        raw.flush()
        wait_until(lambda: outcome_totals(engine)[("click", "accepted")] + outcome_totals(engine)[
            ("purchase", "accepted")] == VALID_EVENTS, 120, "all valid events accepted")

        # the same events again, byte for byte, after they were accepted: duplicates
        duplicates = [orjson.dumps(e) for e in good[:PER_REASON]]
        for payload in duplicates:
            raw.send(config.events_topic, key=b"dup", value=payload)
        raw.flush()
        raw.close()
        expected = Counter({reason: PER_REASON for _, reason in bad} | {"duplicate_event_id": PER_REASON})

        def rejected_by_reason():
            totals = outcome_totals(engine)
            found = Counter()
            for (event_type, outcome), n in totals.items():
                if outcome != "accepted" and event_type != "catalog":
                    found[outcome] += n
            return found if found == expected else None

        wait_until(rejected_by_reason, 120, f"rejections counted per reason: {outcome_totals(engine)}")
        totals = outcome_totals(engine)
        assert totals[("click", "accepted")] + totals[("purchase", "accepted")] == VALID_EVENTS
        assert totals[("purchase", "accepted")] == sum(e["type"] == "purchase" for e in good)
        assert totals[("catalog", "accepted")] == 1
        assert totals[("catalog", "missing_field")] == 1

        stored = ReplayStore(engine).all_event_ids()
        assert sorted(stored) == sorted(e["event_id"] for e in good)
        with engine.connect() as conn:
            assert conn.execute(select(items.c.title)).scalars().all() == ["Red running shoes"]

        letters = [orjson.loads(m.value) for m in
                   read_topic(broker, config.dead_letter_topic, sum(expected.values()) + 1)]
        by_payload = {base64.b64decode(d["payload_b64"]): d for d in letters}
        assert len(letters) == len(by_payload) == sum(expected.values()) + 1
        for payload, reason in bad + [(p, "duplicate_event_id") for p in duplicates]:
            letter = by_payload[payload]
            assert letter["reason"] == reason, (payload[:80], letter["detail"])
            assert letter["topic"] == config.events_topic and letter["offset"] >= 0 and letter["detail"]
        assert worker.alive(), worker.tail()
        engine.dispose()
    finally:
        worker.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_batch_skipped_for_a_conflict_is_read_again_where_nothing_was_stored(broker, database_url, topic_prefix):
    """One partition of a batch was stored by another worker meanwhile: the batch is skipped,
    and the other partition, from which nothing was stored, is read again from its first
    message; nothing of it is lost."""
    import asyncio

    from aiokafka import TopicPartition

    from runtime.config import Config
    from store.db import migrate
    from store.models import consumer_offsets
    from streams.ingest import IngestService
    from streams.topics import ensure_topics

    config = Config.from_env(worker_env(broker, database_url, topic_prefix, STREAMREC_TOPIC_PARTITIONS="2"))
    ensure_topics(config)
    engine = make_engine(database_url)
    migrate(engine)
    producer = KafkaProducer(bootstrap_servers=broker)
    now = int(time.time() * 1000)
    for partition in (0, 1):
        for i in range(5):
            event = {"event_id": f"e{partition}-{i}", "type": "click", "user_id": f"u{i}", "item_id": f"i{i}",
                     "storefront": "shop", "ts": now - 1000 + i}
            producer.send(config.events_topic, orjson.dumps(event), partition=partition)
    producer.flush()
    producer.close()

    async def scenario() -> tuple[int, list[int]]:
        service = IngestService(config)
        await service.on_start()  # its consumer, without the loop that would consume meanwhile
        try:
            records = {}
            while sum(len(r) for r in records.values()) < 10:
                for tp, polled in (await service.consumer.getmany(timeout_ms=500)).items():
                    records.setdefault(tp, []).extend(polled)
            batch = service.build_batch(records)
            with engine.begin() as conn:  # another worker stored partition 0 meanwhile
                conn.execute(consumer_offsets.insert(), [{"group_id": config.ingest_group,
                                                          "topic": config.events_topic, "partition": 0,
                                                          "next_offset": 5}])
            await service._commit(batch)  # skipped: partition 0 conflicts
            again = []
            for _ in range(20):
                again += [m.offset for m in (await service.consumer.getmany(
                    TopicPartition(config.events_topic, 1), timeout_ms=500)).get(
                    TopicPartition(config.events_topic, 1), [])]
                if len(again) >= 5:
                    break
            return service.positions.get(TopicPartition(config.events_topic, 1)), again
        finally:
            await service.on_stop()

    position, again = asyncio.run(scenario())
    assert position is None and again == [0, 1, 2, 3, 4]

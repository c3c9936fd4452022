"""The storefront producer client and the MovieLens mapping, against the real broker."""

from __future__ import annotations

import orjson
import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from runtime.processes import free_port, start_broker, stop
from streams import movielens
from streams.producer import StorefrontProducer
from streams.validation import Validator
from tests.harness import read_topic


@pytest.mark.broker
def test_producer_validates_keys_by_user_and_reports_failures(broker, topic_prefix):
    topic = f"{topic_prefix}-events"
    admin = KafkaAdminClient(bootstrap_servers=broker)
    admin.create_topics([NewTopic(topic, 4, 1)])
    admin.close()
    now = 1_763_000_000_000
    events = [{"event_id": f"p{i}", "type": "click", "user_id": f"u{i % 5}", "item_id": "sku",
               "ts": now + i} for i in range(50)]
    events.insert(10, {"event_id": "bad", "type": "view", "user_id": "u1", "item_id": "sku", "ts": now})
    with StorefrontProducer(broker, events_topic=topic, validator=Validator(now_ms=lambda: now)) as producer:
        report = producer.send_events(events)
    assert report.sent == 50 and not report.ok
    assert [(i, reason) for i, reason, _ in report.failed] == [(10, "unknown_type")]

    messages = read_topic(broker, topic, 50, timeout_s=10)
    assert len(messages) == 50 and b"bad" not in b"".join(m.value for m in messages)
    partitions_of_user: dict[bytes, set] = {}
    for m in messages:
        assert orjson.loads(m.value)["user_id"].encode() == m.key
        partitions_of_user.setdefault(m.key, set()).add(m.partition)
    assert all(len(p) == 1 for p in partitions_of_user.values())  # one user, one partition: ordered
    for user_messages in ([m for m in messages if m.key == key] for key in partitions_of_user):
        assert [m.offset for m in user_messages] == sorted(m.offset for m in user_messages)
        ts = [orjson.loads(m.value)["ts"] for m in sorted(user_messages, key=lambda m: m.offset)]
        assert ts == sorted(ts)


@pytest.mark.broker
def test_producer_reports_a_dead_broker_instead_of_raising(tmp_path):
    port = free_port()
    broker = start_broker(port, log=tmp_path / "broker.log")
    producer = StorefrontProducer(f"127.0.0.1:{port}", retries=2, max_block_ms=2000, request_timeout_ms=2000)
    stop(broker)
    event = {"event_id": "x", "type": "click", "user_id": "u", "item_id": "i", "ts": 1_763_000_000_000}
    report = producer.send_events([event, event | {"event_id": "y"}], timeout_s=10)
    producer.close(timeout_s=1)
    assert report.sent == 0 and [(i, r) for i, r, _ in report.failed] == [(0, "send_failed"), (1, "send_failed")]


def test_movielens_maps_to_valid_events_and_catalog():
    ratings = movielens.load_ratings()
    events = movielens.to_events(ratings, now_ms=1_763_000_000_000)
    validator = Validator(now_ms=lambda: 1_763_000_000_000)
    assert len(events) == 100_000 and len({e["event_id"] for e in events}) == 100_000
    assert all(validator.interaction_from_obj(e) for e in events)
    assert events[-1]["ts"] == 1_763_000_000_000 and [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    purchases = sum(e["type"] == "purchase" for e in events)
    assert purchases == int((ratings["rating"] == 5).sum())
    catalog = movielens.to_catalog(movielens.load_movies())
    assert len(catalog) == 1682 and all(validator.catalog_from_obj(dict(c)) for c in catalog)
    toy_story = next(c for c in catalog if c["item_id"] == "m1")
    assert toy_story["title"] == "Toy Story" and "Animation" in toy_story["category"]

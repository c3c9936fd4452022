"""Adversarial input through both ways in, on real parts (worker subprocess, broker, Postgres).

A seeded corpus of 12,000 payloads mixes valid events (some with SQL, HTML, control and
exotic Unicode characters in their ids) with malformed ones: random bytes, invalid UTF-8,
huge strings, deep nesting, non-finite and huge numbers, wrong types, empty and missing
fields, out-of-range times, and non-objects. 10,000 go to the events topic as raw messages,
2,000 as ``POST /events`` arrays, plus malformed request bodies. The worker must stay up,
store every valid event exactly once with its id byte for byte, and dead-letter every other
one with a reason.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from collections import Counter

import orjson
import pytest
from kafka import KafkaProducer

from replay import codec
from store.db import make_engine
from store.replay import ReplayStore
from tests.harness import Worker, read_topic, wait_until, worker_env

pytestmark = pytest.mark.broker

TOKEN = "fuzz-token"
NASTY_IDS = ["1'; DROP TABLE items;--", "<script>alert(1)</script>", "\" OR 1=1 --", "${jndi:ldap://x}",
             "Robert'); DELETE FROM windows; --", "\u202eevil", "zero\u200bwidth", "emoji-🛒🎁", "tab\tin",
             "ümlaut-ß-ç", "%00null", "../../etc/passwd", "{{7*7}}", "NULL", "\\x00", "line\nbreak"]


def corpus(n: int, seed: int, now: int) -> list[tuple[bytes, bool]]:
    """``n`` (payload, is_valid) pairs; valid ones have unique event ids."""
    rnd = random.Random(seed)

    def event(**overrides) -> dict:
        uid = f"{seed}-{rnd.getrandbits(64):x}"
        e = {"event_id": f"fz-{uid}", "type": rnd.choice(["click", "purchase"]), "user_id": f"u{rnd.randrange(50)}",
             "item_id": f"i{rnd.randrange(200)}", "ts": now - rnd.randrange(10**8), "storefront": "fuzz"}
        e.update(overrides)
        return e

    def valid() -> bytes:
        nasty = rnd.choice(NASTY_IDS)
        field = rnd.choice(["event_id", "user_id", "item_id", "session_id", None])
        e = event()
        if field == "event_id":
            e["event_id"] = f"{nasty}-{rnd.getrandbits(64):x}"
        elif field:
            e[field] = nasty
        return orjson.dumps(e)

    def without(e: dict, field: str) -> dict:
        return {k: v for k, v in e.items() if k != field}

    def depth(d: int) -> bytes:
        return b'{"a":' * d + b"1" + b"}" * d

    malformed = [
        lambda: rnd.randbytes(rnd.randrange(1, 300)),
        lambda: orjson.dumps(event())[:-1] + b'"\xff\xfe"}',
        lambda: b'{"event_id": "\xc3\x28", "type": "click"}',
        lambda: orjson.dumps(event(event_id="x" * 70_000)),
        lambda: orjson.dumps(event(user_id="u" * rnd.randrange(257, 5_000))),
        lambda: depth(rnd.choice([2, 50, 1_000, 5_000, 20_000])),
        lambda: orjson.dumps(event())[:-1] + rnd.choice([b',"price":NaN}', b',"price":Infinity}', b',"price":1e999}',
                                                         b',"quantity":1e30}', b',"ts":-1e400}']),
        lambda: orjson.dumps(event(**{rnd.choice(["user_id", "item_id", "ts", "type"]): rnd.choice(
            [123, 1.5, True, [], {}, ["a"]])})),
        lambda: orjson.dumps(without(event(), rnd.choice(["event_id", "user_id", "item_id", "type", "ts"]))),
        lambda: orjson.dumps(event(**{rnd.choice(["event_id", "user_id", "item_id"]): rnd.choice(["", "   ", None])})),
        lambda: orjson.dumps(event(type=rnd.choice(["view", "CLICK", "purchase ", "<b>buy</b>", "' OR 1=1"]))),
        lambda: orjson.dumps(event(ts=rnd.choice([-1, 0, 946_684_799_999, now + 10 * 86_400_000, 10**18,
                                                  "yesterday", "2026-13-45T99:00:00Z", "1999-12-31T23:59:59Z"]))),
        lambda: orjson.dumps(rnd.choice([[], [event()], "event", 42, None, True])),
        lambda: orjson.dumps(event(price=-rnd.random() - 0.01)),
        lambda: orjson.dumps(event(quantity=rnd.choice([0, -3]))),
        lambda: b"",
        lambda: b"\x00" * rnd.randrange(1, 64),
    ]
    out = []
    for _ in range(n):
        if rnd.random() < 0.4:
            out.append((valid(), True))
        else:
            out.append((rnd.choice(malformed)(), False))
    return out


def post(port: int, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/events", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_adversarial_payloads_are_stored_or_dead_lettered_never_lost(broker, database_url, topic_prefix, tmp_path):
    now = time.time_ns() // 1_000_000
    kafka_corpus, http_corpus = corpus(10_000, seed=1, now=now), corpus(2_000, seed=2, now=now)
    worker = Worker(worker_env(broker, database_url, topic_prefix, STREAMREC_API_TOKEN=TOKEN,
                               STREAMREC_WINDOW_MAX_AGE_S="3600", STREAMREC_WINDOW_MAX_EVENTS="1000000"),
                    tmp_path / "worker.log")
    engine = make_engine(database_url)
    try:
        worker.wait_ready(120)
        producer = KafkaProducer(bootstrap_servers=broker, max_request_size=2 * 1024 * 1024, linger_ms=20)
        for i, (payload, _) in enumerate(kafka_corpus):
            producer.send(worker.config.events_topic, key=f"k{i % 64}".encode(), value=payload)
        producer.flush()
        producer.close()

        # over HTTP: malformed bodies are refused whole; arrays are judged element by element
        for body in [b"\xff\xfe[", b"[" * 5_000 + b"]" * 5_000, b'[{"event_id": 1', b"{}", b"null"]:
            status, answer = post(worker.config.web_port, body)
            assert status == 400 and answer["error"], (body[:20], status, answer)
        status, answer = post(worker.config.web_port, b"[" + b'"x",' * 300_000 + b'"x"]')
        assert status == 413 and "over" in answer["error"], answer
        http_valid, http_elements = 0, []
        for payload, is_valid in http_corpus:
            try:
                element = orjson.loads(payload)
                orjson.dumps([element])
            except (orjson.JSONDecodeError, TypeError):
                continue  # not representable inside a JSON array: the Kafka half covers it
            http_elements.append((element, is_valid))
        for start in range(0, len(http_elements), 100):
            chunk = http_elements[start:start + 100]
            status, answer = post(worker.config.web_port, orjson.dumps([e for e, _ in chunk]))
            assert status == 200, answer
            rejected = {r["index"] for r in answer["rejected"]}
            assert rejected == {i for i, (_, ok) in enumerate(chunk) if not ok}, answer["rejected"][:5]
            http_valid += answer["accepted"]

        kafka_valid = sum(ok for _, ok in kafka_corpus)
        expected_accepted = kafka_valid + http_valid
        wait_until(lambda: (h := worker.health()) and h["ingest"]["accepted"] + h["ingest"]["rejected"]
                   >= len(kafka_corpus) + http_valid, 120, f"every message is judged\n{worker.tail()}")
        health = worker.health()
        assert health["ingest"] == {**health["ingest"], "accepted": expected_accepted,
                                    "rejected": len(kafka_corpus) - kafka_valid}
        assert worker.alive(), worker.tail()

        stored = codec.to_frame(ReplayStore(engine).load_open())
        sent_valid = [orjson.loads(p) for p, ok in kafka_corpus if ok] + [e for e, ok in http_elements if ok]
        assert Counter(stored["event_id"]) == Counter(e["event_id"] for e in sent_valid)  # each once, verbatim
        by_id = stored.set_index("event_id")
        for e in sent_valid[:500]:
            assert (by_id.at[e["event_id"], "user_id"], by_id.at[e["event_id"], "item_id"]) == (e["user_id"],
                                                                                              e["item_id"])
        dead = read_topic(broker, worker.config.dead_letter_topic, len(kafka_corpus) - kafka_valid)
        reasons = Counter(json.loads(m.value)["reason"] for m in dead)
        assert sum(reasons.values()) == len(kafka_corpus) - kafka_valid, reasons
        assert {"not_json", "not_utf8", "payload_too_large", "wrong_type", "missing_field", "empty_field",
                "unknown_type", "invalid_ts", "ts_before_2000", "ts_in_future", "not_an_object",
                "invalid_value"} <= set(reasons), reasons
        print(f"\n{len(kafka_corpus) + len(http_corpus)} payloads: {expected_accepted} stored, "
              f"{sum(reasons.values())} dead-lettered by reason {dict(reasons)}")
    finally:
        worker.stop()
        engine.dispose()

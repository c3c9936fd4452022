"""Two workers in one consumer group on Postgres: every event in exactly one window, every window
sealed once, and exactly one training trigger per sealed window across the cluster."""

from __future__ import annotations

import time

import pytest

from store.db import make_engine
from store.replay import ReplayStore
from streams.producer import StorefrontProducer
from tests.harness import Worker, end_offsets, wait_until, worker_env

pytestmark = pytest.mark.broker

EVENTS = 20_000
WINDOW_EVENTS = 2_000


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_two_workers_share_the_stream_and_trigger_each_window_once(broker, database_url, topic_prefix, tmp_path):
    env = worker_env(broker, database_url, topic_prefix, STREAMREC_WINDOW_MAX_EVENTS=str(WINDOW_EVENTS),
                     STREAMREC_WINDOW_MAX_AGE_S="3")
    workers = [Worker(env, tmp_path / f"w{i}.log") for i in range(2)]
    engine = make_engine(database_url)
    replay = ReplayStore(engine)
    try:
        for w in workers:
            w.wait_ready(120)
        # both members hold events partitions before any event is sent
        wait_until(lambda: all(any("-events[" in tp for tp in (w.health() or {}).get("assigned", ()))
                               for w in workers), 60, "both workers own events partitions")
        now = time.time_ns() // 1_000_000
        with StorefrontProducer.from_config(workers[0].config) as producer:
            report = producer.send_events([{"event_id": f"c{i}", "type": "click", "user_id": f"u{i % 997}",
                                            "item_id": f"i{i % 311}", "ts": now - EVENTS + i}
                                           for i in range(EVENTS)])
        assert (report.sent, report.failed) == (EVENTS, [])

        wait_until(lambda: replay.stored_events() == EVENTS and replay.open_window()[0] == 0, 120,
                   "every event sealed into a window")
        windows = wait_until(lambda: (ws := replay.list_windows()) and all(w["trigger_claimed_by"] for w in ws)
                             and ws, 60, "every window's training trigger taken")
        # no second trigger can come: every notice is published (the outbox is empty) and every
        # message of the windows topic (notices are published at least once) has been taken
        wait_until(lambda: replay.unpublished_notices() == [], 30, "every notice marked published")
        published = sum(end_offsets(broker, workers[0].config.windows_topic).values())
        health = wait_until(lambda: (hs := [w.health() for w in workers]) and all(hs)
                            and sum(h["replay"]["notices_received"] for h in hs) >= published and hs, 60,
                            f"the {published} messages of the windows topic are taken")

        ids = replay.all_event_ids()
        assert len(ids) == len(set(ids)) == EVENTS
        assert all(h["ingest"]["accepted"] > 0 for h in health), health  # both workers ingested
        assert sum(h["ingest"]["accepted"] for h in health) == EVENTS
        assert sum(h["replay"]["sealed"] for h in health) == len(windows)  # no window sealed twice
        assert sum(h["replay"]["notices"] for h in health) == len(windows)  # one notice recorded per window
        assert sum(w["n_events"] for w in windows) == EVENTS
        assert len({w["trigger_claimed_by"] for w in windows}) == 1  # the owner of the windows partition
        assert all(w.alive() for w in workers)
    finally:
        for w in workers:
            w.stop()
        engine.dispose()

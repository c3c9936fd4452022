"""A worker's ingest processes: they share the partitions, one that dies is replaced without
losing or repeating an event, and none outlives the worker, even one killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from store.db import make_engine
from store.replay import ReplayStore
from streams.producer import StorefrontProducer
from tests.harness import Worker, wait_ingested, wait_until, worker_env

pytestmark = pytest.mark.broker

BATCH = 3_000


def events(start: int, now_ms: int) -> list[dict]:
    return [{"event_id": f"proc-{i}", "type": "click", "user_id": f"u{i % 200}", "item_id": f"sku-{i % 90}",
             "ts": now_ms - 10_000 + i % 10_000, "storefront": "shop"} for i in range(start, start + BATCH)]


def running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_ingest_processes_share_partitions_restart_and_die_with_the_worker(broker, database_url, topic_prefix,
                                                                            tmp_path):
    env = worker_env(broker, database_url, topic_prefix, STREAMREC_INGEST_PROCESSES="2",
                     STREAMREC_WINDOW_MAX_EVENTS="100000", STREAMREC_WINDOW_MAX_AGE_S="600")
    worker = Worker(env, tmp_path / "worker.log")
    engine = make_engine(database_url)
    replay = ReplayStore(engine)
    try:
        worker.wait_ready()
        health = worker.health()
        first_pids = health["ingest"]["pids"]
        assert len(first_pids) == 2 and all(running(pid) for pid in first_pids), health
        events_partitions = [tp for tp in health["assigned"] if tp.startswith(worker.config.events_topic)]
        assert sorted(events_partitions) == [f"{worker.config.events_topic}[{p}]" for p in range(4)], health

        now_ms = time.time_ns() // 1_000_000
        with StorefrontProducer.from_config(worker.config) as producer:
            assert producer.send_events(events(0, now_ms)).failed == []
            wait_until(lambda: replay.stored_events() == BATCH, 60, f"{BATCH} events stored")

            os.kill(first_pids[0], signal.SIGKILL)  # mid-stream: no shutdown, no commit
            assert producer.send_events(events(BATCH, now_ms)).failed == []
            wait_until(lambda: (h := worker.health()) and h["ingest"]["restarts"] == 1 and h["status"] == "ok"
                       and len(h["ingest"]["pids"]) == 2, 60, "the killed ingest process replaced")
            wait_until(lambda: replay.stored_events() >= 2 * BATCH, 90, f"{2 * BATCH} events stored")
        wait_ingested(worker.config, engine, 60)  # no batch can land again: counting now is final
        ids = replay.all_event_ids()
        assert (len(ids), set(ids)) == (2 * BATCH, {f"proc-{i}" for i in range(2 * BATCH)})
        assert worker.alive()

        pids = worker.health()["ingest"]["pids"]
        assert first_pids[0] not in pids and first_pids[1] in pids
        worker.proc.kill()
        worker.proc.wait()
        wait_until(lambda: not any(running(pid) for pid in pids), 15, f"ingest processes {pids} gone with the worker")
    finally:
        worker.stop()
        engine.dispose()

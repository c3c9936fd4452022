"""Events in, models out: a worker seals MovieLens windows, trains a version per window in its
training process and publishes them with lineage; killing that process mid-run writes no version
and the next windows train normally. Real broker, real Postgres, real MiniLM. The gate is
loosened here (two epochs on 4,000 events do not beat popularity); its verdicts are tested in
test_training_job.py."""

from __future__ import annotations

import os
import signal
import time

import pytest

from store.db import make_engine
from store.registry import list_runs, list_versions, serving_version
from streams import movielens
from streams.producer import StorefrontProducer
from tests.harness import Worker, wait_until, worker_env

pytestmark = pytest.mark.broker

WINDOW_EVENTS = 4_000


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_windows_train_into_promoted_versions_and_survive_a_killed_training_process(
        broker, database_url, topic_prefix, tmp_path):
    env = worker_env(broker, database_url, topic_prefix, STREAMREC_WINDOW_MAX_EVENTS=str(WINDOW_EVENTS),
                     STREAMREC_WINDOW_MAX_AGE_S="5", STREAMREC_TRAIN_EPOCHS="2", STREAMREC_GATE_TOLERANCE="0.9",
                     STREAMREC_REHEARSAL_CAPACITY="3000")
    worker = Worker(env, tmp_path / "worker.log")
    engine = make_engine(database_url)
    try:
        worker.wait_ready(120)
        now = time.time_ns() // 1_000_000
        with StorefrontProducer.from_config(worker.config) as producer:
            assert producer.send_catalog(movielens.to_catalog(movielens.load_movies())).ok
            report = producer.send_events(movielens.to_events(movielens.load_ratings(), now)[:3 * WINDOW_EVENTS])
        assert (report.sent, report.failed) == (3 * WINDOW_EVENTS, [])

        # kill the training process while it works on the first window
        first_run = wait_until(lambda: next((r for r in list_runs(engine) if r["status"] == "running"), None),
                               120, "a training run starts")
        os.kill(int(first_run["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
        failed = wait_until(lambda: next((r for r in list_runs(engine)
                                          if r["id"] == first_run["id"] and r["status"] == "failed"), None),
                            60, f"the killed run is marked failed\n{worker.tail()}")
        assert "died" in failed["error"]

        versions = wait_until(lambda: len(v := list_versions(engine)) >= 2 and v, 400,
                              f"two versions trained after the crash\n{worker.tail()}")
        newer, older = versions[:2]
        assert [v["status"] for v in (older, newer)] == ["promoted", "promoted"], [v["reason"] for v in versions]
        assert newer["parent_id"] == older["id"]
        assert first_run["window_id"] not in older["windows"] + newer["windows"]
        assert serving_version(engine)["id"] == newer["id"]
        runs = {r["window_id"]: r for r in list_runs(engine) if r["status"] == "succeeded"}
        assert {runs[w]["version_id"] for w in newer["windows"] + older["windows"]} == {newer["id"], older["id"]}
        health = worker.health()
        assert health["training"]["failed"] == 1 and health["training"]["promoted"] >= 2, health
        assert worker.alive(), worker.tail()
    finally:
        worker.stop()
        engine.dispose()

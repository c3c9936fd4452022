"""Events in, models out: a worker seals MovieLens windows, its trainer process leases and trains
them and publishes versions with lineage; killing that process mid-job writes no version, and the
trainer the worker starts in its place (a new trainer id) takes the windows over once the lease
expires. Real broker, real Postgres, real MiniLM. The gate is loosened here (two epochs on 4,000
events do not beat popularity); its verdicts are tested in test_training_job.py."""

from __future__ import annotations

import os
import signal
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

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
                     STREAMREC_GATE_MAX_COVERAGE_DROP="0.9",  # two-epoch models: recall is the gate here
                     STREAMREC_REHEARSAL_CAPACITY="3000", STREAMREC_TRAIN_MAX_EVENTS=str(WINDOW_EVENTS),
                     STREAMREC_TRAIN_LEASE_S="5")
    worker = Worker(env, tmp_path / "worker.log")
    engine = make_engine(database_url)
    try:
        worker.wait_ready(120)
        now = time.time_ns() // 1_000_000
        with StorefrontProducer.from_config(worker.config) as producer:
            assert producer.send_catalog(movielens.to_catalog(movielens.load_movies())).ok
            report = producer.send_events(movielens.to_events(movielens.load_ratings(), now)[:3 * WINDOW_EVENTS])
        assert (report.sent, report.failed) == (3 * WINDOW_EVENTS, [])

        # kill the training process while it works on the first job
        first_run = wait_until(lambda: next((r for r in list_runs(engine) if r["status"] == "running"), None),
                               120, "a training run starts")
        os.kill(int(first_run["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
        failed = wait_until(lambda: next((r for r in list_runs(engine)
                                          if r["id"] == first_run["id"] and r["status"] == "failed"), None),
                            120, f"the killed run is marked failed once its lease expires\n{worker.tail()}")
        assert "lease expired" in failed["error"]

        versions = wait_until(lambda: len(v := list_versions(engine)) >= 3 and v, 400,
                              f"every window trained after the crash\n{worker.tail()}")
        assert [v["status"] for v in versions] == ["promoted"] * 3, [v["reason"] for v in versions]
        assert [v["parent_id"] for v in versions] == [versions[1]["id"], versions[2]["id"], None]
        assert sorted(w for v in versions for w in v["windows"]) == [1, 2, 3]  # the killed job's window too
        assert serving_version(engine)["id"] == versions[0]["id"]
        runs = [r for r in list_runs(engine) if r["status"] == "succeeded"]
        assert {r["version_id"] for r in runs} == {v["id"] for v in versions}
        assert first_run["worker"] not in {r["worker"] for r in runs}  # a new trainer finished the work
        health = wait_until(lambda: (h := worker.health()) and h["training"]["backlog"].get("windows_trained") == 3
                            and h, 30, "/health shows the trained windows")
        assert health["training"]["restarts"] == 1 and health["training"]["failed"] == 1, health
        assert health["training"]["promoted"] == 3 and health["training"]["backlog"]["windows_waiting"] == 0

        # the same numbers for Prometheus, and for ops in SQL
        urllib.request.urlopen(f"http://127.0.0.1:{worker.config.web_port}/similar/m1?k=5").read()
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.config.web_port}/metrics") as answer:
            assert answer.headers["Content-Type"].startswith("text/plain")
            families = {f.name: f for f in text_string_to_metric_families(answer.read().decode())}
        value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
        assert value[("streamrec_windows", (("state", "trained"),))] == 3
        assert value[("streamrec_training_backlog_windows", ())] == 0
        assert value[("streamrec_model_versions_total", (("status", "promoted"),))] == 3
        assert value[("streamrec_training_runs_total", (("status", "failed"),))] == 1
        assert sum(v for (name, labels), v in value.items() if name == "streamrec_ingest_messages_total"
                   and ("outcome", "accepted") in labels and ("event_type", "catalog") not in labels) == 3 * WINDOW_EVENTS
        assert all(v == 0 for (name, _), v in value.items() if name == "streamrec_consumer_lag_messages")
        assert 0 <= value[("streamrec_serving_staleness_seconds", ())] < 600
        assert value[("streamrec_http_request_seconds_count",
                      (("endpoint", "/similar/{item_id}"), ("method", "GET"), ("status", "200")))] == 1
        assert {"streamrec_drift_open_alerts", "streamrec_training_job_seconds"} <= set(families)
        with engine.connect() as conn:
            states = conn.execute(text("SELECT train_state, count(*) FROM training_windows GROUP BY 1")).all()
        assert dict(states) == {"trained": 3}
        assert worker.alive(), worker.tail()
    finally:
        worker.stop()
        engine.dispose()

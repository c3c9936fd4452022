"""Faults on real parts: the Postgres server stops while a training job publishes its version.

The server is really stopped (``pg_ctlcluster ... stop``) and started again; the test always
starts it again, whatever happens.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time

import pytest
from sqlalchemy import func, select

from runtime.processes import free_port, start_broker, stop
from store.db import make_engine
from store.models import model_versions, training_runs
from store.replay import ReplayStore
from streams import movielens
from streams.producer import StorefrontProducer
from tests.harness import Worker, store_text_vectors, wait_until, worker_env

pytestmark = pytest.mark.broker


def postgres(action: str) -> None:
    """Start or stop the local cluster (the one the tests' databases live on)."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action, "-m", "fast"]
                   if action == "stop" else ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
                   check=True, capture_output=True, timeout=60)
    if action == "start":
        for _ in range(60):
            if subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432", "-q"]).returncode == 0:
                return
            time.sleep(0.5)
        raise AssertionError("Postgres did not come back")


@pytest.mark.skipif(not os.path.isdir("/etc/postgresql"), reason="needs a local Postgres cluster to stop and start")
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_version_published_while_postgres_is_down_is_retried_and_lands_whole(
        broker, database_url, topic_prefix, tmp_path, movielens_text_vectors):
    store_text_vectors(database_url, movielens_text_vectors)
    env = worker_env(broker, database_url, topic_prefix, STREAMREC_WINDOW_MAX_EVENTS="3000",
                     STREAMREC_WINDOW_MAX_AGE_S="3600", STREAMREC_TRAIN_EPOCHS="3", STREAMREC_GATE_TOLERANCE="0.9")
    worker = Worker(env, tmp_path / "worker.log")
    engine = make_engine(database_url)
    events = movielens.to_events(movielens.load_ratings(), time.time_ns() // 1_000_000)[:3_500]
    try:
        worker.wait_ready(120)
        with StorefrontProducer.from_config(worker.config) as producer:
            assert producer.send_catalog(movielens.to_catalog(movielens.load_movies())).ok
            assert producer.send_events(events).ok
        wait_until(lambda: "epoch 1 done" in worker.log.read_text(), 240, f"training starts\n{worker.tail()}")
        postgres("stop")
        try:
            wait_until(lambda: "publishing the version of window" in worker.log.read_text(), 240,
                       f"the finished job tries to publish while the store is down\n{worker.tail()}", interval_s=1)
            time.sleep(3)  # a few failed tries
        finally:
            postgres("start")
        run = wait_until(lambda: next((r for r in _runs(engine) if r["status"] != "running"), None), 120,
                         f"the run closes once the store is back\n{worker.tail()}", interval_s=1)
        assert run["status"] == "succeeded" and run["version_id"] is not None, run
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(model_versions)).scalar_one() == 1
            version = conn.execute(select(model_versions).where(model_versions.c.id == run["version_id"])).mappings().one()
        assert version["windows"] == [run["window_id"]] and len(version["weights"]) > 1000 and version["sha256"]
        # ingest rode out the outage too: every event is stored once
        wait_until(lambda: ReplayStore(engine).stored_events() == len(events), 120, "all events stored")
        assert sorted(ReplayStore(engine).all_event_ids()) == sorted(e["event_id"] for e in events)
        assert worker.alive(), worker.tail()
    finally:
        worker.stop()
        engine.dispose()


def _runs(engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(training_runs)).mappings()]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_worker_rides_out_a_broker_restart(database_url, topic_prefix, tmp_path):
    """The bundled broker keeps nothing across a restart: the worker must notice that the logs
    it had stored offsets for are gone and read the new ones from their start."""
    port = free_port()
    broker = start_broker(port, log=tmp_path / "broker.log")
    env = worker_env(f"127.0.0.1:{port}", database_url, topic_prefix, STREAMREC_WINDOW_MAX_AGE_S="3600",
                     STREAMREC_WINDOW_MAX_EVENTS="100000")
    worker = Worker(env, tmp_path / "worker.log")
    engine = make_engine(database_url)
    events = movielens.to_events(movielens.load_ratings(), time.time_ns() // 1_000_000)[:4_000]
    try:
        worker.wait_ready(120)
        with StorefrontProducer.from_config(worker.config) as producer:
            assert producer.send_events(events[:2_000]).ok
        wait_until(lambda: ReplayStore(engine).stored_events() == 2_000, 60, "the first events are stored")

        stop(broker)
        time.sleep(3)
        broker = start_broker(port, log=tmp_path / "broker-2.log")
        events_topic = worker.config.events_topic
        wait_until(lambda: len(re.findall(rf"{events_topic}\[\d\]: the broker's log is empty",
                                          worker.log.read_text())) == 4, 120,
                   f"the worker rejoins and notices each partition's log is gone\n{worker.tail()}", interval_s=1)
        with StorefrontProducer.from_config(worker.config) as producer:
            report = producer.send_events(events[2_000:])
        assert report.ok, report.failed[:3]
        wait_until(lambda: ReplayStore(engine).stored_events() == 4_000, 180,
                   f"events sent after the restart are stored\n{worker.tail()}", interval_s=1)
        assert sorted(ReplayStore(engine).all_event_ids()) == sorted(e["event_id"] for e in events)
        assert worker.alive() and worker.health()["status"] == "ok", worker.tail()
    finally:
        worker.stop()
        stop(broker)
        engine.dispose()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_workers_killed_during_training_leave_no_half_version_and_training_resumes(
        broker, database_url, topic_prefix, tmp_path, movielens_text_vectors):
    store_text_vectors(database_url, movielens_text_vectors)
    # runs of several seconds (ten epochs on two windows of 4,000 events), so each kill lands mid-run
    env = worker_env(broker, database_url, topic_prefix, STREAMREC_WINDOW_MAX_EVENTS="4000",
                     STREAMREC_WINDOW_MAX_AGE_S="3600", STREAMREC_TRAIN_EPOCHS="10", STREAMREC_GATE_TOLERANCE="0.9",
                     STREAMREC_TRAIN_LEASE_S="5", STREAMREC_TRAIN_MAX_TRIES="5", STREAMREC_TRAIN_MIN_EVENTS="3000")
    engine = make_engine(database_url)
    events = movielens.to_events(movielens.load_ratings(), time.time_ns() // 1_000_000)[:8_000]
    worker = Worker(env, tmp_path / "worker-0.log")
    try:
        worker.wait_ready(120)
        with StorefrontProducer.from_config(worker.config) as producer:
            assert producer.send_catalog(movielens.to_catalog(movielens.load_movies())).ok
            assert producer.send_events(events).ok
        killed, killed_trainers = [], set()
        for kill in range(3):
            run = wait_until(lambda: next((r for r in _runs(engine) if r["status"] == "running"
                                           and r["worker"] not in killed_trainers), None), 240,
                             f"a training run is under way\n{worker.tail()}", interval_s=0.2)
            killed_trainers.add(run["worker"])
            os.kill(worker.proc.pid, signal.SIGKILL)  # the training process dies with it
            worker.proc.wait()
            killed.append(run["windows"])
            # the next run is looked for from the restart on: it may end before the worker answers HTTP
            worker = Worker(env, tmp_path / f"worker-{kill + 1}.log")
        worker.wait_ready(120)
        def both_trained():  # window ids need not be 1 and 2: a sealing killed mid-way spends an id on Postgres
            sealed = {w["id"] for w in ReplayStore(engine).list_windows()}
            runs = _runs(engine)
            trained = {w for r in runs if r["status"] == "succeeded" for w in r["windows"]}
            return len(sealed) == 2 and sealed <= trained and runs

        runs = wait_until(both_trained, 400, f"both windows end up trained\n{worker.tail()}", interval_s=1)
        assert not [r for r in runs if r["status"] == "running"]
        failed = [r for r in runs if r["status"] == "failed"]
        # each trainer stopped with its worker (or, killed outright, lost its lease): its run failed, nothing published
        assert len(failed) == 3 and all("stopped" in r["error"] or "lease expired" in r["error"] for r in failed), failed
        with engine.connect() as conn:
            versions = conn.execute(select(model_versions)).mappings().all()
        assert {v["id"] for v in versions} == {r["version_id"] for r in runs if r["status"] == "succeeded"}
        assert all(hashlib.sha256(v["weights"]).hexdigest() == v["sha256"] for v in versions)
        assert ReplayStore(engine).stored_events() == len(events)
        assert sorted(ReplayStore(engine).all_event_ids()) == sorted(e["event_id"] for e in events)
        print(f"\nkilled the worker during training of windows {killed}; "
              f"{len(versions)} whole versions, {len(failed)} runs marked failed")
    finally:
        worker.stop()
        engine.dispose()

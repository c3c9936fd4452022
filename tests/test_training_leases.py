"""Training work leased from the store: one job at a time across trainers (one lineage), coalesced
jobs, expired leases taken over, failing windows isolated, too little evidence never promoted,
no NaN in Postgres JSON.

Real stores (Postgres and SQLite), real MovieLens-100k windows, the real MiniLM encoder, and
real trainer processes for the SIGKILL case.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import String, cast, func, select

from replay import codec
from replay.memory import make_memory
from replay.windows import WindowPolicy
from runtime.config import Config
from store.db import make_engine, migrate
from store.ingest import IngestBatch, IngestWriter, Source
from store.models import drift_metrics, model_versions, training_runs
from store.registry import list_runs, list_versions, start_run
from store.replay import ReplayStore
from store.training_queue import (
    LeaseLost,
    backlog,
    claim_job,
    complete_job,
    release_job,
)
from streams import movielens
from tests.harness import store_text_vectors, wait_until
from training.loop import run_trainer, train_next

T0 = 1_764_000_000_000
FAST = {"STREAMREC_TRAIN_EPOCHS": "1", "STREAMREC_GATE_TOLERANCE": "0.9", "STREAMREC_REHEARSAL_CAPACITY": "2000",
        "STREAMREC_GATE_MIN_EVENTS": "20", "STREAMREC_TRAIN_MIN_EVENTS": "1", "STREAMREC_TRAIN_MAX_WAIT_S": "0"}


def seal_windows(engine, events: list[dict], window_events: int, catalog: bool = True) -> list[int]:
    """Store ``events`` (and the MovieLens catalog) and seal them into windows of ``window_events``."""
    migrate(engine)
    now = time.time_ns() // 1_000_000
    writer = IngestWriter(engine, f"g-{uuid.uuid4().hex[:8]}", 10 ** 8)  # a group per call: offsets start at 0
    if catalog:
        items = [c | {"ts": now} for c in movielens.to_catalog(movielens.load_movies())]
        writer.write(IngestBatch(received_at=now, items=items, offsets={("catalog", 0): (None, 1)}))
    writer.write(IngestBatch(received_at=now, offsets={("events", 0): (None, len(events))},
                             events=codec.to_table(events),
                             sources=[Source("events", 0, i, None, b"") for i in range(len(events))]))
    replay = ReplayStore(engine, WindowPolicy(window_events, 0.001), lambda: make_memory("reservoir", 2000, 1))
    return [w.id for w in replay.seal_due(now + 1000)]


def trained(engine, trainer_id: str, window_ids: list[int]) -> None:
    """Mark the job's windows trained, as its published version would."""
    with engine.begin() as conn:
        complete_job(conn, trainer_id, window_ids, None)


@pytest.fixture(scope="module")
def ratings():
    return movielens.to_events(movielens.load_ratings(), time.time_ns() // 1_000_000)


def test_concurrent_trainers_take_one_job_at_a_time_in_order(database_url, ratings):
    engine = make_engine(database_url)
    try:
        ids = seal_windows(engine, ratings[:6_000], 500, catalog=False)
        assert len(ids) == 12

        def claim(n):
            return n, claim_job(engine, f"trainer-{n}", T0, lease_s=60, max_events=1_500)

        jobs: list = []
        with ThreadPoolExecutor(6) as pool:
            for round_ in range(20):  # trainers claiming at the same moment, round after round
                won = [(n, job) for n, job in pool.map(claim, range(6 * round_, 6 * round_ + 6)) if job is not None]
                assert len(won) <= 1, won  # a live lease anywhere: every other trainer stands by
                for n, job in won:
                    assert claim(99)[1] is None  # still leased
                    with engine.begin() as conn:
                        complete_job(conn, f"trainer-{n}", job.window_ids, None)
                    jobs.append(job)
                if backlog(engine, T0)["by_state"].get("pending", 0) == 0:
                    break
        taken = [w for job in jobs for w in job.window_ids]
        assert taken == ids  # each window once, in order: every job follows the one before it
        assert all(0 < job.n_events <= 1_500 for job in jobs)
        assert backlog(engine, T0)["windows_trained"] == 12
    finally:
        engine.dispose()


def test_evidence_waits_and_failing_windows_are_isolated_then_failed(engine, ratings):
    ids = seal_windows(engine, ratings[:1], 1, catalog=False)
    assert claim_job(engine, "a", T0, lease_s=60, max_events=10_000, min_events=500, max_wait_s=600) is None
    later = T0 + 601_000 + (time.time_ns() // 1_000_000 - T0)
    assert claim_job(engine, "a", later, lease_s=60, max_events=10_000, min_events=500, max_wait_s=600).window_ids == ids
    trained(engine, "a", ids)

    more = seal_windows(engine, ratings[1:1_201], 400, catalog=False)
    job = claim_job(engine, "b", T0, lease_s=60, max_events=10_000)
    assert job.window_ids == more and not job.retry
    for attempt in range(1, 4):
        assert release_job(engine, "b", job, "ValueError: poisoned", max_tries=3) == ([more[0]] if attempt == 3 else [])
        if attempt < 3:
            job = claim_job(engine, "b", T0, lease_s=60, max_events=10_000)
            assert job.window_ids == [more[0]] and job.retry  # the window that failed is retried alone
    # later windows keep training: those of the failed job one by one, then new ones together again
    for expected in ([more[1]], [more[2]]):
        assert claim_job(engine, "c", T0, lease_s=60, max_events=10_000).window_ids == expected
        trained(engine, "c", expected)
    newer = seal_windows(engine, ratings[1_201:2_001], 400, catalog=False)
    assert claim_job(engine, "c", T0, lease_s=60, max_events=10_000).window_ids == newer
    state = backlog(engine, T0)
    assert state["windows_failed"] == 1 and state["failed"] == [{"window_id": more[0], "error": "ValueError: poisoned"}]


def test_an_expired_lease_is_taken_over_and_fences_the_late_trainer(engine, ratings):
    ids = seal_windows(engine, ratings[:800], 400, catalog=False)
    job = claim_job(engine, "slow", T0, lease_s=10, max_events=10_000)
    run_id = start_run(engine, job.window_ids, "slow")
    assert claim_job(engine, "other", T0 + 5_000, lease_s=10, max_events=10_000) is None  # still leased
    taken = claim_job(engine, "other", T0 + 11_000, lease_s=10, max_events=10_000)
    assert taken.window_ids == ids
    slow_run = next(r for r in list_runs(engine) if r["id"] == run_id)
    assert slow_run["status"] == "failed" and "lease expired" in slow_run["error"]
    with pytest.raises(LeaseLost), engine.begin() as conn:
        complete_job(conn, "slow", ids, None)
    with engine.begin() as conn:
        complete_job(conn, "other", ids, None)
    assert backlog(engine, T0)["windows_trained"] == 2


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_burst_of_windows_trains_as_few_versions_each_window_with_its_drift(database_url, ratings,
                                                                            movielens_text_vectors):
    store_text_vectors(database_url, movielens_text_vectors)
    engine = make_engine(database_url)
    try:
        ids = seal_windows(engine, ratings[:6_000], 300)
        assert len(ids) == 20
        config = Config.from_env({"STREAMREC_DATABASE_URL": database_url, **FAST,
                                  "STREAMREC_TRAIN_MAX_EVENTS": "3000", "STREAMREC_TRAIN_JOB_SECONDS": "3600"})
        stop = threading.Event()
        trainer = threading.Thread(target=run_trainer, args=(config, "burst-trainer", stop, 0.2))
        trainer.start()
        try:
            wait_until(lambda: backlog(engine, T0)["windows_trained"] == 20, 600, "all 20 windows trained",
                       interval_s=1)
        finally:
            stop.set()
            trainer.join()
        versions = list_versions(engine)
        assert 1 <= len(versions) <= 3, [v["windows"] for v in versions]
        assert sorted(w for v in versions for w in v["windows"]) == ids
        with engine.connect() as conn:
            measured = set(conn.execute(select(drift_metrics.c.window_id).distinct()).scalars())
        assert measured == set(ids)  # every window has its drift rows
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_one_event_window_is_never_promoted_and_no_nan_reaches_postgres_json(database_url, ratings,
                                                                               movielens_text_vectors):
    store_text_vectors(database_url, movielens_text_vectors)
    engine = make_engine(database_url)
    try:
        seal_windows(engine, ratings[:1], 1)
        config = Config.from_env({"STREAMREC_DATABASE_URL": database_url, **FAST})
        outcome = train_next(engine, config, "tiny-trainer")
        assert outcome["status"] == "rejected" and "too little evidence" in outcome["reason"], outcome
        with engine.connect() as conn:
            texts = conn.execute(select(cast(model_versions.c.metrics, String))).scalars().all()
            texts += conn.execute(select(cast(training_runs.c.log, String))).scalars().all()
            values = conn.execute(select(drift_metrics.c.value)).scalars().all()
        assert texts and not [t for t in texts if t and ("NaN" in t or "Infinity" in t)], texts
        assert all(v is None or v == v for v in values)
        assert backlog(engine, T0)["windows_trained"] == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_two_trainers_keep_one_lineage_through_a_burst_and_a_killed_trainer(database_url, ratings, tmp_path,
                                                                          movielens_text_vectors):
    """Two trainer processes, 20 windows sealed at once: jobs train one at a time, each promoted
    version descends from the one it replaces, every window is in exactly one version, and the
    work of a SIGKILLed trainer is taken over within one lease."""
    store_text_vectors(database_url, movielens_text_vectors)
    engine = make_engine(database_url)
    lease_s = 4
    env = {**os.environ, "STREAMREC_DATABASE_URL": database_url, **FAST, "STREAMREC_TRAIN_EPOCHS": "2",
           "STREAMREC_TRAIN_LEASE_S": str(lease_s), "STREAMREC_TRAIN_JOB_SECONDS": "8", "PYTHONUNBUFFERED": "1"}

    def trainer(name: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "training.loop"], env=env,
                                stdout=open(tmp_path / f"{name}.log", "wb"), stderr=subprocess.STDOUT)

    trainers = {}
    try:
        ids = seal_windows(engine, ratings[:6_000], 300)
        assert len(ids) == 20
        trainers = {name: trainer(name) for name in ("a", "b")}
        run = wait_until(lambda: next((r for r in list_runs(engine) if r["status"] == "running"
                                       and r["windows"][0] > ids[0]), None), 300,
                         "a trainer starts its second job", interval_s=0.05)
        victim = next(p for p in trainers.values() if run["worker"].endswith(f":{p.pid}"))
        victim.send_signal(signal.SIGKILL)
        killed_at = time.time_ns() // 1_000_000
        victim.wait()
        wait_until(lambda: backlog(engine, T0)["windows_trained"] == len(ids), 600,
                   "the other trainer trains every window\n" + "\n".join(
                       (tmp_path / f"{n}.log").read_text()[-1500:] for n in trainers), interval_s=1)

        runs = list_runs(engine)
        killed = next(r for r in runs if r["id"] == run["id"])
        assert killed["status"] == "failed" and "lease expired" in killed["error"], killed
        taken_over = min(r["started_at"] for r in runs
                         if r["id"] != run["id"] and set(r["windows"]) & set(run["windows"]))
        assert taken_over - killed_at <= (lease_s + 2) * 1000, (taken_over - killed_at, runs)
        starts = sorted((r["started_at"], r["finished_at"] or 0) for r in runs if r["status"] == "succeeded")
        assert all(later[0] >= earlier[1] for earlier, later in zip(starts, starts[1:]))  # one job at a time

        versions = sorted(list_versions(engine), key=lambda v: v["id"])
        assert len(versions) >= 3 and sorted(w for v in versions for w in v["windows"]) == ids  # each window once
        promoted = [v for v in versions if v["promoted_at"] is not None]
        assert [v["parent_id"] for v in promoted] == [None, *(v["id"] for v in promoted[:-1])], [
            (v["id"], v["parent_id"], v["status"]) for v in versions]
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(training_runs)
                                .where(training_runs.c.status == "running")).scalar_one() == 0
        print(f"\n{len(versions)} versions from {len(runs)} runs; the killed job was taken over "
              f"{(taken_over - killed_at) / 1000:.1f}s after the kill (lease {lease_s}s)")
    finally:
        for proc in trainers.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        engine.dispose()

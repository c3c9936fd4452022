"""Events in, drift metrics out: a real worker seals MovieLens windows from two storefronts, trains a
version per window and stores every drift metric of every window and storefront with it; the
ops role reads them and cannot write; `streamrec drift` prints them and `streamrec report`
draws them (checked in headless Chromium). Real broker, Postgres and MiniLM."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from drift.metrics import METRICS
from store import drift_metrics as stored
from store.db import make_engine
from store.registry import list_runs, list_versions
from streamrec.cli import main
from streams import movielens
from streams.producer import StorefrontProducer
from tests.harness import Worker, store_text_vectors, wait_until, worker_env
from tests.test_drift_report import assert_every_plot_drawn

pytestmark = pytest.mark.broker

WINDOW_EVENTS = 2_000
WINDOWS = 3
STOREFRONTS = ("ml-odd", "ml-even")
FIRST_WINDOW = {"new_item_share", "new_user_share", "purchase_share", "probe_recall@20", "probe_ndcg@20",
                "backward_transfer"}  # the rest compare with an earlier window or version


def storefront_of(user_id: str) -> str:
    return STOREFRONTS[int(user_id[1:]) % 2 == 0]


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_every_window_and_storefront_gets_every_drift_metric(broker, database_url, topic_prefix, tmp_path,
                                                             monkeypatch, movielens_text_vectors):
    store_text_vectors(database_url, movielens_text_vectors)
    env = worker_env(broker, database_url, topic_prefix, STREAMREC_WINDOW_MAX_EVENTS=str(WINDOW_EVENTS),
                     STREAMREC_WINDOW_MAX_AGE_S="120", STREAMREC_TRAIN_EPOCHS="1", STREAMREC_GATE_TOLERANCE="0.9",
                     STREAMREC_REHEARSAL_CAPACITY="2000", STREAMREC_DRIFT_REFERENCE_WINDOWS="1",
                     STREAMREC_DRIFT_PROBE_EVENTS="300", STREAMREC_TRAIN_MAX_EVENTS=str(WINDOW_EVENTS))
    worker = Worker(env, tmp_path / "worker.log")
    engine = make_engine(database_url)
    try:
        worker.wait_ready(120)
        now = time.time_ns() // 1_000_000
        catalog = movielens.to_catalog(movielens.load_movies())
        events = movielens.to_events(movielens.load_ratings(), now)[:WINDOWS * WINDOW_EVENTS]
        with StorefrontProducer.from_config(worker.config) as producer:
            assert producer.send_catalog([c | {"storefront": s} for s in STOREFRONTS for c in catalog]).ok
            report = producer.send_events([e | {"storefront": storefront_of(e["user_id"])} for e in events])
        assert (report.sent, report.failed) == (len(events), [])

        runs = wait_until(lambda: len(r := [r for r in list_runs(engine) if r["status"] == "succeeded"]) >= WINDOWS
                          and r, 480, f"{WINDOWS} windows trained\n{worker.tail()}")
        assert worker.alive(), worker.tail()
    finally:
        worker.stop()

    version_of = {r["window_id"]: r["version_id"] for r in runs}
    rows = stored.recent(engine)
    got = {}
    for r in rows:
        got.setdefault((r["window_id"], r["storefront"]), set()).add(r["metric"])
        assert r["model_version_id"] == version_of[r["window_id"]], r
    expected = {(w, s): FIRST_WINDOW if w == 1 else set(METRICS) for w in range(1, WINDOWS + 1) for s in STOREFRONTS}
    assert got == expected
    # prequential quality is that of what served when the window's job began: the newest version
    # promoted before it (the gate may refuse one), popularity before the first
    promoted = [v["id"] for v in list_versions(engine) if v["status"] == "promoted"]

    def serving_before(version_id: int) -> str:
        earlier = [v for v in promoted if v < version_id]
        return f"version {max(earlier)}" if earlier else "popularity"

    prequential = [r for r in rows if r["metric"] == "prequential_recall@20"]
    wrong = [(r["window_id"], r["storefront"], r["reference"], r["value"], r["n_events"]) for r in prequential
             if not (r["reference"] == serving_before(r["model_version_id"]) and 0 <= r["value"] <= 1
                     and r["n_events"] > 500)]
    assert prequential and not wrong, (wrong, list_versions(engine))
    assert all(r["value"] == 0 for r in rows if r["metric"] == "backward_transfer" and r["window_id"] == 1)
    assert {r["window_id"] for r in stored.latest(engine)} == {WINDOWS}

    # the ops role reads the metrics and the views, and cannot write
    with engine.connect() as conn:
        conn.execute(text("SET ROLE streamrec_ops"))
        assert conn.execute(text("SELECT count(*) FROM drift_metrics")).scalar_one() == len(rows)
        assert conn.execute(text("SELECT count(*) FROM drift_latest")).scalar_one() == len(METRICS) * len(STOREFRONTS)
        conn.execute(text("SELECT * FROM drift_open_alerts")).all()
        with pytest.raises(ProgrammingError, match="permission denied"):
            conn.execute(text("UPDATE drift_metrics SET alert = false"))
        conn.rollback()

    monkeypatch.setenv("STREAMREC_DATABASE_URL", database_url)
    printed = CliRunner().invoke(main, ["drift", "--storefront", "ml-even"])
    assert printed.exit_code == 0, printed.output
    assert all(metric in printed.output for metric in METRICS) and "ml-odd" not in printed.output
    out = tmp_path / "drift.html"
    assert CliRunner().invoke(main, ["report", "--out", str(out)]).exit_code == 0
    assert len(assert_every_plot_drawn(out, rows, tmp_path)) == len(METRICS)
    engine.dispose()

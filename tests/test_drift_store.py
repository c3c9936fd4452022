"""drift_metrics in a real store (Postgres and SQLite): writes with the version, the ops views,
the read-only ops role (Postgres), the `streamrec drift` command, breaches and methods stored
next to the values (migration 0008), and real training jobs measuring score drift within a
version across the windows of one job."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, select, text
from sqlalchemy.exc import ProgrammingError

from drift.metrics import METRICS, MetricValue, judged
from replay import codec
from store import drift_metrics as stored
from store.db import make_engine, migrate
from store.models import drift_metrics, model_versions
from store.registry import finish_run, list_versions, start_run
from store.replay import ReplayStore
from streamrec.cli import main
from training.job import run_job


def value(metric: str, storefront: str, v: float, alert: bool) -> dict:
    """A stored-form metric row judged by its threshold rule (threshold 0.25 above baseline 0), its
    breach taken as confirmed."""
    row = judged(metric, storefront, v, threshold=0.25, reference="window 1", n_events=1000)
    assert row.breach is alert
    row.alert = alert
    return row.row()


SERIES = {  # (metric, storefront) -> values of windows 1..4
    ("popularity_psi_previous", "eu-shoes"): [0.1, 0.4, 0.5, 0.6],  # alerting since window 2: open
    ("popularity_psi_previous", "us-books"): [0.1, 0.4, 0.1, 0.1],  # alerted at 2, fine since: closed
    ("category_psi_previous", "eu-shoes"): [0.3, 0.1, 0.1, 0.3],  # alerted at 1 (closed) and at 4 (open)
}


@pytest.fixture
def filled(engine):
    with engine.begin() as conn:
        for window in range(1, 5):
            stored.write_metrics(conn, window, 10 + window, [value(m, s, values[window - 1], values[window - 1] > 0.25)
                                                             for (m, s), values in SERIES.items()])
    return engine


def test_views_give_latest_values_and_open_alerts(filled):
    latest = {(r["metric"], r["storefront"]): r for r in stored.latest(filled)}
    assert {k: (r["window_id"], r["value"], r["model_version_id"]) for k, r in latest.items()} == {
        k: (4, values[-1], 14) for k, values in SERIES.items()}
    opened = [(r["window_id"], r["metric"], r["storefront"]) for r in stored.open_alerts(filled)]
    assert opened == [(4, "category_psi_previous", "eu-shoes"), (4, "popularity_psi_previous", "eu-shoes"),
                      (3, "popularity_psi_previous", "eu-shoes"), (2, "popularity_psi_previous", "eu-shoes")]
    assert [r["storefront"] for r in stored.open_alerts(filled, storefront="us-books")] == []
    assert stored.series(filled, ["eu-shoes"], before_window=3, metrics=["popularity_psi_previous"]) == {
        ("popularity_psi_previous", "eu-shoes"): [(0.1, 1000), (0.4, 1000)]}
    assert {r["window_id"] for r in stored.recent(filled, windows=2)} == {3, 4}
    assert stored.first_row(filled, "category_psi_previous", "eu-shoes")["window_id"] == 1


def test_breaches_method_and_detail_are_stored_and_read_back(filled):
    breach = judged("purchase_share", "eu-shoes", 0.4, baseline=0.2, threshold=0.05, reference="windows 1-3",
                    n_events=800, method="calibrated: mean 1 + 3 sd 0.5",
                    detail={"sd": 0.5, "calibrated": 0.05, "noise_floor": float("inf")})
    small = judged("purchase_share", "us-books", 0.4, baseline=0.2, threshold=0.05, n_events=100, min_events=500)
    odd = {**value("category_psi_previous", "eu-shoes", 0.1, False), "baseline": float("inf")}
    with filled.begin() as conn:
        stored.write_metrics(conn, 5, 15, [breach.row(), small.row(), odd])
    rows = {(r["metric"], r["storefront"]): r for r in stored.recent(filled, windows=1)}
    first, few = rows[("purchase_share", "eu-shoes")], rows[("purchase_share", "us-books")]
    assert (first["breach"], first["alert"], first["method"]) == (True, False, "calibrated: mean 1 + 3 sd 0.5")
    assert first["detail"] == {"sd": 0.5, "calibrated": 0.05, "noise_floor": None}  # no infinity stored
    assert (few["breach"], few["method"]) == (False, "fixed threshold; fewer than 500 events: not judged")
    assert rows[("category_psi_previous", "eu-shoes")]["baseline"] is None
    assert rows[("category_psi_previous", "eu-shoes")]["detail"] is None
    # the newest breach of each metric and storefront before a window: what the next window's alert needs
    assert stored.last_breaches(filled, ["eu-shoes", "us-books"], before_window=5) == {
        ("popularity_psi_previous", "eu-shoes"): True, ("popularity_psi_previous", "us-books"): False,
        ("category_psi_previous", "eu-shoes"): True}
    assert stored.last_breaches(filled, ["eu-shoes"], before_window=6)[("purchase_share", "eu-shoes")] is True
    assert [r["window_id"] for r in stored.details(filled, "purchase_share", "eu-shoes", 0, 9)] == [5]
    # a first breach is no open alert; the views show it
    assert stored.open_alerts(filled, metric="purchase_share") == []
    latest = {(r["metric"], r["storefront"]): r for r in stored.latest(filled)}
    assert latest[("purchase_share", "eu-shoes")]["breach"] is True
    printed = CliRunner().invoke(main, ["drift", "--metric", "purchase_share"], env={
        "STREAMREC_DATABASE_URL": filled.url.render_as_string(hide_password=False)})
    assert printed.exit_code == 0 and "breach" in printed.output and "calibrated: mean 1" in printed.output


def test_migration_0008_keeps_earlier_rows_as_their_own_breaches(database_url):
    engine = make_engine(database_url)
    migrate(engine, "0007")
    with engine.begin() as conn:
        for window, alert in ((1, False), (2, True)):
            conn.execute(text("INSERT INTO drift_metrics (window_id, storefront, metric, kind, value, reference, "
                              "alert, detector, n_events, created_at) VALUES (:w, 's', 'purchase_share', 'input', "
                              "0.3, 'windows 1-3', :a, 'threshold', 900, 1)"), {"w": window, "a": alert})
    migrate(engine)
    rows = stored.recent(engine)
    assert [(r["window_id"], r["alert"], r["breach"], r["method"], r["detail"]) for r in rows] == [
        (1, False, False, "", None), (2, True, True, "", None)]
    assert [(r["window_id"], r["breach"]) for r in stored.open_alerts(engine)] == [(2, True)]  # the views see them
    assert stored.latest(engine)[0]["method"] == ""
    engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_job_of_two_windows_measures_score_drift_within_the_serving_version(movielens_store):
    engine, config = movielens_store
    run_job(engine, config, [1], "test/train")
    run_job(engine, config, [2, 3], "test/train")  # both windows judged with version 1, not stored before the end
    rows = {(r["window_id"], r["metric"]): r for r in stored.recent(engine)}
    reference, later = rows[(2, "serving_score_psi")], rows[(3, "serving_score_psi")]
    assert reference["value"] == 0 and reference["detector"] == "none" and reference["detail"]["version"] == "version 1"
    users = [codec.to_frame(ReplayStore(engine).load_window(w))["user_id"].nunique() for w in (1, 2)]
    assert len(reference["detail"]["edges"]) == 9 and reference["detail"]["users"] == min(300, users[1])
    assert later["reference"] == "version 1 on window 2" and later["detector"] == "threshold", later
    assert later["threshold"] >= 0.1 and later["method"].startswith(("calibrated", "stable-score floor"))
    assert not later["breach"] and not later["alert"]
    model = [rows[(3, m)] for m in ("item_vector_shift", "topk_overlap@20")]
    assert [(r["reference"], r["alert"]) for r in model] == [("version 1", False)] * 2, model
    assert model[1]["n_events"] == min(300, users[0]) and 0.2 <= model[1]["value"] <= 1  # window 1's users
    assert (2, "topk_overlap@20") not in rows  # model drift: the job's newest window only
    inputs = [r for (w, m), r in rows.items() if w > 1 and METRICS[m].kind == "input" and r["threshold"] is not None]
    assert inputs and all(r["method"] and r["detail"] for r in inputs)
    print("\n" + "\n".join(f"{r['window_id']} {r['metric']}: {r['value']:.4g} / {r['threshold']:.4g}: {r['method']}"
                            for r in sorted(inputs, key=lambda r: (r["window_id"], r["metric"]))))


def test_a_window_measured_again_replaces_its_rows(filled):
    with filled.begin() as conn:
        stored.write_metrics(conn, 4, 99, [value("category_psi_previous", "eu-shoes", 0.05, False)])
    rows = stored.recent(filled, windows=1, metric="category_psi_previous")
    assert [(r["value"], r["alert"], r["model_version_id"]) for r in rows] == [(0.05, False, 99)]
    assert stored.open_alerts(filled, metric="category_psi_previous") == []


def version_row(window_id: int) -> dict:
    return {"parent_id": None, "status": "promoted", "reason": "test", "windows": [window_id], "rehearsal_size": 0,
            "metrics": {}, "duration_s": 0.0, "device": "cpu", "n_items": 0, "n_users": 0, "created_at": 1,
            "promoted_at": 1, "weights": b"w", "sha256": "0" * 64}


def test_metrics_are_written_in_the_transaction_that_writes_the_version(engine):
    values = [MetricValue("purchase_share", "shop", 0.2, 0.21, "windows 1-3", 0.05, False, "threshold", 500)]
    run = start_run(engine, 1, "host:1")
    version_id = finish_run(engine, run, version_row(1), [],
                            also=lambda conn, vid: stored.write_metrics(conn, 1, vid, [v.row() for v in values]))
    (row,) = stored.recent(engine)
    assert row["model_version_id"] == version_id and row["kind"] == "input" and row["value"] == 0.2

    def broken(conn, vid):
        stored.write_metrics(conn, 2, vid, [v.row() for v in values])
        raise RuntimeError("disk full")

    run = start_run(engine, 2, "host:1")
    with pytest.raises(RuntimeError):
        finish_run(engine, run, version_row(2), [], also=broken)
    assert [v["id"] for v in list_versions(engine)] == [version_id]  # neither the version nor its metrics
    assert {r["window_id"] for r in stored.recent(engine)} == {1}


def test_drift_command_prints_latest_values_and_open_alerts(filled, database_url, monkeypatch):
    monkeypatch.setenv("STREAMREC_DATABASE_URL", database_url)
    runner = CliRunner()
    result = runner.invoke(main, ["drift"])
    assert result.exit_code == 0, result.output
    latest, alerts = result.output.split("open alerts:")
    assert latest.count("popularity_psi_previous") == 2 and latest.count("ALERT") == 2
    assert alerts.count("ALERT") == 4 and "us-books" not in alerts
    only = runner.invoke(main, ["drift", "--alerts-only", "--storefront", "eu-shoes",
                                "--metric", "category_psi_previous"])
    assert only.exit_code == 0 and "latest values" not in only.output
    assert [line.split()[0] for line in only.output.splitlines()[2:]] == ["4"]
    windows = runner.invoke(main, ["drift", "--windows", "2", "--storefront", "us-books"])
    assert [line.split()[:2] for line in windows.output.split("open alerts:")[0].splitlines()[2:] if line.strip()] == [
        ["3", "13"], ["4", "14"]]


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_ops_role_reads_everything_and_writes_nothing(filled):
    with filled.connect() as conn:
        login, = conn.execute(text("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'streamrec_ops'")).one()
        assert login is False
        conn.execute(text("CREATE TABLE added_later (x int)"))  # default privileges cover new tables
        conn.commit()
        conn.execute(text("SET ROLE streamrec_ops"))
        assert conn.execute(select(drift_metrics.c.id)).all()
        assert len(conn.execute(text("SELECT * FROM drift_latest")).all()) == len(SERIES)
        assert len(conn.execute(text("SELECT * FROM drift_open_alerts")).all()) == 4
        assert conn.execute(text("SELECT count(*) FROM windows")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM added_later")).scalar_one() == 0
        conn.rollback()
    writes = [insert(drift_metrics).values(window_id=9, storefront="s", metric="m", kind="input", value=1.0,
                                           reference="", alert=False, detector="none", n_events=1, created_at=1),
              drift_metrics.update().values(value=0.0), drift_metrics.delete(),
              insert(model_versions).values(version_row(1)), text("INSERT INTO added_later VALUES (1)"),
              text("CREATE TABLE ops_table (x int)"), text("TRUNCATE drift_metrics")]
    for statement in writes:
        with filled.connect() as conn:
            conn.execute(text("SET ROLE streamrec_ops"))
            with pytest.raises(ProgrammingError, match="permission denied"):
                conn.execute(statement)
            conn.rollback()
    assert len(stored.recent(filled)) == 4 * len(SERIES)


DRIFT_GUIDE = (Path(__file__).parents[1] / "docs" / "guides" / "drift.md").read_text()


def guide_drift_queries() -> list[str]:
    block = DRIFT_GUIDE.split("```sql", 1)[1].split("```", 1)[0]
    return [q.strip() for q in block.split(";") if q.strip()]


def test_drift_guide_documents_every_metric():
    section = DRIFT_GUIDE
    for metric in METRICS:
        assert f"`{metric}`" in section, metric
    for column in drift_metrics.c:
        assert column.name == "id" or f"`{column.name}`" in section, column.name


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_drift_guide_ops_queries_run_as_the_ops_role(filled):
    queries = guide_drift_queries()
    assert len(queries) == 5
    with filled.connect() as conn:
        conn.execute(text("SET ROLE streamrec_ops"))
        results = [conn.execute(text(q)).all() for q in queries]
    assert len(results[0]) == 4  # the open alerts
    assert sum(row.alerts for row in results[3]) == sum(r["alert"] for r in stored.recent(filled))

"""drift_metrics in a real store (Postgres and SQLite): writes with the version, the ops views,
the read-only ops role (Postgres), and the `streamrec drift` command."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, select, text
from sqlalchemy.exc import ProgrammingError

from drift.metrics import METRICS, MetricValue, judged
from store import drift_metrics as stored
from store.models import drift_metrics, model_versions
from store.registry import finish_run, list_versions, start_run
from streamrec.cli import main


def value(metric: str, storefront: str, v: float, alert: bool) -> dict:
    """A stored-form metric row judged by its threshold rule (threshold 0.25 above baseline 0)."""
    row = judged(metric, storefront, v, threshold=0.25, reference="window 1", n_events=1000)
    assert row.alert is alert
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

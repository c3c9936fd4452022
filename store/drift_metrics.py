"""Drift metrics in the store: written with the model version they explain, read for detectors, the CLI and reports.

``drift_latest`` and ``drift_open_alerts`` are views (migration 0004); they are declared
here on their own ``MetaData``, never the store's, so nothing ever creates them as tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from sqlalchemy import Column, Connection, Engine, MetaData, Table, func, select

from store.db import finite_json, upsert
from store.models import drift_metrics
from store.registry import now_ms

_views = MetaData()


def _view(name: str) -> Table:
    return Table(name, _views, *(Column(c.name, c.type) for c in drift_metrics.c))


drift_latest = _view("drift_latest")
drift_open_alerts = _view("drift_open_alerts")

VALUE_COLUMNS = ("storefront", "metric", "kind", "value", "baseline", "reference", "threshold", "alert", "detector",
                 "n_events", "breach", "method", "detail")
OPTIONAL = {"breach": None, "method": "", "detail": None}  # rows of callers that judge no breaches


def write_metrics(conn: Connection, window_id: int, version_id: int | None, rows: Iterable[dict]) -> int:
    """Store metric rows of one window (dicts with :data:`VALUE_COLUMNS`; ``breach`` defaults to
    ``alert``, ``method`` and ``detail`` to none), in the caller's transaction.

    A row already stored for the same window, storefront and metric is replaced. No NaN or
    infinity is stored: a non-finite baseline or threshold becomes NULL, and so do such numbers
    in ``detail``.
    """
    created = now_ms()
    rows = [{**{c: r.get(c, OPTIONAL.get(c)) for c in VALUE_COLUMNS}, "window_id": window_id,
             "model_version_id": version_id, "created_at": created} for r in rows]
    rows = [{**r, "breach": r["alert"] if r["breach"] is None else bool(r["breach"]),
             "baseline": _finite(r["baseline"]), "threshold": _finite(r["threshold"]),
             "detail": finite_json(r["detail"]) or None, **_unmeasurable(r)} for r in rows]
    if not rows:
        return 0
    stmt = upsert(conn, drift_metrics)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["window_id", "storefront", "metric"],
        set_={c: stmt.excluded[c] for c in (*VALUE_COLUMNS, "model_version_id", "created_at")}), rows)
    return len(rows)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _unmeasurable(row: dict) -> dict:
    """For a value that is not a finite number: NULL, no breach or alert, and the reason in ``reference``."""
    value = row["value"]
    if value is None or math.isfinite(value):
        return {}
    return {"value": None, "alert": False, "breach": False, "detector": "none",
            "reference": f"{row['reference']} (not measurable: the value was {value})"}


def series(engine: Engine, storefronts: Sequence[str], before_window: int, metrics: Sequence[str] | None = None,
           since_window: int = 0) -> dict[tuple[str, str], list[tuple[float, int]]]:
    """(metric, storefront) -> [(value, n_events)] of the windows from ``since_window`` to before
    ``before_window``, oldest first."""
    t = drift_metrics
    query = (select(t.c.metric, t.c.storefront, t.c.value, t.c.n_events)
             .where(t.c.storefront.in_(list(storefronts)), t.c.window_id < before_window, t.c.window_id >= since_window)
             .order_by(t.c.window_id))
    if metrics is not None:
        query = query.where(drift_metrics.c.metric.in_(list(metrics)))
    out: dict[tuple[str, str], list[tuple[float, int]]] = {}
    with engine.connect() as conn:
        for metric, storefront, value, n in conn.execute(query):
            if value is not None:  # an unmeasurable value has no place in a series
                out.setdefault((metric, storefront), []).append((value, n))
    return out


def last_breaches(engine: Engine, storefronts: Sequence[str], before_window: int,
                  since_window: int = 0) -> dict[tuple[str, str], bool]:
    """(metric, storefront) -> whether its newest row before ``before_window`` (from ``since_window``)
    breached: what confirms, or not, a breach of the next window."""
    t = drift_metrics
    newest = (select(t.c.metric, t.c.storefront, func.max(t.c.window_id).label("window_id"))
              .where(t.c.storefront.in_(list(storefronts)), t.c.window_id < before_window,
                     t.c.window_id >= since_window)
              .group_by(t.c.metric, t.c.storefront).subquery())
    query = select(t.c.metric, t.c.storefront, t.c.breach).join(
        newest, (t.c.metric == newest.c.metric) & (t.c.storefront == newest.c.storefront)
        & (t.c.window_id == newest.c.window_id))
    with engine.connect() as conn:
        return {(metric, storefront): bool(breach) for metric, storefront, breach in conn.execute(query)}


def details(engine: Engine, metric: str, storefront: str, after_window: int, before_window: int) -> list[dict]:
    """``window_id`` and ``detail`` of the rows of ``metric`` and ``storefront`` between the two
    windows (exclusive), oldest first."""
    t = drift_metrics
    query = (select(t.c.window_id, t.c.detail)
             .where(t.c.metric == metric, t.c.storefront == storefront, t.c.window_id > after_window,
                    t.c.window_id < before_window, t.c.detail.is_not(None))
             .order_by(t.c.window_id))
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def first_row(engine: Engine, metric: str, storefront: str) -> dict | None:
    """The oldest stored row of ``metric`` for ``storefront``."""
    with engine.connect() as conn:
        row = conn.execute(select(drift_metrics).where(drift_metrics.c.metric == metric,
                                                       drift_metrics.c.storefront == storefront,
                                                       drift_metrics.c.value.is_not(None))
                           .order_by(drift_metrics.c.window_id).limit(1)).mappings().one_or_none()
    return dict(row) if row else None


def _filtered(query, table: Table, storefront: str | None, metric: str | None):
    if storefront is not None:
        query = query.where(table.c.storefront == storefront)
    if metric is not None:
        query = query.where(table.c.metric == metric)
    return query


def latest(engine: Engine, storefront: str | None = None, metric: str | None = None) -> list[dict]:
    """The newest value of every metric and storefront (view ``drift_latest``)."""
    t = drift_latest
    query = _filtered(select(t), t, storefront, metric).order_by(t.c.storefront, t.c.kind, t.c.metric)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def open_alerts(engine: Engine, storefront: str | None = None, metric: str | None = None) -> list[dict]:
    """Alerts not yet followed by a non-alert value of their metric and storefront, newest first."""
    t = drift_open_alerts
    query = _filtered(select(t), t, storefront, metric).order_by(t.c.window_id.desc(), t.c.storefront, t.c.metric)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def recent(engine: Engine, windows: int | None = None, storefront: str | None = None, metric: str | None = None,
           alerts_only: bool = False) -> list[dict]:
    """Every row of the newest ``windows`` measured windows (all when None), oldest window first."""
    t = drift_metrics
    query = _filtered(select(t), t, storefront, metric)
    if alerts_only:
        query = query.where(t.c.alert.is_(True))
    if windows is not None:
        newest = (select(t.c.window_id).distinct().order_by(t.c.window_id.desc()).limit(windows)).subquery()
        query = query.where(t.c.window_id.in_(select(newest.c.window_id)))
    query = query.order_by(t.c.window_id, t.c.storefront, t.c.kind, t.c.metric)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def measured_windows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count(func.distinct(drift_metrics.c.window_id)))).scalar_one())

"""Served lists, the events attributed to them, and online metrics, in the store.

The ingest writer stores served lists (:func:`store_served`) and attributes each batch's clicks
and purchases (:func:`attribute`) in the batch's transaction, so both land exactly once with
the offsets that cover them. An event naming a ``request_id`` is attributed to that list
directly, whether or not the list has been stored yet (the metrics join them later). An event
without one is attributed, flagged ``inferred``, to the newest stored list that showed the same
user the same item at most ``window_ms`` before the event's time stamp.

A storefront that displays fewer items than it fetched reports which positions were shown
(:func:`store_shown`); from then on only those positions count, for inferred attribution and
for the online metrics (:func:`served_since`). A list without a report counts as wholly shown.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
import pyarrow as pa
from sqlalchemy import Connection, Engine, delete, or_, select

from store.db import upsert
from store.models import attributed_events, online_metrics, served_lists, shown_positions, text_embeddings

_LOOKUP_CHUNK = 500  # users per query when looking for lists to attribute to
METRIC_KEY = ("hour", "surface", "storefront", "source", "model_version", "experiment", "arm")


def store_served(conn: Connection, lists: list[dict], now_ms: int) -> None:
    """Insert served lists (a request id already stored is left as it is)."""
    if lists:
        conn.execute(upsert(conn, served_lists).on_conflict_do_nothing(index_elements=["request_id"]),
                     [served | {"ingested_at": now_ms} for served in lists])


def store_shown(conn: Connection, reports: list[dict], now_ms: int) -> None:
    """Add reports of shown positions (``request_id``, ``shown``, ``ts``): a list's stored
    positions become the union of all its reports, so a repeated or partial report adds, never removes."""
    if not reports:
        return
    merged: dict[str, tuple[set[int], int]] = {}
    for r in reports:
        shown, at = merged.get(r["request_id"], (set(), 0))
        merged[r["request_id"]] = (shown | set(r["shown"]), max(at, r["ts"]))
    t, ids = shown_positions, sorted(merged)
    for start in range(0, len(ids), _LOOKUP_CHUNK):
        chunk = ids[start:start + _LOOKUP_CHUNK]
        for request_id, shown, at in conn.execute(select(t.c.request_id, t.c.shown, t.c.shown_at).where(
                t.c.request_id.in_(chunk))):
            new, new_at = merged[request_id]
            merged[request_id] = (new | set(shown), max(new_at, at))
    stmt = upsert(conn, t)
    conn.execute(stmt.on_conflict_do_update(index_elements=["request_id"], set_={
        c: stmt.excluded[c] for c in ("shown", "shown_at", "ingested_at")}),
        [{"request_id": r, "shown": sorted(shown), "shown_at": at, "ingested_at": now_ms}
         for r, (shown, at) in merged.items()])


def displayed(items: list[str], shown: list[int] | None) -> list[tuple[int, str]]:
    """(position, item) of the items of a list that were displayed: all of them without a report.

    >>> displayed(["a", "b", "c"], None), displayed(["a", "b", "c"], [1, 3, 7])
    ([(1, 'a'), (2, 'b'), (3, 'c')], [(1, 'a'), (3, 'c')])
    """
    if shown is None:
        return list(enumerate(items, start=1))
    return [(p, items[p - 1]) for p in shown if p <= len(items)]


def attribute(conn: Connection, events: pa.Table, window_ms: int, now_ms: int) -> int:
    """Attribute accepted events (with the feedback columns of the ingest schema) to served
    lists; returns how many were attributed."""
    if not events.num_rows:
        return 0
    rows = events.select(["event_id", "type", "user_id", "item_id", "storefront", "ts", "request_id", "position",
                          "value"]).to_pylist()
    found = [r | {"inferred": False} for r in rows if r["request_id"] is not None]
    found += _inferred(conn, [r for r in rows if r["request_id"] is None], window_ms)
    if found:
        conn.execute(upsert(conn, attributed_events).on_conflict_do_nothing(index_elements=["event_id"]),
                     [r | {"ingested_at": now_ms} for r in found])
    return len(found)


def _inferred(conn: Connection, rows: list[dict], window_ms: int) -> list[dict]:
    """The rows shown to their user by a stored list within ``window_ms`` before them, each with
    the newest such list's request id and the item's position in it."""
    if not rows or window_ms <= 0:
        return []
    users = sorted({r["user_id"] for r in rows})
    oldest, newest = min(r["ts"] for r in rows) - window_ms, max(r["ts"] for r in rows)
    shown: dict[tuple[str, str], list[tuple[int, str, int]]] = {}
    t, s = served_lists, shown_positions
    for start in range(0, len(users), _LOOKUP_CHUNK):
        query = select(t.c.user_id, t.c.served_at, t.c.request_id, t.c["items"], s.c.shown).outerjoin(
            s, s.c.request_id == t.c.request_id).where(
            t.c.user_id.in_(users[start:start + _LOOKUP_CHUNK]), t.c.served_at.between(oldest, newest))
        for user, served_at, request_id, items, positions in conn.execute(query):
            for position, item in displayed(items, positions):
                shown.setdefault((user, item), []).append((served_at, request_id, position))
    found = []
    for r in rows:
        lists = [s for s in shown.get((r["user_id"], r["item_id"]), ()) if r["ts"] - window_ms <= s[0] <= r["ts"]]
        if lists:
            _, request_id, position = max(lists)
            found.append(r | {"request_id": request_id, "position": position, "inferred": True})
    return found


def served_since(engine: Engine, since_ms: int) -> pa.Table:
    """Lists answered from ``since_ms`` on, as a table: ``items`` the ids in rank order,
    ``displayed`` those of them that were shown (a list reported as not shown at all is left
    out); answers that failed (``status`` 5xx, logged for experiments' guardrails) are left out too."""
    t, s = served_lists, shown_positions
    columns = [t.c.request_id, t.c.served_at, t.c.surface, t.c.storefront, t.c.source, t.c.model_version,
               t.c.experiment, t.c.arm, t.c.user_id, t.c["items"]]
    with engine.connect() as conn:
        found = conn.execute(select(*columns, s.c.shown).outerjoin(s, s.c.request_id == t.c.request_id).where(
            t.c.served_at >= since_ms, or_(t.c.status.is_(None), t.c.status < 500))).all()
    rows = [(*row[:-1], shown) for row in found if (shown := [i for _, i in displayed(row[-2], row[-1])])
            or row[-1] is None]
    names = [c.name for c in columns] + ["displayed"]
    return pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)}) if rows else pa.table(
        {name: pa.array([], pa.list_(pa.string()) if name in ("items", "displayed") else None) for name in names})


def attributed_to(engine: Engine, request_ids: Iterable[str]) -> pa.Table:
    """The events attributed to any of ``request_ids``."""
    ids = sorted(set(request_ids))
    t = attributed_events
    columns = [t.c.event_id, t.c.request_id, t.c.inferred, t.c.type, t.c.user_id, t.c.item_id, t.c.position,
               t.c.value]
    rows = []
    with engine.connect() as conn:
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            rows += conn.execute(select(*columns).where(t.c.request_id.in_(ids[start:start + _LOOKUP_CHUNK]))).all()
    names = [c.name for c in columns]
    types = {"event_id": pa.string(), "request_id": pa.string(), "inferred": pa.bool_(), "type": pa.string(),
             "user_id": pa.string(), "item_id": pa.string(), "position": pa.int64(), "value": pa.float64()}
    return pa.table({name: pa.array([row[i] for row in rows], types[name]) for i, name in enumerate(names)})


def text_vectors(engine: Engine, keys: Iterable[str]) -> dict[str, bytes]:
    """Stored text embeddings (raw bytes) of ``keys`` that are cached."""
    keys, found = sorted(set(keys)), {}
    with engine.connect() as conn:
        for start in range(0, len(keys), _LOOKUP_CHUNK):
            found.update(conn.execute(select(text_embeddings.c.key, text_embeddings.c.vector).where(
                text_embeddings.c.key.in_(keys[start:start + _LOOKUP_CHUNK]))).all())
    return found


def save_online_metrics(engine: Engine, rows: list[dict], now_ms: int) -> None:
    """Insert or replace online metric rows (one per :data:`METRIC_KEY`)."""
    if not rows:
        return
    with engine.begin() as conn:
        stmt = upsert(conn, online_metrics)
        values = [r | {"updated_at": now_ms} for r in rows]
        conn.execute(stmt.on_conflict_do_update(
            index_elements=list(METRIC_KEY),
            set_={c.name: stmt.excluded[c.name] for c in online_metrics.columns if c.name not in METRIC_KEY}), values)


def read_online_metrics(engine: Engine, since_ms: int = 0, storefront: str | None = None,
                        surface: str | None = None) -> list[dict]:
    """Online metric rows from hour ``since_ms`` on, newest hour first."""
    t = online_metrics
    query = select(t).where(t.c.hour >= since_ms)
    if storefront is not None:
        query = query.where(t.c.storefront == storefront)
    if surface is not None:
        query = query.where(t.c.surface == surface)
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(t.c.hour.desc(), t.c.surface, t.c.storefront, t.c.model_version,
                                           t.c.experiment, t.c.arm)).mappings().all()
    return [dict(r) | {"metrics": r["metrics"] if isinstance(r["metrics"], dict) else orjson.loads(r["metrics"])}
            for r in rows]


def prune_served(engine: Engine, before_ms: int) -> int:
    """Forget served lists served, and attributed events and shown positions ingested, before
    ``before_ms``; returns the lists removed."""
    with engine.begin() as conn:
        conn.execute(delete(attributed_events).where(attributed_events.c.ingested_at < before_ms))
        conn.execute(delete(shown_positions).where(shown_positions.c.ingested_at < before_ms))
        return conn.execute(delete(served_lists).where(served_lists.c.served_at < before_ms)).rowcount


def served_count(engine: Engine, request_ids: Iterable[str] | None = None) -> int:
    """How many served lists are stored (of ``request_ids`` when given)."""
    query = select(served_lists.c.request_id)
    if request_ids is not None:
        query = query.where(served_lists.c.request_id.in_(sorted(set(request_ids))))
    with engine.connect() as conn:
        return len(conn.execute(query).all())


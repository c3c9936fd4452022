"""Commit one batch of ingested messages to the store in a single transaction.

Accepted events (as one compact segment of the open replay window), catalog updates, flow counters, dead letters and the consumer offsets that
cover them are written together, so a crash before the commit loses nothing (the
messages are read again) and a crash after it counts nothing twice (the offsets moved).
Offsets are fenced: a worker whose partition moved to another worker fails with
:class:`OffsetConflict` instead of writing the same messages again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import NamedTuple

import orjson
import pyarrow as pa
from sqlalchemy import Connection, Engine, and_, delete, func, select, text, update
from sqlalchemy.exc import IntegrityError

from replay import codec
from store.db import upsert
from store.models import (
    consumer_offsets,
    dead_letters,
    event_ids,
    ingest_stats,
    items,
    open_segments,
)
from store.online import attribute, store_served, store_shown

TopicPartition = tuple[str, int]


class OffsetConflict(RuntimeError):
    """The stored offset is not where this worker expected it: another worker owns the partition."""


class Source(NamedTuple):
    """Where a message came from (aiokafka's ConsumerRecord has the same fields)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass
class IngestBatch:
    """Validated messages from one poll, ready to commit.

    ``events`` are the accepted interaction events (:data:`replay.codec.EVENT_SCHEMA` and the
    feedback columns ``request_id``, ``position``, ``value``) and ``sources`` the message of
    each row, kept for a dead letter if it turns out a duplicate. ``served`` are served lists,
    ``shown`` reports of the positions of served lists that were displayed.
    ``rejections`` are dead letters (source fields with ``payload``, ``reason``, ``detail``,
    ``storefront``, ``event_type``). ``offsets`` maps each partition to (offset the worker
    expects in the store, or None if it has never been stored; the next offset to read).
    """

    received_at: int
    events: pa.Table = field(default_factory=codec.empty)
    sources: Sequence[Source] = ()
    items: list[dict] = field(default_factory=list)
    served: list[dict] = field(default_factory=list)
    shown: list[dict] = field(default_factory=list)
    rejections: list[dict] = field(default_factory=list)
    offsets: dict[TopicPartition, tuple[int | None, int]] = field(default_factory=dict)


@dataclass
class WriteResult:
    accepted: int
    duplicates: int
    dead_letters: int


_CLAIM_IDS = ("INSERT INTO event_ids (event_id, first_seen_ms) SELECT {ids}, :now{where}"
              " ON CONFLICT (event_id) DO UPDATE SET first_seen_ms = excluded.first_seen_ms"
              " WHERE event_ids.first_seen_ms < :horizon_start")
# Both statements take the batch's ids as ONE JSON parameter (no per-row binding) and return
# only the ids already accepted within the horizon, which are few.
_REPEATED_IDS = {
    # SQLite: look up, then claim; nothing can write in between, as the transaction holds
    # SQLite's write lock since it moved the offsets.
    "sqlite": [text("SELECT j.value FROM json_each(:ids) AS j JOIN event_ids AS e ON e.event_id = j.value"
                    " WHERE e.first_seen_ms >= :horizon_start"),
               text(_CLAIM_IDS.format(ids="value", where=" FROM json_each(:ids) WHERE true"))],
    # Postgres: claim and return what was not claimed, in one statement; concurrent writers of
    # the same id serialise on its row.
    "postgresql": [text(f"WITH claimed AS ({_CLAIM_IDS.format(ids='jsonb_array_elements_text(CAST(:ids AS jsonb))', where='')}"
                        " RETURNING event_id) SELECT jsonb_array_elements_text(CAST(:ids AS jsonb))"
                        " EXCEPT SELECT event_id FROM claimed")],
}


def _duplicate(batch: IngestBatch, row: int) -> dict:
    """The dead letter of an accepted-looking event whose id was seen before."""
    source = batch.sources[row]
    event_id, storefront, event_type = (batch.events.column(c)[row].as_py() for c in ("event_id", "storefront", "type"))
    return {"topic": source.topic, "partition": source.partition, "offset": source.offset, "key": source.key,
            "payload": source.value, "reason": "duplicate_event_id", "storefront": storefront,
            "event_type": event_type, "detail": f"event_id {event_id!r} was already accepted"}


def minute_of(ms: int) -> datetime:
    return datetime.fromtimestamp(ms // 60_000 * 60, tz=timezone.utc)


def ingest_totals(engine: Engine, since: datetime | None = None) -> list[dict]:
    """``ingest_stats`` summed per storefront, event type and outcome (minutes from ``since`` on)."""
    t = ingest_stats
    query = select(t.c.storefront, t.c.event_type, t.c.outcome, func.sum(t.c.count)).group_by(
        t.c.storefront, t.c.event_type, t.c.outcome).order_by(t.c.storefront, t.c.event_type, t.c.outcome)
    if since is not None:
        query = query.where(t.c.minute >= since)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [{"storefront": s, "event_type": e, "outcome": o, "count": int(n)} for s, e, o, n in rows]


def outcome_totals(engine: Engine) -> dict[str, int]:
    """``{"accepted": n, "rejected": m}`` over all of ``ingest_stats`` (catalog updates included)."""
    totals = {"accepted": 0, "rejected": 0}
    for row in ingest_totals(engine):
        totals["accepted" if row["outcome"] == "accepted" else "rejected"] += row["count"]
    return totals


def stored_offsets(engine: Engine, group_id: str) -> dict[TopicPartition, int]:
    """The next offset stored with the data of every partition ``group_id`` has ingested."""
    with engine.connect() as conn:
        rows = conn.execute(select(consumer_offsets.c.topic, consumer_offsets.c.partition,
                                   consumer_offsets.c.next_offset).where(consumer_offsets.c.group_id == group_id)).all()
    return {(t, p): o for t, p, o in rows}


class IngestWriter:
    """Transactional sink of the ingest path for one consumer group."""

    def __init__(self, engine: Engine, group_id: str, dedupe_horizon_s: int, attribution_window_s: int = 3600):
        self.engine = engine
        self.group_id = group_id
        self.dedupe_horizon_ms = dedupe_horizon_s * 1000
        self.attribution_window_ms = attribution_window_s * 1000

    def load_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Stored next offsets of ``partitions`` (absent when never stored)."""
        wanted = set(partitions)
        return {tp: o for tp, o in stored_offsets(self.engine, self.group_id).items() if tp in wanted}

    def write(self, batch: IngestBatch) -> WriteResult:
        """Commit ``batch``; raises OffsetConflict (and writes nothing) if fenced off."""
        with self.engine.begin() as conn:
            self._advance_offsets(conn, batch.offsets)
            fresh, duplicates = self._split_duplicates(conn, batch.events, batch.received_at)
            rejections = batch.rejections + [_duplicate(batch, row) for row in duplicates]
            if fresh.num_rows:
                conn.execute(open_segments.insert().values(
                    n_events=fresh.num_rows, first_ingested_at=batch.received_at,
                    data=codec.encode(fresh.select(codec.EVENT_SCHEMA.names))))
            self._upsert_items(conn, batch.items, batch.received_at)
            store_served(conn, batch.served, batch.received_at)  # before attributing: a batch may hold both
            store_shown(conn, batch.shown, batch.received_at)
            if "request_id" in fresh.column_names:
                attribute(conn, fresh, self.attribution_window_ms, batch.received_at)
            if rejections:
                conn.execute(dead_letters.insert(), [
                    {k: r[k] for k in ("topic", "partition", "offset", "key", "payload", "reason", "detail")}
                    | {"received_at": batch.received_at, "published": False} for r in rejections])
            self._count(conn, batch, fresh, rejections)
        return WriteResult(fresh.num_rows, len(duplicates), len(rejections))

    def _advance_offsets(self, conn: Connection, offsets) -> None:
        for (topic, partition), (expected, new) in sorted(offsets.items()):
            key = {"group_id": self.group_id, "topic": topic, "partition": partition}
            if expected is None:
                try:
                    with conn.begin_nested():
                        conn.execute(consumer_offsets.insert(), [key | {"next_offset": new}])
                except IntegrityError:
                    raise OffsetConflict(f"{topic}[{partition}] was stored by another worker") from None
                continue
            moved = conn.execute(update(consumer_offsets).where(and_(
                consumer_offsets.c.group_id == self.group_id, consumer_offsets.c.topic == topic,
                consumer_offsets.c.partition == partition, consumer_offsets.c.next_offset == expected,
            )).values(next_offset=new)).rowcount
            if moved != 1:
                raise OffsetConflict(f"{topic}[{partition}] is no longer at offset {expected}")

    def _split_duplicates(self, conn: Connection, events: pa.Table, now_ms: int) -> tuple[pa.Table, list[int]]:
        """The events whose id is new within the dedupe horizon, and the rows of the others.

        Each new id is claimed (an id last seen before the horizon is claimed again); an id
        accepted within the horizon, or earlier in the same batch, makes its event a duplicate.
        """
        ids = events.column("event_id").to_pylist()
        if not ids:
            return events, []
        unique = list(dict.fromkeys(ids))
        params = {"ids": orjson.dumps(unique).decode(), "now": now_ms,
                  "horizon_start": now_ms - self.dedupe_horizon_ms}
        repeated = set(conn.execute(_REPEATED_IDS[conn.dialect.name][0], params).scalars())
        for statement in _REPEATED_IDS[conn.dialect.name][1:]:
            conn.execute(statement, params)
        if not repeated and len(unique) == len(ids):
            return events, []
        keep, seen = [], set()
        for event_id in ids:
            keep.append(event_id not in repeated and event_id not in seen)
            seen.add(event_id)
        return events.filter(pa.array(keep)), [row for row, kept in enumerate(keep) if not kept]

    def _upsert_items(self, conn: Connection, batch_items: list[dict], now_ms: int) -> None:
        latest: dict[tuple[str, str], dict] = {}
        for item in batch_items:  # one row per key: the newest update wins
            key = (item["storefront"], item["item_id"])
            if key not in latest or item["ts"] >= latest[key]["ts"]:
                latest[key] = item
        if not latest:
            return
        stmt = upsert(conn, items)
        stmt = stmt.on_conflict_do_update(
            index_elements=["storefront", "item_id"],
            set_={c: stmt.excluded[c] for c in ("title", "description", "category", "ts", "updated_at")},
            where=items.c.ts <= stmt.excluded.ts)
        conn.execute(stmt, [item | {"updated_at": now_ms} for item in latest.values()])

    def _count(self, conn: Connection, batch: IngestBatch, fresh: pa.Table, rejections: list[dict]) -> None:
        counts: Counter = Counter()
        if fresh.num_rows:
            grouped = fresh.group_by(["storefront", "type"]).aggregate([([], "count_all")])
            for storefront, event_type, n in zip(*grouped.to_pydict().values()):
                counts[(storefront, event_type, "accepted")] += n
        for item in batch.items:
            counts[(item["storefront"], "catalog", "accepted")] += 1
        for r in rejections:
            counts[(r["storefront"], r["event_type"], r["reason"])] += 1
        if not counts:
            return
        minute = minute_of(batch.received_at)
        stmt = upsert(conn, ingest_stats)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["minute", "storefront", "event_type", "outcome"],
            set_={"count": ingest_stats.c.count + stmt.excluded["count"]}),
            [{"minute": minute, "storefront": s, "event_type": t, "outcome": o, "count": n}
             for (s, t, o), n in counts.items()])

    def unpublished_dead_letters(self, limit: int = 1000) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(dead_letters).where(dead_letters.c.published.is_(False))
                                .order_by(dead_letters.c.id).limit(limit)).mappings().all()
        return [dict(r) for r in rows]

    def mark_published(self, ids: list[int]) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(dead_letters).where(dead_letters.c.id.in_(ids)).values(published=True))

    def prune_dedupe(self, now_ms: int) -> int:
        """Forget event ids older than the dedupe horizon; returns how many."""
        with self.engine.begin() as conn:
            return conn.execute(delete(event_ids).where(
                event_ids.c.first_seen_ms < now_ms - self.dedupe_horizon_ms)).rowcount

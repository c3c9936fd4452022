"""The transactional ingest writer and migrations, on Postgres and SQLite alike."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
from sqlalchemy import func, inspect, select, text

from replay import codec
from store.db import make_engine, migrate
from store.ingest import IngestBatch, IngestWriter, OffsetConflict, Source
from store.models import dead_letters, event_ids, ingest_stats, items, open_segments

T0 = 1_763_000_000_000
TOPIC = "streamrec-events"


def entry(event_id: str, offset: int, user: str = "u1", storefront: str = "shop") -> tuple[dict, Source]:
    event = {"event_id": event_id, "type": "click", "user_id": user, "item_id": "i1", "ts": T0,
             "storefront": storefront}
    return event, Source(TOPIC, 0, offset, user.encode(), b"{}")


def batch(entries, expected, new, received_at=T0, **kw) -> IngestBatch:
    return IngestBatch(received_at=received_at, events=codec.to_table([e for e, _ in entries]),
                       sources=[s for _, s in entries], offsets={(TOPIC, 0): (expected, new)}, **kw)


def count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def open_event_ids(engine) -> list[str]:
    """Event ids of the open replay window, in ingest order."""
    with engine.connect() as conn:
        blobs = conn.execute(select(open_segments.c.data).order_by(open_segments.c.id)).scalars().all()
    return codec.concat([codec.decode(b) for b in blobs]).column("event_id").to_pylist()


def stats(engine) -> dict[tuple, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(ingest_stats.c.storefront, ingest_stats.c.event_type,
                                   ingest_stats.c.outcome, ingest_stats.c.count)).all()
    return {(s, t, o): n for s, t, o, n in rows}


def _migrate_url(url: str) -> None:
    migrate(make_engine(url))


def test_migrations_are_idempotent_and_safe_from_several_processes(database_url):
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_migrate_url, [database_url] * 3))
    engine = make_engine(database_url)
    migrate(engine)
    assert {"open_segments", "windows", "rehearsal_memory", "event_ids", "items", "ingest_stats", "dead_letters", "consumer_offsets"} <= set(
        inspect(engine).get_table_names())


def test_batch_commits_events_stats_and_offsets_together(engine):
    writer = IngestWriter(engine, "g", dedupe_horizon_s=3600)
    result = writer.write(batch([entry("a", 0), entry("b", 1)], None, 2))
    assert (result.accepted, result.duplicates) == (2, 0)
    assert writer.load_offsets([(TOPIC, 0), (TOPIC, 1)]) == {(TOPIC, 0): 2}
    assert stats(engine) == {("shop", "click", "accepted"): 2}
    writer.write(batch([entry("c", 2)], 2, 3))
    assert stats(engine) == {("shop", "click", "accepted"): 3}
    assert open_event_ids(engine) == ["a", "b", "c"]


def test_duplicates_within_horizon_become_dead_letters(engine):
    writer = IngestWriter(engine, "g", dedupe_horizon_s=60)
    writer.write(batch([entry("a", 0), entry("a", 1)], None, 2))
    result = writer.write(batch([entry("a", 2), entry("b", 3)], 2, 4, received_at=T0 + 30_000))
    assert (result.accepted, result.duplicates) == (1, 1)
    assert open_event_ids(engine) == ["a", "b"]
    assert stats(engine)[("shop", "click", "duplicate_event_id")] == 2
    letters = writer.unpublished_dead_letters()
    assert [(d["offset"], d["reason"]) for d in letters] == [(1, "duplicate_event_id"), (2, "duplicate_event_id")]
    writer.mark_published([d["id"] for d in letters])
    assert writer.unpublished_dead_letters() == []
    # after the horizon the same id is accepted again, and pruning forgets old ids
    result = writer.write(batch([entry("a", 4)], 4, 5, received_at=T0 + 120_000))
    assert result.accepted == 1
    assert writer.prune_dedupe(T0 + 300_000) == 2
    assert count(engine, event_ids) == 0


def test_a_fenced_off_writer_writes_nothing(engine):
    owner, zombie = IngestWriter(engine, "g", 3600), IngestWriter(engine, "g", 3600)
    owner.write(batch([entry("a", 0)], None, 1))
    with pytest.raises(OffsetConflict):
        zombie.write(batch([entry("a", 0)], None, 1))       # never stored this partition itself
    owner.write(batch([entry("b", 1)], 1, 2))
    with pytest.raises(OffsetConflict):
        zombie.write(batch([entry("b", 1), entry("c", 2)], 1, 3))  # stale position
    assert open_event_ids(engine) == ["a", "b"]
    assert stats(engine) == {("shop", "click", "accepted"): 2}


def test_catalog_keeps_the_newest_update(engine):
    writer = IngestWriter(engine, "g", 3600)
    item = {"item_id": "sku", "storefront": "shop", "description": None, "category": "shoes"}
    writer.write(IngestBatch(received_at=T0, items=[item | {"title": "new", "ts": T0 + 5},
                                                     item | {"title": "old", "ts": T0}],
                             offsets={("streamrec-catalog", 0): (None, 2)}))
    writer.write(IngestBatch(received_at=T0, items=[item | {"title": "late", "ts": T0 + 1}],
                             offsets={("streamrec-catalog", 0): (2, 3)}))
    with engine.connect() as conn:
        assert conn.execute(select(items.c.title)).scalars().all() == ["new"]
    assert stats(engine) == {("shop", "catalog", "accepted"): 3}


def test_rejections_are_counted_per_reason(engine):
    writer = IngestWriter(engine, "g", 3600)
    bad = {"topic": TOPIC, "partition": 0, "offset": 0, "key": None, "payload": b"\xff", "reason": "not_utf8",
           "detail": "invalid UTF-8 at byte 0", "storefront": "unknown", "event_type": "unknown"}
    writer.write(batch([entry("a", 1)], None, 2, rejections=[bad]))
    assert stats(engine) == {("shop", "click", "accepted"): 1, ("unknown", "unknown", "not_utf8"): 1}
    with engine.connect() as conn:
        assert conn.execute(select(dead_letters.c.payload)).scalar_one() == b"\xff"


def _open_at_once(url: str, barrier, n: int) -> None:
    barrier.wait()
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS opened (n INTEGER)"))
        conn.execute(text("INSERT INTO opened VALUES (:n)"), {"n": n})


def test_processes_opening_a_fresh_sqlite_file_at_once_all_connect(tmp_path):
    """A worker and its ingest processes open the store at the same moment: none may be refused
    with "database is locked" while the file switches to WAL mode."""
    url, context = f"sqlite:///{tmp_path / 'fresh.db'}", multiprocessing.get_context("fork")
    for attempt in range(5):
        barrier = context.Barrier(8)
        procs = [context.Process(target=_open_at_once, args=(url, barrier, attempt * 8 + n)) for n in range(8)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        assert [proc.exitcode for proc in procs] == [0] * 8
    with make_engine(url).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM opened")).scalar_one() == 40

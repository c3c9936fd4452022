"""Sealing replay windows and keeping the rehearsal memory in the store, on Postgres and SQLite."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from replay import codec
from replay.memory import Reservoir
from replay.windows import WindowPolicy
from runtime.config import Config
from store.db import make_engine, migrate
from store.ingest import IngestBatch, IngestWriter, Source
from store.models import windows
from store.replay import CorruptWindow, ReplayStore
from streamrec.cli import main
from streams.schema import WindowSealed
from streams.sealing import SealingService

T0 = 1_763_000_000_000
TOPIC = "streamrec-events"


def ingest(engine, first: int, n: int, received_at: int = T0, partition: int = 0) -> None:
    """Commit events ``first .. first+n-1`` as one ingest batch on ``partition``."""
    writer = IngestWriter(engine, "g", 3600)
    stored = writer.load_offsets([(TOPIC, partition)]).get((TOPIC, partition))
    events = [{"event_id": f"e{i}", "type": "purchase" if i % 5 == 0 else "click", "user_id": f"u{i % 9}",
               "item_id": f"i{i % 13}", "ts": T0 + i, "storefront": "a" if i % 2 else "b"}
              for i in range(first, first + n)]
    writer.write(IngestBatch(received_at=received_at, events=codec.to_table(events),
                             sources=[Source(TOPIC, partition, i, None, b"{}") for i in range(first, first + n)],
                             offsets={(TOPIC, partition): (stored, first + n)}))


def replay_store(engine, max_events=100, max_age_s=60.0, capacity=50) -> ReplayStore:
    return ReplayStore(engine, WindowPolicy(max_events, max_age_s), lambda: Reservoir(capacity, seed=1))


def ids(table) -> list[str]:
    return table.column("event_id").to_pylist()


def test_a_window_seals_at_exactly_max_events_and_the_rest_stays_open(engine):
    store = replay_store(engine)
    ingest(engine, 0, 60)
    assert store.seal_due(T0 + 1000) == []
    ingest(engine, 60, 70)  # 130 open: one window of 100, 30 stay open
    sealed = store.seal_due(T0 + 1000)
    assert [(w.n_events, w.seal_reason) for w in sealed] == [(100, "size")]
    assert ids(store.load_window(sealed[0].id)) == [f"e{i}" for i in range(100)]
    assert ids(store.load_open()) == [f"e{i}" for i in range(100, 130)]
    listed = store.list_windows()[0]
    assert (listed["ts_min"], listed["ts_max"], listed["opened_at"]) == (T0, T0 + 99, T0)
    assert listed["counts"] == {"a": {"click": 40, "purchase": 10}, "b": {"click": 40, "purchase": 10}}
    memory = store.memory()
    assert (len(memory), memory.n_seen) == (50, 100)
    assert set(ids(memory.events)) <= {f"e{i}" for i in range(100)}


def test_a_backlog_seals_several_windows_and_age_seals_a_small_one(engine):
    store = replay_store(engine, max_events=100, max_age_s=5)
    ingest(engine, 0, 250)
    assert [w.n_events for w in store.seal_due(T0 + 1000)] == [100, 100]
    assert store.seal_due(T0 + 4000) == []
    sealed = store.seal_due(T0 + 5000)
    assert [(w.n_events, w.seal_reason) for w in sealed] == [(50, "age")]
    assert store.open_window() == (0, None)
    assert store.memory().n_seen == 250
    assert [w.id for w in store.unpublished_notices()] == [w["id"] for w in reversed(store.list_windows())]


def test_concurrent_sealers_never_seal_an_event_twice(database_url):
    engines = [make_engine(database_url) for _ in range(3)]
    migrate(engines[0])
    for k in range(10):
        ingest(engines[0], k * 100, 100)
    stores = [replay_store(e, max_events=150) for e in engines]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda s: s.seal_due(T0 + 1000), stores))
    sealed = [w for r in results for w in r]
    assert sorted(w.n_events for w in sealed) == [150] * 6
    assert len({w.id for w in sealed}) == 6
    events = [i for w in sealed for i in ids(stores[0].load_window(w.id))] + ids(stores[0].load_open())
    assert sorted(events) == sorted(f"e{i}" for i in range(1000))
    assert stores[0].memory().n_seen == 900
    for e in engines:
        e.dispose()


def test_the_training_trigger_is_claimed_once(engine):
    store = replay_store(engine, max_events=10)
    ingest(engine, 0, 10)
    (window,) = store.seal_due(T0)
    with ThreadPoolExecutor(4) as pool:
        claims = list(pool.map(lambda w: store.claim_trigger(window.id, f"worker-{w}", T0), range(4)))
    assert claims.count(True) == 1
    store.mark_notices_published([window.id])
    assert store.unpublished_notices() == []


def test_a_notice_delivered_before_the_store_opens_waits_for_it(engine, database_url):
    ingest(engine, 0, 10)
    (window,) = replay_store(engine, max_events=10).seal_due(T0)
    notice = WindowSealed(window_id=window.id, n_events=10, seal_reason="full", sealed_at=T0)

    async def restarted_worker() -> tuple[bool, bool]:
        service = SealingService(Config(database_url=database_url), windows_topic=None)
        early = asyncio.ensure_future(service.take_notice(notice))  # as the topic hands it over at once
        await asyncio.sleep(0.1)
        assert not early.done()
        await service.on_start()
        try:
            return await early, await service.take_notice(notice)
        finally:
            await service.on_stop()

    assert asyncio.run(restarted_worker()) == (True, False)


def test_a_corrupted_window_is_refused(engine):
    store = replay_store(engine, max_events=10)
    ingest(engine, 0, 10)
    (window,) = store.seal_due(T0)
    with engine.begin() as conn:
        conn.execute(update(windows).where(windows.c.id == window.id).values(sha256="0" * 64))
    with pytest.raises(CorruptWindow, match=f"window {window.id}"):
        store.load_window(window.id)
    with pytest.raises(KeyError):
        store.load_window(window.id + 1)


def test_cli_lists_windows_and_memory(engine, database_url, monkeypatch):
    store = replay_store(engine, max_events=100, capacity=30)
    ingest(engine, 0, 230)
    store.seal_due(T0 + 1000)
    monkeypatch.setenv("STREAMREC_DATABASE_URL", database_url)
    result = CliRunner().invoke(main, ["windows"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("open window: 30 events")
    assert lines[1].startswith("training backlog: 2 windows (200 events) waiting")
    assert lines[2].split() == ["id", "sealed", "reason", "events", "from", "to", "per", "storefront", "training"]
    assert [line.split()[0] for line in lines[3:]] == ["2", "1"]
    assert "a:50 b:50" in lines[3] and "pending" in lines[3]
    result = CliRunner().invoke(main, ["memory", "--top", "2"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1].split()[:4] == ["reservoir", "30/30", "200", "2"]

"""Crash recovery: SIGKILL the worker mid-window while events flow; nothing accepted is lost or stored twice.

Events (into the open replay window), counters and partition offsets are committed in one
transaction, windows seal in another, and a worker resumes from the offsets in the store, so a
worker killed at any moment (mid-batch, mid-commit, mid-window) and replaced by a fresh one must
leave every produced event in exactly one sealed window, and exact counters.
Runs against a fresh Postgres database and against SQLite.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select

from store.db import make_engine
from store.models import ingest_stats
from store.replay import ReplayStore
from streams.producer import SendReport, StorefrontProducer
from tests.harness import Worker, wait_ingested, wait_until, worker_env

pytestmark = pytest.mark.broker

TOTAL_EVENTS = 30_000
CHUNK = 1_000
CHUNK_PAUSE_S = 1.1  # 30 chunks over ~35 s: a restart takes 9-15 s, so all three kills land mid-flow
USERS = 300
KILLS = 3
READY_TIMEOUT_S = 120  # a killed member holds its partitions until its session times out


def crash_events(now_ms: int) -> list[dict]:
    return [{"event_id": f"crash-{i}", "type": "purchase" if i % 11 == 0 else "click",
             "user_id": f"u{i % USERS}", "item_id": f"sku-{i % 250}", "ts": now_ms - 60_000 + i,
             "storefront": "shop-a" if i % 4 else "shop-b", "price": 4.5 if i % 11 == 0 else None}
            for i in range(TOTAL_EVENTS)]


class BackgroundProducer(threading.Thread):
    """Sends the events in chunks with pauses; sums the chunks' reports into ``report``."""

    def __init__(self, config, to_send: list[dict]):
        super().__init__(name="crash-producer", daemon=True)
        self.config, self.to_send = config, to_send
        self.report = SendReport()
        self.error: BaseException | None = None
        self.elapsed_s: float | None = None

    def run(self) -> None:
        started = time.monotonic()
        try:
            with StorefrontProducer.from_config(self.config) as producer:
                for start in range(0, len(self.to_send), CHUNK):
                    chunk = producer.send_events(self.to_send[start:start + CHUNK])
                    self.report.sent += chunk.sent
                    self.report.failed += [(start + i, reason, detail) for i, reason, detail in chunk.failed]
                    time.sleep(CHUNK_PAUSE_S)
        except BaseException as exc:  # reported by the test thread
            self.error = exc
        finally:
            self.elapsed_s = time.monotonic() - started


WINDOW_EVENTS = 4_000  # ~7 windows; the kills land inside open windows
WINDOW_AGE_S = 4


def stored_count(engine) -> int:
    return ReplayStore(engine).stored_events()


def outcome_totals(engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(ingest_stats.c.outcome, func.sum(ingest_stats.c.count))
                            .where(ingest_stats.c.event_type != "catalog")
                            .group_by(ingest_stats.c.outcome)).all()
    return {outcome: int(n) for outcome, n in rows}


def wait_for(predicate, timeout_s: float, what: str, worker: Worker):
    """``wait_until`` whose failure shows the worker's log as it is when the wait gives up."""
    try:
        return wait_until(predicate, timeout_s, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{worker.tail()}") from None


def kill_and_replace(worker: Worker, env: dict, log, delay_s: float) -> Worker:
    """After ``delay_s``, SIGKILL ``worker`` (no shutdown, no commit) and start a fresh one in its place."""
    time.sleep(delay_s)  # lands anywhere in the poll/validate/commit cycle, not only right after a commit
    worker.proc.kill()
    worker.proc.wait()
    replacement = Worker(env, log)
    replacement.wait_ready(READY_TIMEOUT_S)
    return replacement


def test_sigkilled_workers_lose_and_duplicate_nothing(broker, database_url, topic_prefix, tmp_path):
    env = worker_env(broker, database_url, topic_prefix, STREAMREC_WINDOW_MAX_EVENTS=str(WINDOW_EVENTS),
                     STREAMREC_WINDOW_MAX_AGE_S=str(WINDOW_AGE_S), STREAMREC_REHEARSAL_CAPACITY="5000")
    worker = Worker(env, tmp_path / "w0.log")
    engine = make_engine(database_url)
    producer = None
    try:
        worker.wait_ready()
        produced = crash_events(time.time_ns() // 1_000_000)
        producer = BackgroundProducer(worker.config, produced)
        producer.start()

        kills = []  # (rows stored when killed, producer still sending)
        for n in range(1, KILLS + 1):
            previous = kills[-1][0] if kills else 0
            at_kill = wait_for(lambda: (c := stored_count(engine)) > previous and c, READY_TIMEOUT_S,
                               f"store grows past {previous} rows before kill {n}", worker)
            kills.append((at_kill, producer.is_alive()))
            worker = kill_and_replace(worker, env, tmp_path / f"w{n}.log", delay_s=(0.0, 0.35, 0.8)[n % 3])

        producer.join(timeout=180)
        print(f"kills at (rows stored, producer still sending): {kills}; "
              f"production took {producer.elapsed_s:.1f}s")
        assert not producer.is_alive(), "producer did not finish in 180 s"
        assert producer.error is None, f"producer raised {producer.error!r}"
        assert (producer.report.sent, producer.report.failed[:5]) == (TOTAL_EVENTS, [])

        replay = ReplayStore(engine)
        wait_for(lambda: stored_count(engine) >= TOTAL_EVENTS and replay.open_window()[0] == 0, 180,
                 f"{TOTAL_EVENTS} events stored and sealed (kills at {kills})", worker)
        wait_ingested(worker.config, engine, 60)  # no batch can land again: counting now is final
        context = f"kills at (rows, producing) {kills}\n{worker.tail()}"
        ids = replay.all_event_ids()
        stored_ids = set(ids)
        assert (len(ids), len(stored_ids)) == (TOTAL_EVENTS, TOTAL_EVENTS), context
        assert replay.open_window()[0] == 0, context
        windows = replay.list_windows()
        assert sum(w["n_events"] for w in windows) == TOTAL_EVENTS
        assert all(w["n_events"] == WINDOW_EVENTS for w in windows if w["seal_reason"] == "size"), windows
        assert [m["n_seen"] for m in replay.memory_rows()] == [TOTAL_EVENTS]
        expected_ids = {e["event_id"] for e in produced}
        assert stored_ids == expected_ids, (
            f"missing {sorted(expected_ids - stored_ids)[:10]}, unexpected {sorted(stored_ids - expected_ids)[:10]}\n"
            f"{context}")
        totals = outcome_totals(engine)
        assert totals.get("accepted") == TOTAL_EVENTS, f"{totals}\n{context}"
        assert "duplicate_event_id" not in totals, (
            f"redelivery after a crash counted as duplicates: {totals}\n{context}")
        assert worker.alive(), worker.tail()
    finally:
        worker.stop()
        engine.dispose()
        if producer is not None:
            producer.join(timeout=60)

"""Ingestion benchmark: the worker's validation path next to a raw aiokafka consumer.

    python -m bench.ingest [--events 1000000] [--ingest-processes N] [--database-url URL] [--faust-agent]

Starts the bundled broker, fills one topic with valid MovieLens-shaped events, then reads
the same topic three ways on the same broker in the same run and prints a table:

* raw aiokafka: a consumer that only parses JSON (the ceiling), three times (the median counts);
* streamrec worker: ``faust -A streams.app worker`` with its ingest processes (one per CPU by
  default) validating and committing every event to the store (SQLite by default), while the
  worker also seals windows and keeps its serving state; timed from the first batch stored
  once every ingest process holds its partitions, to the last;
* plain Faust agent (``--faust-agent``): ``stream.take()`` with the same validation, for reference.

A second table gives the cost per event of each stage the worker runs for every event, each
measured alone in the benchmark process, and the throughput their sum allows. The run is
written to ``bench/results/ingest/`` with its provenance (:mod:`bench.provenance`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from bench.provenance import provenance, write_result
from runtime.config import Config
from runtime.processes import free_port, spawn, start_broker, start_worker, stop
from serving.history import UserHistories
from store.db import make_engine, migrate
from store.ingest import IngestBatch, IngestWriter, Source, outcome_totals
from streams.validation import Validator

PARTITIONS = 4
RAW_RUNS = 3  # the raw rate varies by up to a third between runs here; the ratio uses the median


def fill_topic(bootstrap: str, topic: str, n: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, batch_size=512 * 1024)
    now = time.time_ns() // 1_000_000
    for i in range(n):
        user = f"u{i % 943}"
        producer.send(topic, key=user.encode(), value=orjson.dumps({
            "event_id": f"bench-{i}", "type": "purchase" if i % 5 == 0 else "click", "user_id": user,
            "item_id": f"m{i % 1682}", "ts": now - n + i, "storefront": "movielens",
            "session_id": f"{user}-d1"}))
    producer.flush()
    producer.close()


async def raw_consumer(bootstrap: str, topic: str, n: int) -> float:
    """Seconds for a raw aiokafka group consumer to read and parse n messages (from the first)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"raw-{uuid.uuid4().hex[:6]}",
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=32 * 1024 * 1024)
    await consumer.start()
    seen, first = 0, None
    try:
        while seen < n:
            for messages in (await consumer.getmany(timeout_ms=1000, max_records=5000)).values():
                first = first or time.perf_counter()
                for m in messages:
                    orjson.loads(m.value)
                seen += len(messages)
        return time.perf_counter() - first
    finally:
        await consumer.stop()


def accepted(engine) -> int:
    try:
        return outcome_totals(engine)["accepted"]
    except Exception:  # not migrated yet
        return 0


def all_assigned(web_port: int) -> bool:
    """The worker says every ingest process holds its partitions (startup rebalances are over)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/health", timeout=1) as response:
            return json.loads(response.read())["status"] == "ok"
    except OSError:
        return False


def streamrec_worker(bootstrap: str, prefix: str, n: int, database_url: str, processes: int,
                     log: Path) -> tuple[int, float]:
    """(events timed, seconds) for the real worker, from the first batch it stores once all its
    ingest processes hold partitions (so a startup rebalance is not timed) to the last."""
    env = {"STREAMREC_INGEST_PROCESSES": str(processes), "STREAMREC_KAFKA_URL": f"kafka://{bootstrap}",
           "STREAMREC_DATABASE_URL": database_url, "STREAMREC_TOPIC_PREFIX": prefix,
           "STREAMREC_APP_ID": f"bench-{uuid.uuid4().hex[:6]}",
           "STREAMREC_WEB_PORT": str(free_port()), "STREAMREC_SESSION_TIMEOUT_S": "6",
           "STREAMREC_LOG_LEVEL": "warn", "STREAMREC_TOPIC_PARTITIONS": str(PARTITIONS)}
    engine = make_engine(database_url)
    before = accepted(engine)  # a store used before keeps its counts
    worker = start_worker(env, log=log)
    try:
        first_count = 0
        while first_count == 0 or not all_assigned(int(env["STREAMREC_WEB_PORT"])):
            if worker.poll() is not None:
                sys.exit(f"worker exited; see {log}")
            time.sleep(0.02)
            first_count = accepted(engine) - before
        if first_count >= n:
            sys.exit(f"the worker stored all {n:,} events before its ingest processes were all assigned; "
                     "use more --events")
        t0 = time.perf_counter()
        while accepted(engine) - before < n:
            time.sleep(0.02)
        return n - first_count, time.perf_counter() - t0
    finally:
        stop(worker)
        engine.dispose()


def faust_agent(bootstrap: str, topic: str, n: int, log: Path) -> float:
    env = {**os.environ, "STREAMREC_KAFKA_URL": f"kafka://{bootstrap}", "BENCH_TOPIC": topic,
           "BENCH_EVENTS": str(n), "BENCH_APP_ID": f"agent-{uuid.uuid4().hex[:6]}", "PYTHONUNBUFFERED": "1"}
    proc = spawn([sys.executable, "-m", "faust", "-A", "bench.faust_agent_app", "worker", "-l", "warn"],
                 env=env, log=log)
    try:
        while True:
            match = re.search(r"BENCH done \d+ ([\d.]+)", log.read_text(errors="replace"))
            if match:
                return float(match.group(1))
            if proc.poll() is not None:
                sys.exit(f"faust agent exited; see {log}")
            time.sleep(0.2)
    finally:
        stop(proc)


def stage_costs(database_url: str, batches: int = 5, size: int = 20_000) -> list[tuple[str, float]]:
    """Microseconds per event of each stage the worker runs for every event, measured one at a
    time in this process on ``size``-event batches (no other stage competing for the CPU)."""
    now = time.time_ns() // 1_000_000
    polls = [[orjson.dumps({"event_id": f"stage-{b}-{i}", "type": "purchase" if i % 5 == 0 else "click",
                            "user_id": f"u{i % 943}", "item_id": f"m{i % 1682}", "ts": now - size + i,
                            "storefront": "movielens", "session_id": f"u{i % 943}-d1"}) for i in range(size)]
             for b in range(batches)]
    engine = make_engine(database_url)
    migrate(engine)
    writer = IngestWriter(engine, f"stage-{uuid.uuid4().hex[:6]}", 86_400)
    validator, histories = Validator(), UserHistories(max_events=50)
    spent = {"validate (msgspec + column checks)": 0.0, "commit to the store": 0.0,
             "serving: user histories": 0.0}
    for b, raws in enumerate(polls):
        t0 = time.perf_counter()
        table, rows, _ = validator.interactions(raws)
        t1 = time.perf_counter()
        writer.write(IngestBatch(received_at=now, events=table,
                                 sources=[Source("t", 0, i, None, raws[i]) for i in rows],
                                 offsets={("t", 0): (b * size or None, (b + 1) * size)}))
        t2 = time.perf_counter()
        histories.add(table)
        t3 = time.perf_counter()
        for name, seconds in zip(spent, (t1 - t0, t2 - t1, t3 - t2)):
            spent[name] += seconds
    engine.dispose()
    return [(name, seconds / (batches * size) * 1e6) for name, seconds in spent.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=None, help="store for the worker (default: a fresh SQLite file)")
    parser.add_argument("--ingest-processes", type=int, default=min(os.cpu_count() or 1, PARTITIONS),
                        help="the worker's STREAMREC_INGEST_PROCESSES (default: one per CPU, at most one per "
                             "partition)")
    parser.add_argument("--faust-agent", action="store_true", help="also time a plain per-message Faust agent")
    args = parser.parse_args()
    stamp = provenance()
    tmp = Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
    database_url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    port = free_port()
    broker = start_broker(port, log=tmp / "broker.log")
    bootstrap = f"127.0.0.1:{port}"
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    topic = Config.from_env({"STREAMREC_TOPIC_PREFIX": prefix}).events_topic
    try:
        print(f"Producing {args.events:,} events to {topic} ({PARTITIONS} partitions)...", file=sys.stderr)
        fill_topic(bootstrap, topic, args.events)
        rows = []
        raw_runs = sorted(asyncio.run(raw_consumer(bootstrap, topic, args.events)) for _ in range(RAW_RUNS))
        raw_s = raw_runs[RAW_RUNS // 2]
        rows.append((f"raw aiokafka consumer (parse only; median of {RAW_RUNS} runs)", args.events, raw_s))
        timed, worker_s = streamrec_worker(bootstrap, prefix, args.events, database_url, args.ingest_processes,
                                           tmp / "worker.log")
        store = database_url.split(":", 1)[0]
        rows.append((f"streamrec worker, {args.ingest_processes} ingest process"
                     f"{'es' if args.ingest_processes > 1 else ''} (validate + commit to {store})", timed, worker_s))
        if args.faust_agent:
            rows.append(("plain Faust agent, stream.take() (validate only)", args.events,
                         faust_agent(bootstrap, topic, args.events, tmp / "agent.log")))
    finally:
        stop(broker)
    raw_rate = args.events / raw_s
    print(f"\nraw consumer runs: {', '.join(f'{args.events / t:,.0f}' for t in reversed(raw_runs))} events/s")
    print("\n| path | events | seconds | events/s | ratio to raw |\n|---|---:|---:|---:|---:|")
    for name, n, seconds in rows:
        print(f"| {name} | {n:,} | {seconds:.2f} | {n / seconds:,.0f} | {n / seconds / raw_rate:.2f} |")
    stages = [("fetch + parse (the raw consumer)", 1e6 / raw_rate), *stage_costs(database_url)]
    print(f"\nPer-event cost of each stage alone ({store}):\n\n| stage | µs/event |\n|---|---:|")
    for name, micros in stages:
        print(f"| {name} | {micros:.2f} |")
    total = sum(micros for _, micros in stages)
    print(f"| **sum: one stage after another allows {1e6 / total:,.0f} events/s, "
          f"{1e6 / total / raw_rate:.2f} of raw** | {total:.2f} |")
    print(f"\n{os.cpu_count()} CPUs, {sys.platform}, Python {sys.version.split()[0]}")
    result = {"store": store, "raw_runs_events_per_s": [round(args.events / t) for t in reversed(raw_runs)],
              "rows": [{"path": name, "events": n, "seconds": round(seconds, 2), "events_per_s": round(n / seconds),
                        "ratio_to_raw": round(n / seconds / raw_rate, 2)} for name, n, seconds in rows],
              "stages_us_per_event": {name: round(micros, 2) for name, micros in stages}}
    settings = {**vars(args), "database_url": store}  # the URL itself may name a password
    print(f"written to {write_result('ingest', settings, result, started=stamp)}")


if __name__ == "__main__":
    main()

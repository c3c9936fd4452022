"""Freshness: how long a sealed window waits before a model trained on it serves, under a steady stream.

    python -m bench.freshness [--rate 2000] [--seconds 300] [--catalog-items 10000] [--trainers 0]
                              [--database-url URL]

Starts the bundled broker, one worker and ``--trainers`` standalone trainers (0: the worker
trains, as ``./dev run`` does; otherwise workers only ingest, seal and serve), on a fresh
Postgres database (``--database-url``, default a new database on 127.0.0.1:5432) with the
default settings. It sends the catalog and waits until its texts are embedded (by the worker
and its trainer, as they do when a catalog arrives; the seconds are reported), then replays
MovieLens-100k ratings as a live stream (fresh event ids, stamped now) at ``--rate`` events/s
(0: as fast as the producer goes) for ``--seconds``, then waits up to ``--drain`` seconds for
the training backlog to empty. Every five seconds it samples events stored and the training
backlog (windows and events waiting).

The catalog is scaled synthetically to ``--catalog-items``: each MovieLens film comes in
``ceil(items / 1,682)`` editions (its title with an edition name), and each user's events go to
one edition family (by a hash of the user), so every item of the larger catalog is bought and
the co-occurrence structure of the ratings is kept within each family. ``--catalog-items 0``
sends the MovieLens catalog as it is.

Per window it reports when it sealed, the version whose job trained it, and when that version
began serving (its promotion; workers load it within ``STREAMREC_SERVING_POLL_S`` plus the
build time). Seal-to-serving latency is the difference; a window whose version the gate
rejected never served. Prints p50/p95 latency, the backlog over time and the events/s
sustained, job seconds by windows per job (with the job's phases: reading, drift, training,
judging), the drift alerts raised on this normal stream (rows of ``drift_metrics``, breaches,
confirmed alerts and their share, per metric), and writes the run to ``bench/results/freshness/``
with its provenance (:mod:`bench.provenance`). ``bench/results/freshness.json`` holds the runs made
before that.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from sqlalchemy import case, create_engine, func, select, text
from sqlalchemy.engine import make_url

from bench.provenance import provenance, write_result
from learner.text import TextEncoder
from runtime.config import Config
from runtime.processes import free_port, spawn, start_broker, start_worker, stop
from store.catalog import catalog_sizes
from store.db import make_engine, migrate
from store.models import drift_metrics, model_versions, windows
from store.registry import now_ms
from store.replay import ReplayStore
from store.training_queue import backlog
from streams import movielens
from streams.producer import StorefrontProducer
from training.catalog_text import CatalogEmbedder

POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def fresh_postgres() -> str:
    name = f"streamrec_fresh_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)


EDITIONS = ("original release", "collector's edition", "director's cut", "remastered", "special edition",
            "anniversary edition", "extended cut", "restored print", "deluxe box set", "4K edition")


def scaled_catalog(items: int) -> tuple[list[dict], int]:
    """The MovieLens catalog in enough editions to hold at least ``items`` items: (catalog, editions)."""
    films = movielens.to_catalog(movielens.load_movies())
    editions = max(1, -(-items // len(films)))
    if editions > len(EDITIONS):
        raise SystemExit(f"--catalog-items {items:,}: at most {len(EDITIONS) * len(films):,}")
    return [film if e == 0 else film | {"item_id": f"{film['item_id']}~e{e}", "title": f"{film['title']} ({name})",
                                        "description": f"{film['description']} The {name}."}
            for e, name in enumerate(EDITIONS[:editions]) for film in films], editions


def edition_of(user_id: str, editions: int) -> int:
    """The edition family of a user's events: a stable hash of the user id.

    >>> edition_of("u1", 1), edition_of("u1", 6) == edition_of("u1", 6)
    (0, True)
    """
    return int(hashlib.sha256(user_id.encode()).hexdigest()[:8], 16) % editions


def produce(config: Config, rate: float, seconds: float, sent: list[int], stop_at: list[float],
            editions: int = 1) -> None:
    """Replay MovieLens ratings as live events at ``rate``/s (0: unthrottled) for ``seconds``,
    each user's items in their edition family."""
    ratings = movielens.to_events(movielens.load_ratings(), now_ms())
    for event in ratings:
        edition = edition_of(event["user_id"], editions)
        if edition:
            event["item_id"] = f"{event['item_id']}~e{edition}"
    chunk = 500 if rate else 5_000
    started = time.monotonic()
    with StorefrontProducer.from_config(config, linger_ms=20) as producer:
        i = 0
        while time.monotonic() - started < seconds:
            now = now_ms()
            batch = [ratings[(i + j) % len(ratings)] | {"event_id": f"live-{i + j}", "ts": now} for j in range(chunk)]
            report = producer.send_events(batch)
            if not report.ok:
                raise RuntimeError(f"producer failed: {report.failed[:3]}")
            i += chunk
            sent[0] = i
            if rate:
                time.sleep(max(0.0, started + i / rate - time.monotonic()))
    stop_at[0] = time.monotonic()


def wait_ready(web_port: int, worker, timeout_s: float = 120.0) -> None:
    """Until the worker's ingest processes hold their partitions (``/health`` says ``ok``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            sys.exit("the worker exited before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/health", timeout=2) as answer:
                if json.loads(answer.read())["status"] == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"the worker was not ready after {timeout_s:.0f}s")


def window_latencies(engine) -> list[dict]:
    """Per sealed window: sealed_at, its version, that version's status and promotion time."""
    with engine.connect() as conn:
        rows = conn.execute(select(windows.c.id, windows.c.sealed_at, windows.c.n_events, windows.c.train_state,
                                   windows.c.version_id, model_versions.c.status, model_versions.c.promoted_at)
                            .select_from(windows.outerjoin(model_versions, model_versions.c.id == windows.c.version_id))
                            .order_by(windows.c.id)).mappings().all()
    return [{**r, "latency_s": (r["promoted_at"] - r["sealed_at"]) / 1000 if r["promoted_at"] else None}
            for r in rows]


def wait_embedded(engine, items: int, worker, timeout_s: float) -> None:
    """Until the store holds ``items`` catalog items and every text's embedding."""
    deadline = time.monotonic() + timeout_s
    embedder = CatalogEmbedder(engine, TextEncoder)  # only asks what is pending; never encodes here
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            sys.exit("the worker exited while the catalog was embedded")
        if sum(catalog_sizes(engine).values()) >= items and not embedder.pending():
            return
        time.sleep(2)
    sys.exit(f"the catalog was not embedded after {timeout_s:.0f}s")


def job_seconds(engine) -> list[dict]:
    """Per number of windows a job trained: jobs, mean seconds, and mean seconds of each phase."""
    with engine.connect() as conn:
        rows = conn.execute(select(model_versions.c.windows, model_versions.c.duration_s,
                                   model_versions.c.metrics)).all()
    by_size: dict[int, list] = {}
    for windows_, duration, metrics in rows:
        by_size.setdefault(len(windows_ or []), []).append((duration, (metrics or {}).get("job_seconds", {})))
    return [{"windows_per_job": size, "jobs": len(jobs), "seconds": round(float(np.mean([d for d, _ in jobs])), 1),
             **{f"{phase}_s": round(float(np.mean([p.get(phase, 0.0) for _, p in jobs])), 1)
                for phase in ("read", "drift", "train", "judge")}}
            for size, jobs in sorted(by_size.items())]


def drift_alerts(engine) -> dict:
    """Drift rows, breaches and confirmed alerts in all, and per metric that breached."""
    t = drift_metrics
    with engine.connect() as conn:
        per_metric = conn.execute(select(t.c.metric, func.count(), func.sum(case_int(t.c.breach)),
                                         func.sum(case_int(t.c.alert))).group_by(t.c.metric)).all()
    rows = sum(n for _, n, _, _ in per_metric)
    alerts = sum(a or 0 for _, _, _, a in per_metric)
    return {"rows": rows, "breaches": sum(b or 0 for _, _, b, _ in per_metric), "alerts": alerts,
            "alert_share": round(alerts / rows, 4) if rows else None,
            "by_metric": {m: {"rows": n, "breaches": b or 0, "alerts": a or 0} for m, n, b, a in per_metric if b}}


def case_int(column):
    """1 where a boolean column is true, else 0 (summable on Postgres and SQLite)."""
    return case((column, 1), else_=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2000.0, help="events/s (0: as fast as the producer goes)")
    parser.add_argument("--seconds", type=float, default=300.0, help="how long the stream runs")
    parser.add_argument("--drain", type=float, default=300.0, help="most seconds to wait for the backlog after")
    parser.add_argument("--catalog-items", type=int, default=10_000,
                        help="catalog size, scaled with synthetic editions (0: MovieLens' 1,682)")
    parser.add_argument("--embed-timeout", type=float, default=900.0,
                        help="most seconds to wait for the catalog's texts to be embedded")
    parser.add_argument("--trainers", type=int, default=0, help="standalone trainers (0: the worker trains)")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    stamp = provenance()
    tmp = Path(tempfile.mkdtemp(prefix="streamrec-freshness-"))
    database_url = args.database_url or fresh_postgres()
    port = free_port()
    broker = start_broker(port, log=tmp / "broker.log")
    env = {**os.environ, "STREAMREC_KAFKA_URL": f"kafka://127.0.0.1:{port}", "STREAMREC_DATABASE_URL": database_url,
           "STREAMREC_TOPIC_PREFIX": f"fresh{uuid.uuid4().hex[:6]}", "STREAMREC_WEB_PORT": str(free_port()),
           "STREAMREC_LOG_LEVEL": "info", "STREAMREC_WORKER_TRAINS": "false" if args.trainers else "true",
           "PYTHONUNBUFFERED": "1"}
    config = Config.from_env(env)
    engine = make_engine(database_url)
    migrate(engine)
    worker = start_worker(env, log=tmp / "worker.log")
    trainers = [spawn([sys.executable, "-m", "training.loop"], env=env, log=tmp / f"trainer-{n}.log")
                for n in range(args.trainers)]
    samples: list[dict] = []
    try:
        wait_ready(config.web_port, worker)
        catalog, editions = (scaled_catalog(args.catalog_items) if args.catalog_items
                             else (movielens.to_catalog(movielens.load_movies()), 1))
        sent_at = time.monotonic()
        with StorefrontProducer.from_config(config) as producer:
            assert producer.send_catalog(catalog).ok
        wait_embedded(engine, len(catalog), worker, args.embed_timeout)
        embedded_s = round(time.monotonic() - sent_at, 1)
        print(f"catalog of {len(catalog):,} items stored and embedded {embedded_s:.0f}s after it was sent", flush=True)
        sent, stopped = [0], [0.0]
        sender = threading.Thread(target=produce, args=(config, args.rate, args.seconds, sent, stopped, editions),
                                  daemon=True)
        store, streamed = ReplayStore(engine), time.monotonic()
        sender.start()
        while True:
            if worker.poll() is not None:
                sys.exit(f"worker exited; see {tmp / 'worker.log'}")
            waiting = backlog(engine, now_ms())
            samples.append({"s": round(time.monotonic() - streamed, 1), "sent": sent[0],
                            "stored": store.stored_events(),
                            "windows_waiting": waiting["windows_waiting"], "in_training": waiting["windows_training"],
                            "events_waiting": waiting["events_waiting"], "trained": waiting["windows_trained"]})
            streaming = sender.is_alive()
            if not streaming and (waiting["windows_waiting"] == 0 or time.monotonic() - stopped[0] > args.drain):
                break
            time.sleep(5)
        per_window = window_latencies(engine)
        drift = drift_alerts(engine)
        jobs = job_seconds(engine)
    finally:
        for proc in (*trainers, worker, broker):
            stop(proc)
        engine.dispose()
    report(args, per_window, samples, stopped[0] - streamed, tmp, stamp, drift, jobs,
           {"items": len(catalog), "editions": editions, "embedded_s": embedded_s})


def report(args, per_window: list[dict], samples: list[dict], stream_s: float, logs: Path, stamp: dict,
           drift: dict | None = None, jobs: list[dict] | None = None, catalog: dict | None = None) -> None:
    during = [s for s in samples if s["s"] <= stream_s]
    stored_rate = during[-1]["stored"] / stream_s if during else 0.0
    served = [w["latency_s"] for w in per_window if w["latency_s"] is not None]
    p50, p95 = (float(np.percentile(served, q)) for q in (50, 95)) if served else (float("nan"),) * 2
    backlog_during = [s["windows_waiting"] for s in during]
    steady = [s for s in during if s["s"] >= 60]  # after the first minute (worker start, first model build)
    trend = (float(np.polyfit([s["s"] for s in steady], [s["windows_waiting"] for s in steady], 1)[0]) * 60
             if len(steady) >= 3 else float("nan"))
    third = max(1, len(backlog_during) // 3)
    result = {
        "rate": args.rate or "max", "seconds": args.seconds, "trainers": args.trainers or "worker",
        "cpus": os.cpu_count(), "catalog": catalog,
        "events_sent": samples[-1]["sent"], "events_stored_per_s": round(stored_rate),
        "windows_sealed": len(per_window), "windows_trained": sum(w["train_state"] == "trained" for w in per_window),
        "windows_served": len(served), "versions": len({w["version_id"] for w in per_window if w["version_id"]}),
        "latency_p50_s": round(p50, 1), "latency_p95_s": round(p95, 1),
        "backlog_max_windows": max(backlog_during, default=0),
        "backlog_first_third_mean": round(float(np.mean(backlog_during[:third])), 2) if backlog_during else 0,
        "backlog_last_third_mean": round(float(np.mean(backlog_during[-third:])), 2) if backlog_during else 0,
        "backlog_trend_windows_per_min": round(trend, 2),
        "backlog_after_stream": samples[-1]["windows_waiting"], "drift": drift, "job_seconds": jobs,
        "samples": samples,
        "windows": per_window,
    }
    print(f"\nrate {result['rate']} events/s for {args.seconds:.0f}s, trainers: {result['trainers']}, "
          f"{result['cpus']} CPUs, logs in {logs}\n")
    print("| seconds | sent | stored | windows waiting | of them in training | events waiting | windows trained |\n"
          "|---:|---:|---:|---:|---:|---:|---:|")
    for s in samples[::max(1, len(samples) // 12)] + samples[-1:]:
        print(f"| {s['s']:.0f} | {s['sent']:,} | {s['stored']:,} | {s['windows_waiting']} | {s['in_training']} | "
              f"{s['events_waiting']:,} | {s['trained']} |")
    print(f"\n{result['windows_sealed']} windows sealed, {result['windows_trained']} trained in "
          f"{result['versions']} versions, {result['windows_served']} served; seal-to-serving p50 "
          f"{result['latency_p50_s']}s, p95 {result['latency_p95_s']}s; backlog mean "
          f"{result['backlog_first_third_mean']} "
          f"windows in the first third of the stream, {result['backlog_last_third_mean']} in the last, max "
          f"{result['backlog_max_windows']}, trend after the first minute {trend:+.2f} windows/min; "
          f"{result['events_stored_per_s']:,} events/s stored")
    if jobs:
        print("\n| windows per job | jobs | seconds | reading | drift | training | judging |\n"
              "|---:|---:|---:|---:|---:|---:|---:|")
        for j in jobs:
            print(f"| {j['windows_per_job']} | {j['jobs']} | {j['seconds']} | {j['read_s']} | {j['drift_s']} | "
                  f"{j['train_s']} | {j['judge_s']} |")
    if drift:
        print(f"drift metrics: {drift['rows']} rows, {drift['breaches']} breaches, {drift['alerts']} alerts "
              f"({(drift['alert_share'] or 0):.1%} of rows); breaching metrics: {drift['by_metric'] or 'none'}")
    settings = {**vars(args), "database_url": make_url(args.database_url).drivername if args.database_url else None}
    print(f"written to {write_result('freshness', settings, result, started=stamp)}")


if __name__ == "__main__":
    main()

"""Soak: a million events pushed as fast as this machine allows while windows seal and models train.

    python -m bench.soak [--events 1000000] [--window-events 20000] [--database-url URL]

Starts the bundled broker and one worker (SQLite in a temporary folder unless
``--database-url``), sends the MovieLens catalog, then produces ``--events`` MovieLens-shaped
click and purchase events from a background thread with no throttle. Every two seconds it
samples events produced and stored, the lag between them, windows sealed, training runs
finished, and the resident set size of the worker and of its training process. Prints the
samples at every tenth of the stream, the peak RSS of both processes and the sustained
ingest rate (events stored per second from the first to the last stored event). The run is
written to ``bench/results/soak/`` with its provenance (:mod:`bench.provenance`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench.provenance import provenance, write_result
from bench.replay_memory import rss_mib
from runtime.config import Config
from runtime.processes import free_port, start_broker, start_worker, stop
from store.db import make_engine, migrate
from store.registry import list_runs
from store.replay import ReplayStore
from streams import movielens
from streams.producer import StorefrontProducer


def children(pid: int) -> list[int]:
    """Child process ids of ``pid`` (the training process, when one runs)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def produce(config: Config, n: int, counter: list[int]) -> None:
    """Send ``n`` events in chunks, counting what the broker acknowledged in ``counter[0]``."""
    now = time.time_ns() // 1_000_000
    with StorefrontProducer.from_config(config, linger_ms=50) as producer:
        for start in range(0, n, 20_000):
            chunk = [{"event_id": f"soak-{i}", "type": "purchase" if i % 5 == 0 else "click",
                      "user_id": f"u{i * 7919 % 943 + 1}", "item_id": f"m{i * 104729 % 1682 + 1}",
                      "ts": now - n + i, "storefront": "movielens"} for i in range(start, min(n, start + 20_000))]
            report = producer.send_events(chunk)
            if not report.ok:
                raise RuntimeError(f"producer failed: {report.failed[:3]}")
            counter[0] += report.sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--window-events", type=int, default=20_000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    stamp = provenance()
    tmp = Path(tempfile.mkdtemp(prefix="streamrec-soak-"))
    database_url = args.database_url or f"sqlite:///{tmp / 'soak.db'}"
    port = free_port()
    broker = start_broker(port, log=tmp / "broker.log")
    env = {**os.environ, "STREAMREC_KAFKA_URL": f"kafka://127.0.0.1:{port}", "STREAMREC_DATABASE_URL": database_url,
           "STREAMREC_TOPIC_PREFIX": f"soak{uuid.uuid4().hex[:6]}", "STREAMREC_WEB_PORT": str(free_port()),
           "STREAMREC_LOG_LEVEL": "warn", "STREAMREC_WINDOW_MAX_EVENTS": str(args.window_events),
           "STREAMREC_WINDOW_MAX_AGE_S": "30", "STREAMREC_TRAIN_EPOCHS": "2"}
    config = Config.from_env(env)
    engine = make_engine(database_url)
    migrate(engine)
    worker = start_worker(env, log=tmp / "worker.log")
    samples, peaks = [], {"worker": 0.0, "training": 0.0}
    try:
        time.sleep(5)
        with StorefrontProducer.from_config(config) as producer:
            assert producer.send_catalog(movielens.to_catalog(movielens.load_movies())).ok
        produced = [0]
        sender = threading.Thread(target=produce, args=(config, args.events, produced), daemon=True)
        store, started = ReplayStore(engine), time.monotonic()
        sender.start()
        while True:
            if worker.poll() is not None:
                sys.exit(f"worker exited; see {tmp / 'worker.log'}")
            stored = store.stored_events()
            training = sum(rss_mib(c)[0] for c in children(worker.pid) if Path(f"/proc/{c}").exists())
            worker_rss = rss_mib(worker.pid)[0]
            peaks["worker"], peaks["training"] = max(peaks["worker"], worker_rss), max(peaks["training"], training)
            samples.append({"s": time.monotonic() - started, "produced": produced[0], "stored": stored,
                            "lag": produced[0] - stored, "windows": len(store.list_windows()),
                            "runs": len([r for r in list_runs(engine) if r["status"] != "running"]),
                            "worker": worker_rss, "training": training})
            if stored >= args.events:
                break
            time.sleep(2)
    finally:
        stop(worker)
        stop(broker)
        engine.dispose()

    first = next(s for s in samples if s["stored"] > 0)
    last = samples[-1]
    print(f"\n{args.events:,} events, windows of {args.window_events:,}, store {database_url.split(':', 1)[0]}, "
          f"{os.cpu_count()} CPUs\n")
    print("| seconds | produced | stored | lag | windows sealed | training runs done | worker RSS MiB | "
          "training RSS MiB |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    shown = [samples[len(samples) // 20],
             *(next(s for s in samples if s["stored"] >= args.events * tenth / 10) for tenth in range(1, 11))]
    for s in shown:
        print(f"| {s['s']:.0f} | {s['produced']:,} | {s['stored']:,} | {s['lag']:,} | {s['windows']} | {s['runs']} | "
              f"{s['worker']:.0f} | {s['training']:.0f} |")
    rate = (last["stored"] - first["stored"]) / max(1e-9, last["s"] - first["s"])
    max_lag = max(s["lag"] for s in samples)
    print(f"\nsustained ingest {rate:,.0f} events/s while training; max lag {max_lag:,}; "
          f"peak RSS worker {peaks['worker']:.0f} MiB, training process {peaks['training']:.0f} MiB; "
          f"{last['windows']} windows sealed, {last['runs']} training runs finished")
    result = {"store": database_url.split(":", 1)[0], "sustained_events_per_s": round(rate), "max_lag": max_lag,
              "peak_rss_worker_mib": round(peaks["worker"]), "peak_rss_training_mib": round(peaks["training"]),
              "windows_sealed": last["windows"], "training_runs_done": last["runs"],
              "rows": [{**s, "s": round(s["s"], 1), "worker": round(s["worker"]), "training": round(s["training"])}
                       for s in shown]}
    settings = {**vars(args), "database_url": result["store"]}
    print(f"written to {write_result('soak', settings, result, started=stamp)}")


if __name__ == "__main__":
    main()

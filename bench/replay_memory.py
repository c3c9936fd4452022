"""Worker memory while replay windows seal and the rehearsal memory fills, then stays full.

    python -m bench.replay_memory [--events 1000000] [--policy reservoir] [--capacity 20000]
                                  [--window-events 10000] [--database-url URL]

Starts the bundled broker, fills the events topic, starts one worker and samples its
resident set size (``/proc/<pid>/status``) while it ingests, seals windows and updates the
rehearsal memory. Prints RSS at every tenth of the stream and the peak; with the open window
and the memory in the store, RSS must stay flat once the memory is full. The run is written
to ``bench/results/replay_memory/`` with its provenance (:mod:`bench.provenance`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.ingest import PARTITIONS, fill_topic
from bench.provenance import provenance, write_result
from runtime.config import Config
from runtime.processes import free_port, start_broker, start_worker, stop
from store.db import make_engine, migrate
from store.replay import ReplayStore


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of ``pid`` in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--policy", default="reservoir", choices=["reservoir", "frequency", "recency"])
    parser.add_argument("--capacity", type=int, default=20_000)
    parser.add_argument("--window-events", type=int, default=10_000)
    parser.add_argument("--database-url", default=None, help="store for the worker (default: a fresh SQLite file)")
    args = parser.parse_args()
    stamp = provenance()
    tmp = Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
    database_url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    port = free_port()
    broker = start_broker(port, log=tmp / "broker.log")
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    env = {"STREAMREC_KAFKA_URL": f"kafka://127.0.0.1:{port}", "STREAMREC_DATABASE_URL": database_url,
           "STREAMREC_TOPIC_PREFIX": prefix, "STREAMREC_APP_ID": f"bench-{uuid.uuid4().hex[:6]}",
           "STREAMREC_WEB_PORT": str(free_port()), "STREAMREC_SESSION_TIMEOUT_S": "6",
           "STREAMREC_LOG_LEVEL": "warn", "STREAMREC_TOPIC_PARTITIONS": str(PARTITIONS),
           "STREAMREC_WINDOW_MAX_EVENTS": str(args.window_events), "STREAMREC_WINDOW_MAX_AGE_S": "5",
           "STREAMREC_REHEARSAL_POLICY": args.policy, "STREAMREC_REHEARSAL_CAPACITY": str(args.capacity)}
    worker = None
    try:
        print(f"Producing {args.events:,} events...", file=sys.stderr)
        fill_topic(f"127.0.0.1:{port}", Config.from_env(env).events_topic, args.events)
        engine = make_engine(database_url)
        migrate(engine)
        worker = start_worker(env, log=tmp / "worker.log")
        store = ReplayStore(engine)
        samples = []  # (seconds, events stored, rss MiB)
        started = time.monotonic()
        while True:
            if worker.poll() is not None:
                sys.exit(f"worker exited; see {tmp / 'worker.log'}")
            stored = store.stored_events()
            samples.append((time.monotonic() - started, stored, rss_mib(worker.pid)[0]))
            if stored >= args.events and store.open_window()[0] == 0:
                break
            time.sleep(0.5)
        peak = rss_mib(worker.pid)[1]
        windows = store.list_windows()
        (memory,) = store.memory_rows()
    finally:
        if worker is not None:
            stop(worker)
        stop(broker)

    print(f"\n{args.events:,} events, {len(windows)} windows of up to {args.window_events:,}, "
          f"{args.policy} memory {memory['n_events']:,}/{args.capacity:,} (seen {memory['n_seen']:,}), "
          f"store {database_url.split(':', 1)[0]}\n")
    print("| events stored | seconds | worker RSS MiB |\n|---:|---:|---:|")
    tenths = [next(s for s in samples if s[1] >= args.events * tenth / 10) for tenth in range(1, 11)]
    for at in tenths:
        print(f"| {at[1]:,} | {at[0]:.1f} | {at[2]:.0f} |")
    full = next(s for s in samples if s[1] >= args.capacity)
    print(f"\npeak RSS {peak:.0f} MiB; after the memory filled ({full[1]:,} events): "
          f"{full[2]:.0f} MiB -> {samples[-1][2]:.0f} MiB at the end")
    print(f"{os.cpu_count()} CPUs, {sys.platform}, Python {sys.version.split()[0]}")
    result = {"store": database_url.split(":", 1)[0], "windows": len(windows), "memory_events": memory["n_events"],
              "memory_seen": memory["n_seen"], "peak_rss_mib": round(peak),
              "rss_when_memory_full_mib": round(full[2]), "events_when_memory_full": full[1],
              "rss_at_end_mib": round(samples[-1][2]),
              "tenths": [{"events": at[1], "seconds": round(at[0], 1), "rss_mib": round(at[2])} for at in tenths]}
    settings = {**vars(args), "database_url": result["store"]}
    print(f"written to {write_result('replay_memory', settings, result, started=stamp)}")


if __name__ == "__main__":
    main()

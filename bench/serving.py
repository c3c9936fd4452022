"""Serving latency benchmark: a worker answering ``GET /recommend`` at a fixed request rate.

    python -m bench.serving [--rate 100] [--seconds 60] [--items 10000] [--out TABLE.md]
    python -m bench.serving --compare-served-log [--rate 100] [--seconds 120]

Sets up a real worker on embedded defaults (bundled broker, SQLite in a temporary folder):
a catalog of ``--items`` products (the 1,682 MovieLens-100k movies plus generated products),
MovieLens events for every user's history, and a model version trained on them (one epoch;
quality does not matter here, size does). Windows never seal during the run, so no training
competes with serving. Then an open-loop generator on the same machine sends requests on a
fixed schedule (``--rate`` per second, bounded to 256 in flight) for users drawn at random,
and latency is measured from each request's scheduled start, so a stall is not hidden.
Search queries are all distinct, so each one is encoded by MiniLM (the worker caches repeats).
With ``--compare-served-log`` a second worker on the same store does not log served lists
(``STREAMREC_SERVED_LOG=false``), and the two answer ``/recommend`` at the same rate in
alternating rounds: what logging costs at the tail. Prints p50/p95/p99/max latency and the
error count per endpoint, and writes the run to
``bench/results/serving/`` with its provenance (:mod:`bench.provenance`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import pandas as pd
import torch

from bench.provenance import provenance, write_result
from learner.bundle import ModelBundle
from learner.finetune import FineTuneConfig, fine_tune
from learner.model import ModelConfig
from learner.text import TextEncoder
from learner.trainer import TrainConfig
from runtime.config import Config
from runtime.processes import free_port, start_broker, start_worker, stop, wait_for_port
from store.db import make_engine, migrate
from store.registry import StoredTextEmbeddings, now_ms
from streams import movielens
from streams.producer import StorefrontProducer
from training.versions import publish

ADJECTIVES = ["organic", "wireless", "vintage", "compact", "heavy-duty", "waterproof", "handmade", "smart",
              "ergonomic", "portable", "stainless", "bamboo", "leather", "ceramic", "solar", "foldable"]
PRODUCTS = ["coffee grinder", "desk lamp", "hiking backpack", "yoga mat", "bluetooth speaker", "chef knife",
            "garden hose", "phone case", "running shoes", "tea kettle", "wall clock", "board game", "notebook",
            "water bottle", "office chair", "rain jacket", "cutting board", "headphones", "plant pot", "bike light"]
CATEGORIES = ["Kitchen", "Outdoors", "Electronics", "Home", "Sports", "Office", "Garden", "Toys"]


def catalog_of(size: int) -> list[dict]:
    """The MovieLens movies plus generated products, ``size`` items in all."""
    catalog = movielens.to_catalog(movielens.load_movies())
    rnd = random.Random(0)
    for i in range(size - len(catalog)):
        product = f"{rnd.choice(ADJECTIVES)} {rnd.choice(PRODUCTS)}"
        catalog.append({"item_id": f"p{i}", "title": f"{product.title()} #{i}", "category": rnd.choice(CATEGORIES),
                        "description": f"A {product} for everyday use.", "storefront": "movielens"})
    return catalog


def publish_model(database_url: str, catalog: list[dict], events: list[dict]) -> int:
    engine = make_engine(database_url)
    migrate(engine)
    cache = StoredTextEmbeddings(engine)
    started = time.perf_counter()
    frame = pd.DataFrame(events[:20_000])
    base = ModelBundle.build(ModelConfig(), catalog=pd.DataFrame(catalog), events=frame, encoder=TextEncoder(),
                             cache=cache)
    cache.save()
    bundle, _ = fine_tune(base, frame, config=FineTuneConfig(train=TrainConfig(epochs=1, batch_size=256)))
    version = publish(engine, bundle, "benchmark model")
    engine.dispose()
    print(f"model version {version}: {len(bundle.vocab.items) - 2} items, trained in "
          f"{time.perf_counter() - started:.0f}s", flush=True)
    return version


async def drive(base: str, paths: list[str], rate: float, seconds: float, limit: int = 256, keep: bool = False) -> dict:
    """Open-loop load: request i is due at start + i / rate; latency counts from when it was due."""
    latencies, errors, in_flight = [], 0, asyncio.Semaphore(limit)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit)) as session:
        async def one(path: str, due: float) -> None:
            nonlocal errors
            try:
                async with in_flight, session.get(base + path, timeout=aiohttp.ClientTimeout(total=10)) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                errors += 1
            latencies.append(time.perf_counter() - due)

        start, tasks = time.perf_counter() + 0.1, []
        for i in range(int(rate * seconds)):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(paths[i % len(paths)], due)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"requests": len(ms), "rate": len(ms) / elapsed, "errors": errors,
            **{name: float(np.percentile(ms, q)) for name, q in (("p50", 50), ("p95", 95), ("p99", 99))},
            "max": float(ms.max()), **({"latencies_ms": ms} if keep else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--compare-served-log", action="store_true",
                        help="Instead: /recommend p99 of a worker logging served lists against one that does not "
                             "(STREAMREC_SERVED_LOG=false), both on the same store, driven in alternating rounds.")
    parser.add_argument("--out", type=Path, default=None,
                        help="Also write the table (markdown) here; an existing file is never replaced.")
    args = parser.parse_args()
    stamp = provenance()

    workdir = Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
    database_url = f"sqlite:///{workdir / 'streamrec.db'}"
    catalog = catalog_of(args.items)
    events = movielens.to_events(movielens.load_ratings(), now_ms())
    publish_model(database_url, catalog, events)

    port = free_port()
    broker = start_broker(port, log=workdir / "broker.log")
    env = {**os.environ, "STREAMREC_KAFKA_URL": f"kafka://127.0.0.1:{port}", "STREAMREC_DATABASE_URL": database_url,
           "STREAMREC_WEB_PORT": str(free_port()), "STREAMREC_WINDOW_MAX_EVENTS": "10000000",
           "STREAMREC_WINDOW_MAX_AGE_S": "86400", "STREAMREC_LOG_LEVEL": "warn"}
    config = Config.from_env(env)
    worker = start_worker(env, log=workdir / "worker.log")
    quiet = None
    try:
        wait_for_port(config.web_port, timeout_s=180, proc=worker)
        with StorefrontProducer.from_config(config) as producer:
            assert producer.send_catalog(catalog).ok
            assert producer.send_events(events).ok
        base = f"http://127.0.0.1:{config.web_port}"
        users = sorted({e["user_id"] for e in events})
        asyncio.run(_wait_until_served(base, users[-1], args.items))
        rnd = random.Random(1)
        rows = {}
        if args.compare_served_log:
            quiet_env = {**env, "STREAMREC_WEB_PORT": str(free_port()), "STREAMREC_SERVED_LOG": "false"}
            quiet = start_worker(quiet_env, log=workdir / "worker-quiet.log")
            wait_for_port(int(quiet_env["STREAMREC_WEB_PORT"]), timeout_s=180, proc=quiet)
            quiet_base = f"http://127.0.0.1:{quiet_env['STREAMREC_WEB_PORT']}"
            asyncio.run(_wait_until_served(quiet_base, users[-1], args.items))
            paths = [f"/recommend/{rnd.choice(users)}?k=20" for _ in range(1000)]
            rows = compare_served_log(base, quiet_base, paths, args.rate, args.seconds)
        for name, paths in [] if args.compare_served_log else [
            ("/recommend/{user}?k=20", [f"/recommend/{rnd.choice(users)}?k=20" for _ in range(1000)]),
            ("/similar/{item}?k=20", [f"/similar/{rnd.choice(catalog)['item_id']}?k=20" for _ in range(1000)]),
            ("/search?q=...&k=20 (every query new)", [
                f"/search?q={rnd.choice(ADJECTIVES)}+{rnd.choice(PRODUCTS).replace(' ', '+')}+{i}&k=20"
                for i in range(100_000)]),
        ]:
            seconds = args.seconds if name.startswith("/recommend") else min(args.seconds, 20)
            rows[name] = asyncio.run(drive(base, paths, args.rate, seconds))
            print(f"{name}: {rows[name]}", flush=True)
    finally:
        stop(worker)
        if quiet is not None:
            stop(quiet)
        stop(broker)
    table = render(rows, args)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("x") as out:  # never replace an earlier run's table
            out.write(table + "\n")
    settings = {**vars(args), "out": str(args.out) if args.out else None}
    result = {"rows": [{"endpoint": name, **measured} for name, measured in rows.items()]}
    print(f"written to {write_result('serving', settings, result, started=stamp)}")


def compare_served_log(logging: str, quiet: str, paths: list[str], rate: float, seconds: float,
                       rounds: int = 6) -> dict:
    """``/recommend`` latency of the worker at ``logging`` (served lists logged) and at ``quiet``
    (not logged), at the same rate, in alternating rounds so that a slower minute of the machine
    falls on both; each row pools its rounds' latencies."""
    names = {logging: "/recommend/{user}?k=20, served lists logged", quiet: "/recommend/{user}?k=20, not logged"}
    pooled = {name: [] for name in names.values()}
    for r in range(rounds):
        for base in (logging, quiet) if r % 2 == 0 else (quiet, logging):
            pooled[names[base]].append(asyncio.run(drive(base, paths, rate, seconds / rounds, keep=True)))
    rows = {}
    for name, runs in pooled.items():
        ms = np.concatenate([run.pop("latencies_ms") for run in runs])
        rows[name] = {"requests": len(ms), "rate": float(np.mean([run["rate"] for run in runs])),
                      "errors": sum(run["errors"] for run in runs),
                      **{k: float(np.percentile(ms, q)) for k, q in (("p50", 50), ("p95", 95), ("p99", 99))},
                      "max": float(ms.max())}
    on, off = rows.values()
    print(f"p99 with served-list logging / without: {on['p99'] / off['p99']:.3f}", flush=True)
    return rows


async def _wait_until_served(base: str, user: str, items: int, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{base}/models") as r:
                    loaded = (await r.json())["loaded"]
                async with session.get(f"{base}/recommend/{user}") as r:
                    source = (await r.json()).get("source")
                compiled = loaded.get("onnx") in (None, {"user_state": True, "queries": True})  # None: no exports
                if loaded["items"] >= items and source == "model" and compiled:
                    return
            except (aiohttp.ClientError, KeyError):
                pass
            await asyncio.sleep(1)
    raise RuntimeError("the worker did not start serving in time")


def render(rows: dict, args) -> str:
    cpu = f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), torch {torch.__version__}, CPU"
    lines = [f"Serving latency, {args.items:,} catalog items, {args.rate:.0f} requests/s open loop, "
             f"generator on the same machine; {cpu}", "",
             "| endpoint | requests | achieved rate/s | p50 ms | p95 ms | p99 ms | max ms | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| `{name}` | {r['requests']} | {r['rate']:.1f} | {r['p50']:.2f} | {r['p95']:.2f} | "
                     f"{r['p99']:.2f} | {r['max']:.1f} | {r['errors']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

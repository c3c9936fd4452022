"""Simulated shoppers against a real worker: served lists, attributed feedback, online metrics.

    python -m bench.online [--shoppers 600] [--rate 40]

Sets up a worker on embedded defaults (bundled broker, SQLite in a temporary folder) serving a
model trained on MovieLens-100k without each user's last event, which is held back. Shoppers
are users: each asks ``/recommend`` (k=20), clicks when the list holds their held-back item,
sending the answer's ``request_id`` and position (every other shopper sends none and is
attributed by user, item and time), and buys it with an order value when their next event is a
purchase. Then the online metrics the worker computed are compared with a direct count over
what the shoppers did, and the served-list log's cost is shown as lists served, stored and lost.
Writes ``bench/results/online/<run>.json`` with provenance and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.provenance import provenance, write_result
from bench.serving import _wait_until_served, publish_model
from runtime.config import Config
from runtime.processes import free_port, start_broker, start_worker, stop, wait_for_port
from store.db import make_engine
from store.ingest import stored_offsets
from store.online import read_online_metrics, served_count
from store.registry import now_ms
from streams import movielens
from streams.producer import StorefrontProducer


async def shop(base: str, shoppers: list[tuple[str, dict]], rate: float) -> list[tuple[str, dict, dict]]:
    """Each shopper's ``/recommend`` answer, requests sent at ``rate`` per second."""
    async with aiohttp.ClientSession() as session:
        async def one(user: str, next_event: dict, due: float):
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            async with session.get(f"{base}/recommend/{user}?k=20&session_id=s-{user}") as response:
                return user, next_event, await response.json()

        start = time.perf_counter()
        return await asyncio.gather(*(one(u, e, start + i / rate) for i, (u, e) in enumerate(shoppers)))


def feedback_of(answers: list[tuple[str, dict, dict]]) -> tuple[list[dict], dict]:
    """The events shoppers send back, and the direct count of what they did."""
    events, clicked_lists, inferred, purchases, revenue = [], 0, 0, 0, 0.0
    for n, (user, next_event, answer) in enumerate(answers):
        items = [i["item_id"] for i in answer["items"]]
        if next_event["item_id"] not in items:
            continue
        direct = n % 2 == 0
        extra = {"request_id": answer["request_id"], "position": items.index(next_event["item_id"]) + 1} \
            if direct else {}
        base = {"user_id": user, "item_id": next_event["item_id"], "storefront": "movielens", "ts": now_ms(), **extra}
        events.append({**base, "event_id": f"sim-{user}-click", "type": "click"})
        clicked_lists += 1
        inferred += not direct
        if next_event["type"] == "purchase":
            events.append({**base, "event_id": f"sim-{user}-buy", "type": "purchase", "value": 10.0 + n % 7})
            purchases += 1
            inferred += not direct
            revenue += 10.0 + n % 7
    return events, {"lists": len(answers), "clicked_lists": clicked_lists, "purchases": purchases,
                    "inferred_events": inferred, "revenue": revenue}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shoppers", type=int, default=600)
    parser.add_argument("--rate", type=float, default=40.0, help="/recommend requests per second")
    args = parser.parse_args()
    stamp = provenance()

    workdir = Path(tempfile.mkdtemp(prefix="streamrec-online-"))
    database_url = f"sqlite:///{workdir / 'streamrec.db'}"
    log = movielens.to_events(movielens.load_ratings(), now_ms() - 86_400_000)
    next_event = {e["user_id"]: e for e in log}  # each user's last event
    held = {id(e) for e in next_event.values()}
    past = [e for e in log if id(e) not in held]
    catalog = movielens.to_catalog(movielens.load_movies())
    publish_model(database_url, catalog, past)
    shoppers = sorted(next_event.items())[:args.shoppers]

    port = free_port()
    broker = start_broker(port, log=workdir / "broker.log")
    env = {**os.environ, "STREAMREC_KAFKA_URL": f"kafka://127.0.0.1:{port}", "STREAMREC_DATABASE_URL": database_url,
           "STREAMREC_WEB_PORT": str(free_port()), "STREAMREC_WINDOW_MAX_EVENTS": "10000000",
           "STREAMREC_WINDOW_MAX_AGE_S": "86400", "STREAMREC_LOG_LEVEL": "warn", "STREAMREC_WORKER_TRAINS": "false",
           "STREAMREC_ONLINE_METRICS_S": "2"}
    config = Config.from_env(env)
    worker = start_worker(env, log=workdir / "worker.log")
    engine = make_engine(database_url)
    try:
        wait_for_port(config.web_port, timeout_s=180, proc=worker)
        with StorefrontProducer.from_config(config) as producer:
            assert producer.send_catalog(catalog).ok
            assert producer.send_events(past).ok
        base = f"http://127.0.0.1:{config.web_port}"
        asyncio.run(_wait_until_served(base, shoppers[0][0], len(catalog)))
        started = time.perf_counter()
        answers = asyncio.run(shop(base, shoppers, args.rate))
        serve_s = time.perf_counter() - started
        events, direct = feedback_of(answers)
        with StorefrontProducer.from_config(config) as producer:
            assert producer.send_events(events).ok
        ids = [a["request_id"] for _, _, a in answers]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = [r for r in read_online_metrics(engine) if r["surface"] == "recommend"]
            stored = served_count(engine, ids)
            if stored == len(ids) and sum(r["clicked_lists"] for r in rows) == direct["clicked_lists"] \
                    and sum(r["purchases"] for r in rows) == direct["purchases"]:
                break
            time.sleep(1)
        offsets = stored_offsets(engine, config.ingest_group)
    finally:
        stop(worker)
        stop(broker)
    measured = {k: sum(r[k] for r in rows) for k in ("lists", "clicked_lists", "purchases", "inferred_events",
                                                     "revenue")}
    metrics = max((r for r in rows if r["source"] == "model"), key=lambda r: r["lists"])["metrics"]
    agree = all(measured[k] == direct[k] for k in ("clicked_lists", "purchases", "inferred_events", "revenue"))
    result = {"direct_count": direct, "online_metrics": measured, "agree": agree,  # lists: also the warm-up's
              "ctr": direct["clicked_lists"] / max(1, direct["lists"]), "coverage": metrics.get("coverage"),
              "diversity": metrics.get("diversity"), "novelty": metrics.get("novelty"),
              "click_positions": metrics.get("click_positions"), "served_lists_stored": stored,
              "served_topic_partitions_stored": sum(1 for (t, _) in offsets if t == config.served_topic),
              "requests_per_s": len(answers) / serve_s}
    path = write_result("online", vars(args), result, started=stamp)
    print(f"| | lists | clicked lists | purchases | inferred | revenue |\n|---|---:|---:|---:|---:|---:|\n"
          f"| shoppers did (direct count) | {direct['lists']} | {direct['clicked_lists']} | {direct['purchases']} | "
          f"{direct['inferred_events']} | {direct['revenue']:.2f} |\n"
          f"| online_metrics | {measured['lists']} | {measured['clicked_lists']} | {measured['purchases']} | "
          f"{measured['inferred_events']} | {measured['revenue']:.2f} |\n\n"
          f"CTR {result['ctr']:.4f}, coverage {result['coverage']}, diversity {result['diversity']}, novelty "
          f"{result['novelty']}; {stored} of {len(ids)} served lists stored; {result['requests_per_s']:.1f} "
          f"requests/s. Results: {path}")


if __name__ == "__main__":
    main()

"""Served lists, attributed feedback and online metrics, on real parts (worker, broker, Postgres).

Simulated shoppers whose history is the first part of MovieLens-100k ask the worker for
recommendations; each then draws their next item from the held-back rest of the log and clicks
when the list holds it, half of them sending the answer's ``request_id`` and position, half
not (attributed by user, item and time). The worker is SIGKILLed once every list is on the
served topic; a new worker stores each list exactly once. The online metrics then equal a
direct count over what the shoppers did.
"""

from __future__ import annotations

from collections import Counter

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from store.db import make_engine
from store.models import attributed_events, served_lists, shown_positions
from store.online import read_online_metrics, served_count
from store.registry import now_ms
from store.replay import ReplayStore
from streamrec.cli import main
from streams import movielens
from streams.producer import StorefrontProducer
from tests.api import Client
from tests.harness import Worker, end_offsets, wait_ingested, wait_until, worker_env

pytestmark = pytest.mark.broker


def click(user: str, item: str, n: int, **feedback) -> dict:
    return {"event_id": f"shop-{user}-{n}", "type": feedback.pop("type", "click"), "user_id": user, "item_id": item,
            "storefront": "movielens", "ts": now_ms(), **feedback}


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_served_lists_attribution_and_online_metrics(broker, database_url, topic_prefix, tmp_path):
    engine = make_engine(database_url)
    log = movielens.to_events(movielens.load_ratings(), now_ms() - 86_400_000)
    past, held_back = log[:3_000], log[3_000:]
    known = {e["user_id"] for e in past}
    next_item = {}
    for e in held_back:
        if e["user_id"] in known:
            next_item.setdefault(e["user_id"], e["item_id"])
    shoppers = sorted(next_item)[:40]
    env = worker_env(broker, database_url, topic_prefix, STREAMREC_WORKER_TRAINS="false",
                     STREAMREC_SERVING_POLL_S="0.5", STREAMREC_WINDOW_MAX_EVENTS="1000",
                     STREAMREC_WINDOW_MAX_AGE_S="3600", STREAMREC_ONLINE_METRICS_S="1")
    worker = Worker(env, tmp_path / "worker.log")
    try:
        worker.wait_ready(120)
        api = Client(worker.config.web_port)
        with StorefrontProducer.from_config(worker.config) as producer:
            assert producer.send_catalog(movielens.to_catalog(movielens.load_movies())).ok
            assert producer.send_events(past).ok
        wait_until(lambda: len(ReplayStore(engine).list_windows()) >= 3, 120, f"windows seal\n{worker.tail()}")
        sealed = max(w["id"] for w in ReplayStore(engine).list_windows())
        wait_until(lambda: api.get("/health")[1]["serving"]["last_window_read"] >= sealed, 30,
                   "serving has read every sealed window (histories and trending)")
        warm_up = []  # every list answered is logged, also those of polling

        def trending_known() -> bool:
            status, answer = api.get("/recommend/nobody-yet?storefront=movielens")
            if status == 200:
                warm_up.append(answer)
            return status == 200 and bool(answer["items"])

        wait_until(trending_known, 30, "trending items are known")

        served = {}
        for user in shoppers:
            status, answer = api.get(f"/recommend/{user}?k=20&session_id=s-{user}")
            assert status == 200 and len(answer["request_id"]) == 32
            served[user] = answer
        status, search = api.get(f"/search?q=star+wars&user_id={shoppers[0]}&k=5")
        assert status == 200 and search["request_id"] not in {a["request_id"] for a in served.values()}
        n_lists = len(served) + 1 + len(warm_up)
        wait_until(lambda: sum(end_offsets(worker.config.bootstrap_servers, worker.config.served_topic).values())
                   >= n_lists, 30, "every list is on the served topic")
        worker.proc.kill()  # SIGKILL: the lists may be stored, partly stored or not at all
        worker.proc.wait(30)

        worker = Worker(env, tmp_path / "worker2.log")
        worker.wait_ready(120)
        api = Client(worker.config.web_port)
        wait_ingested(worker.config, engine, 120, worker.tail, topic=worker.config.served_topic)
        ids = [a["request_id"] for a in [*served.values(), search, *warm_up]]
        assert served_count(engine) == n_lists and served_count(engine, ids) == n_lists  # each once
        with engine.connect() as conn:
            row = conn.execute(select(served_lists).where(served_lists.c.request_id == served[shoppers[0]]
                                                          ["request_id"])).mappings().one()
        assert (row["surface"], row["source"], row["user_id"], row["session_id"]) == (
            "recommend", "trending", shoppers[0], f"s-{shoppers[0]}")
        assert row["items"] == [i["item_id"] for i in served[shoppers[0]]["items"]]

        # shoppers act: a click when the list holds their next item, with the request id or without
        feedback, clicked = [], Counter()
        for n, user in enumerate(shoppers):
            items = [i["item_id"] for i in served[user]["items"]]
            if next_item[user] in items:
                direct = n % 2 == 0
                extra = {"request_id": served[user]["request_id"], "position": items.index(next_item[user]) + 1}
                feedback.append(click(user, next_item[user], 0, **(extra if direct else {})))
                clicked[served[user]["request_id"]] += 1
        a, b, c = shoppers[:3]  # scripted: a repeat click and a purchase on one list, an unrelated click
        first = served[a]["items"][2]["item_id"]
        feedback += [click(a, first, 1, request_id=served[a]["request_id"], position=3),
                     click(a, first, 2, request_id=served[a]["request_id"], position=3),
                     click(a, first, 3, type="purchase", request_id=served[a]["request_id"], value=12.5),
                     click(b, served[b]["items"][0]["item_id"], 4),
                     click(c, "item-never-served", 5)]
        clicked[served[a]["request_id"]] += 2
        clicked[served[b]["request_id"]] += 1
        with StorefrontProducer.from_config(worker.config) as producer:
            assert producer.send_events(feedback).ok
            assert producer.send_shown([{"request_id": search["request_id"], "shown": [2, 1]}]).ok  # a page of two
        wait_ingested(worker.config, engine, 60)
        wait_ingested(worker.config, engine, 60, topic=worker.config.served_topic)
        with engine.connect() as conn:
            assert conn.execute(select(shown_positions.c.shown).where(
                shown_positions.c.request_id == search["request_id"])).scalar_one() == [1, 2]

        with engine.connect() as conn:
            attributed = {r["event_id"]: r for r in conn.execute(select(attributed_events)).mappings()}
        assert f"shop-{c}-5" not in attributed  # never shown to them: not attributed
        assert attributed[f"shop-{b}-4"]["inferred"] and attributed[f"shop-{b}-4"]["position"] == 1
        assert attributed[f"shop-{b}-4"]["request_id"] == served[b]["request_id"]
        assert not attributed[f"shop-{a}-3"]["inferred"] and attributed[f"shop-{a}-3"]["value"] == 12.5
        for event in feedback[:-5]:
            row = attributed[event["event_id"]]
            assert row["inferred"] == ("request_id" not in event)
            assert row["request_id"] == served[event["user_id"]]["request_id"]
            assert row["position"] == [i["item_id"] for i in served[event["user_id"]]["items"]].index(
                event["item_id"]) + 1

        def recommend_metrics():
            rows = [r for r in read_online_metrics(engine) if r["surface"] == "recommend"]
            return rows if sum(r["clicks"] for r in rows) == sum(clicked.values()) else None

        rows = wait_until(recommend_metrics, 30, f"online metrics count every click\n{worker.tail()}")
        assert sum(r["lists"] for r in rows) == len(served) + len(warm_up)
        assert sum(r["users"] for r in rows) == len(served) + 1
        total = {k: sum(r[k] for r in rows) for k in ("clicked_lists", "purchases", "revenue", "converted_users",
                                                       "inferred_events")}
        assert {(r["storefront"], r["source"], r["model_version"]) for r in rows} == {("movielens", "trending", 0)}
        assert total == {"clicked_lists": len(clicked),  # repeat clicks on one list count once
                         "purchases": 1, "revenue": 12.5, "converted_users": 1,
                         "inferred_events": sum(1 for e in feedback[:-1] if "request_id" not in e)}
        for row in rows:  # one row, or two when the lists straddle an hour
            assert row["metrics"]["ctr"] == pytest.approx(row["clicked_lists"] / row["lists"])
            assert sum(row["metrics"]["click_positions"].values()) == row["clicks"]
            assert 0 < row["metrics"]["coverage"] <= 1 and row["metrics"]["novelty"] > 0
        row = rows[0]
        print(f"\n{len(served)} shoppers, {len(clicked)} lists clicked, CTR {row['metrics']['ctr']:.3f}, "
              f"{total['inferred_events']} inferred, positions {row['metrics']['click_positions']}")
        status, exposition = api.get("/metrics")
        assert status == 200 and 'streamrec_served_lists_total{outcome="sent"}' in exposition
        ctr = next(line for line in exposition.splitlines() if line.startswith("streamrec_online_ctr{"))
        assert 'surface="recommend"' in ctr and float(ctr.split()[-1]) == pytest.approx(row["metrics"]["ctr"])
        shown = CliRunner().invoke(main, ["online", "--surface", "recommend"],
                                   env={"STREAMREC_DATABASE_URL": database_url})
        assert shown.exit_code == 0, shown.output
        assert "trending" in shown.output and f"{row['metrics']['ctr']:.4f}" in shown.output
    finally:
        worker.stop()

"""Answers while no model version serves, on real parts (worker subprocess, broker, Postgres, MiniLM).

A worker that has a catalog and a history but no promoted version (its own trainer is off,
as when the gate keeps rejecting candidates) answers every shopper: ``/recommend`` from the
storefront's trending items (purchases left out), ``/similar`` and ``/search`` by the
pretrained text encoder. Once a version is published, the same calls answer from it without a
restart; and a catalog item that arrives then, with no interaction at all, reaches the top 20
of a shopper whose recent items its text matches, and not of one with unrelated history.
Throughout, from start-up on, a seeded fuzz of every GET operation of ``streams/openapi.yaml``
must meet only documented statuses and shapes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from urllib.parse import quote

import pandas as pd
import pytest

from learner.bundle import ModelBundle
from learner.finetune import FineTuneConfig, fine_tune, score_spread
from learner.model import ModelConfig
from learner.trainer import TrainConfig
from store.db import make_engine
from store.registry import StoredTextEmbeddings, now_ms
from store.replay import ReplayStore
from streams import movielens
from streams.producer import StorefrontProducer
from tests.api import Client, check_shape, fuzzed_gets
from tests.harness import Worker, store_text_vectors, wait_until, worker_env
from training.versions import publish

pytestmark = pytest.mark.broker


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_worker_without_a_version_answers_by_trending_and_text_then_by_the_model(
        broker, database_url, topic_prefix, tmp_path, movielens_text_vectors):
    store_text_vectors(database_url, movielens_text_vectors)
    engine = make_engine(database_url)
    events = movielens.to_events(movielens.load_ratings(), now_ms())[:3_000]
    catalog = movielens.to_catalog(movielens.load_movies())
    seen = {e["item_id"] for e in events}
    cold_item = next(c for c in catalog if c["item_id"] not in seen)
    buyer = Counter(e["user_id"] for e in events if e["type"] == "purchase").most_common(1)[0][0]
    bought = {e["item_id"] for e in events if e["user_id"] == buyer and e["type"] == "purchase"}
    known = {"user_id": [buyer, "nobody-yet"], "item_id": [cold_item["item_id"], events[0]["item_id"], "no-such"],
             "storefront": ["movielens"], "q": ["star wars", "romantic comedy"]}
    statuses = Counter()

    def fuzz(api: Client, seed: int, n: int = 60) -> None:
        for path in fuzzed_gets(seed, n, known):
            statuses[api.get(path)[0]] += 1  # Client.get fails on an undocumented status or shape

    env = worker_env(broker, database_url, topic_prefix, STREAMREC_WORKER_TRAINS="false",
                     STREAMREC_SERVING_POLL_S="0.5", STREAMREC_WINDOW_MAX_EVENTS="1000",
                     STREAMREC_WINDOW_MAX_AGE_S="3600")
    worker = Worker(env, tmp_path / "worker.log")
    try:
        api = Client(worker.config.web_port)
        wait_until(lambda: worker.health() is not None, 90, f"the worker's web server starts\n{worker.tail()}")
        fuzz(api, seed=1)  # start-up: the store may not be read yet
        worker.wait_ready(120)
        with StorefrontProducer.from_config(worker.config) as producer:
            assert producer.send_catalog(catalog).ok
            assert producer.send_events(events).ok
        wait_until(lambda: len(ReplayStore(engine).list_windows()) >= 3, 120, f"three windows seal\n{worker.tail()}")
        models = wait_until(lambda: (m := api.get("/models")[1])["loaded"]["items"] >= len(catalog) and m, 60,
                            f"the worker ranks the catalog by text\n{worker.tail()}")
        check_shape(models, "Models")
        assert models["serving"] is None and models["loaded"]["source"] == "text" and models["loaded"]["loaded_at"]

        # a returning shopper: the storefront's trending items, what they bought left out
        status, answer = wait_until(lambda: (r := api.get(f"/recommend/{buyer}?k=50"))[1]["items"] and r, 30,
                                    f"sealed windows reach the trending items\n{worker.tail()}")
        assert status == 200 and answer["source"] == "trending" and answer["model_version"] is None
        assert len(answer["items"]) == 50 and not bought & {i["item_id"] for i in answer["items"]}
        scores = [i["score"] for i in answer["items"]]
        assert scores == sorted(scores, reverse=True) and all(i["title"] for i in answer["items"])
        with_bought = {i["item_id"] for i in api.get(f"/recommend/{buyer}?k=200&include_purchased=true")[1]["items"]}
        assert bought & with_bought
        in_cart = [i["item_id"] for i in answer["items"][:2]]  # `exclude`: e.g. what is in the cart
        status, answer = api.get(f"/recommend/{buyer}?k=50&exclude={in_cart[0]}&exclude={in_cart[1]}")
        assert status == 200 and not set(in_cart) & {i["item_id"] for i in answer["items"]}
        status, answer = api.get("/recommend/x?" + "&".join(f"exclude=i{n}" for n in range(501)))
        assert status == 400 and answer["parameter"] == "exclude", answer

        # similar items and search by the pretrained text encoder, also for an item nobody touched
        status, answer = api.get(f"/similar/{cold_item['item_id']}?k=5")
        assert status == 200 and answer["source"] == "text" and answer["model_version"] is None
        assert len(answer["items"]) == 5 and cold_item["item_id"] not in {i["item_id"] for i in answer["items"]}
        status, answer = api.get("/search?q=star%20wars&k=5")
        assert status == 200 and answer["source"] == "text" and not answer["personalised"]
        assert any("Star Wars" in i["title"] for i in answer["items"]), answer
        first = answer["items"][0]["item_id"]
        assert first not in {i["item_id"] for i in api.get(f"/search?q=star%20wars&k=5&exclude={first}")[1]["items"]}
        status, answer = api.get(f"/search?q={quote(cold_item['title'])}&k=1&user_id={buyer}")
        assert status == 200 and answer["items"][0]["item_id"] == cold_item["item_id"] and not answer["personalised"]
        fuzz(api, seed=2)

        # a version is published: the same calls answer from it, without a restart
        frame, catalog_frame = pd.DataFrame(events), pd.DataFrame(catalog)
        cache = StoredTextEmbeddings(engine)
        base = ModelBundle.build(ModelConfig(dim=32), catalog=catalog_frame, events=frame, cache=cache, seed=0)
        trained, _ = fine_tune(base, frame, config=FineTuneConfig(train=TrainConfig(epochs=2, batch_size=256, lr=3e-3)))
        assert trained.text_blend.weight > 0  # fitted on 300 held-out events, where one lost hit is 3%, so small;
        # served with 8 sd, a weight within the grid a lineage's evidence chooses from, to test serving's path
        spread = score_spread(trained, frame.iloc[-300:], frame.iloc[:-300])
        trained.info["text_blend"] = replace(trained.text_blend, weight=8 * spread).to_dict()
        version = publish(engine, trained, "published by the test")
        wait_until(lambda: api.get("/models")[1]["loaded"]["version"] == version, 60,
                   f"the worker swaps the version in\n{worker.tail()}")
        status, answer = api.get(f"/recommend/{buyer}?k=20")
        assert status == 200 and answer["source"] == "model" and answer["model_version"] == version
        assert not bought & {i["item_id"] for i in answer["items"]}
        for path in (f"/similar/{cold_item['item_id']}?k=5", "/search?q=star%20wars&k=5"):
            status, answer = api.get(path)
            assert status == 200 and answer["source"] == "model" and answer["model_version"] == version, answer
        first = answer["items"][0]["item_id"]
        assert first not in {i["item_id"] for i in api.get(f"/search?q=star%20wars&k=5&exclude={first}")[1]["items"]}
        shown = [i["item_id"] for i in api.get(f"/recommend/{buyer}?k=5")[1]["items"]]
        assert not set(shown) & {i["item_id"] for i in api.get(
            f"/recommend/{buyer}?k=5&" + "&".join(f"exclude={item}" for item in shown))[1]["items"]}
        assert api.get("/models")[1]["loaded"]["source"] == "model"
        fuzz(api, seed=3)

        # a new product, never clicked, reaches the shoppers whose recent items its text matches
        new_item = {"item_id": "m-new-sequel", "title": "Amityville: The Return (2031)", "category": "Horror",
                    "storefront": "movielens", "description": "Amityville: The Return (2031) is a 2031 film. "
                                                              "Genres: Horror."}
        tastes = {"horror-fan": ["m441", "m440", "m438", "m439"],  # the Amityville films
                  "romcom-fan": ["m88", "m216", "m739", "m70", "m66"]}
        shopper_events = [{"event_id": f"{user}-{i}", "type": "click", "user_id": user, "item_id": item,
                           "ts": now_ms() - 60_000 + i, "storefront": "movielens"}
                          for user, items in tastes.items() for i, item in enumerate(items)]
        with StorefrontProducer.from_config(worker.config) as producer:
            assert producer.send_catalog([new_item]).ok and producer.send_events(shopper_events).ok
        wait_until(lambda: api.get("/models")[1]["loaded"]["items"] > len(catalog), 60,
                   f"the worker adds the new item\n{worker.tail()}")

        def top(user: str) -> list[str]:
            answer = api.get(f"/recommend/{user}?k=20")[1]
            return [i["item_id"] for i in answer["items"]] if answer["source"] == "model" else []

        wait_until(lambda: all(len(top(user)) == 20 for user in tastes), 30, "the shoppers' clicks arrive")
        assert new_item["item_id"] in top("horror-fan"), top("horror-fan")
        assert new_item["item_id"] not in top("romcom-fan"), top("romcom-fan")
        assert statuses[503] <= 60 and set(statuses) <= {200, 400, 404, 503}, statuses
        assert worker.alive(), worker.tail()
        print(f"\n{sum(statuses.values())} fuzzed requests, by status: {dict(sorted(statuses.items()))}")
    finally:
        worker.stop()
        engine.dispose()

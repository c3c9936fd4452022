"""Experiments and canary rollouts on real parts: a worker, the broker, Postgres, MiniLM, MovieLens-100k.

Every MovieLens user's first 20 ratings are their history (sent as events); their next 20
are held back. A simulated shopper asks ``/recommend`` for 20 items and clicks, sending the
answer's ``request_id`` and the item's position, when the list holds one of their held-back
items. The serving version is trained on the histories; the deliberately worse candidate is
the same model with every weight shuffled.

* An experiment of the serving version against the worse candidate (started and stopped over
  the API) declares the serving version better within a bounded number of users, and
  ``streamrec experiment status`` shows it.
* An interleaving experiment of the same two versions (every list merged by team draft; the
  storefront displays and reports the first 10 positions of each list through ``POST /shown``)
  prefers the serving version within a bounded number of users.
* In canary mode the worse candidate is rolled back by the workers' decision loop, and a good
  candidate (as good as the serving version: its weights, published again) is promoted by it
  once the confidence sequence rules out a loss larger than the margin, with no request
  failing before, during or after either swap.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from sqlalchemy import select

from learner.bundle import ModelBundle
from learner.finetune import FineTuneConfig, fine_tune
from learner.model import ModelConfig
from learner.trainer import TrainConfig
from store.db import make_engine
from store.experiments import list_rollouts, running_experiment
from store.models import served_lists, shown_positions
from store.registry import StoredTextEmbeddings, now_ms, serving_version
from streamrec.cli import main as cli
from streams import movielens
from streams.producer import StorefrontProducer
from tests.api import Client
from tests.conftest import _fresh_postgres_database
from tests.harness import Worker, store_text_vectors, wait_ingested, wait_until, worker_env
from training.versions import publish

pytestmark = pytest.mark.broker
TOKEN = "experiment-token"
HISTORY, HELD_BACK, BATCH = 20, 20, 50


@pytest.fixture(scope="module")
def shop(broker, movielens_text_vectors, tmp_path_factory):
    """A worker serving a version trained on every user's history, and the shoppers' held-back items."""
    url, drop = _fresh_postgres_database()
    store_text_vectors(url, movielens_text_vectors)
    engine = make_engine(url)
    by_user: dict[str, list[dict]] = {}
    for event in movielens.to_events(movielens.load_ratings(), now_ms() - 86_400_000):
        by_user.setdefault(event["user_id"], []).append(event)
    past = sorted((e for events in by_user.values() for e in events[:HISTORY]), key=lambda e: e["ts"])
    future = {user: {e["item_id"] for e in events[HISTORY:HISTORY + HELD_BACK]}
              for user, events in by_user.items() if len(events) > HISTORY}
    env = worker_env(broker, url, f"exp{now_ms() % 10**8}", STREAMREC_WORKER_TRAINS="false",
                     STREAMREC_SERVING_POLL_S="0.5", STREAMREC_WINDOW_MAX_EVENTS="5000",
                     STREAMREC_WINDOW_MAX_AGE_S="3600", STREAMREC_ONLINE_METRICS_S="3600",
                     STREAMREC_API_TOKEN=TOKEN, STREAMREC_CANARY_CHECK_S="1", STREAMREC_CANARY_MIN_USERS="100",
                     STREAMREC_CANARY_MARGIN="0.25", STREAMREC_EXPERIMENT_TUNING_USERS="300")
    worker = Worker(env, tmp_path_factory.mktemp("experiments") / "worker.log")
    try:
        catalog = movielens.to_catalog(movielens.load_movies())
        frame = pd.DataFrame(past)
        base = ModelBundle.build(ModelConfig(dim=32), catalog=pd.DataFrame(catalog), events=frame,
                                 cache=StoredTextEmbeddings(engine), seed=0)
        good, _ = fine_tune(base, frame, config=FineTuneConfig(train=TrainConfig(epochs=2, batch_size=256, lr=3e-3)))
        serving = publish(engine, good, "trained on every shopper's history")
        worker.wait_ready(120)
        with StorefrontProducer.from_config(worker.config) as producer:
            assert producer.send_catalog(catalog).ok and producer.send_events(past).ok
        wait_ingested(worker.config, engine, 120)
        api = Client(worker.config.web_port)
        wait_until(lambda: (m := api.get("/models")[1]["loaded"])["version"] == serving
                   and m["users_with_history"] >= len(future), 120, f"the worker serves version {serving}\n"
                                                                     f"{worker.tail()}")
        yield {"engine": engine, "worker": worker, "api": api, "good": good, "serving": serving, "future": future,
               "url": url}
    finally:
        worker.stop()
        engine.dispose()
        drop()


def shuffled(bundle: ModelBundle, seed: int) -> ModelBundle:
    """The deliberately worse candidate: every weight of ``bundle`` shuffled."""
    worse, generator = bundle.copy(), torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in worse.model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.flatten()[torch.randperm(tensor.numel(), generator=generator)].view_as(tensor))
    return worse


def shop_once(shop: dict, users: list[str], seen: list[dict]) -> None:
    """Each user asks for recommendations (every answer must be a 200) and clicks a held-back item
    the list holds; waits until the lists and clicks are stored."""
    api, worker, clicks = shop["api"], shop["worker"], []
    for user in users:
        status, answer = api.get(f"/recommend/{user}?k=20")
        assert status == 200, answer
        seen.append(answer)
        shown = [i["item_id"] for i in answer["items"]]
        hit = next((n for n, item in enumerate(shown) if item in shop["future"][user]), None)
        if hit is not None:
            clicks.append({"event_id": f"click-{answer['request_id']}", "type": "click", "user_id": user,
                           "item_id": shown[hit], "storefront": "movielens", "ts": now_ms(),
                           "request_id": answer["request_id"], "position": hit + 1})
    with StorefrontProducer.from_config(worker.config) as producer:
        assert producer.send_events(clicks).ok
    wait_ingested(worker.config, shop["engine"], 60)
    wait_ingested(worker.config, shop["engine"], 60, topic=worker.config.served_topic)


def test_an_experiment_declares_the_serving_version_better_than_a_worse_candidate(shop):
    api, engine = shop["api"], shop["engine"]
    worse = publish(engine, shuffled(shop["good"], 0), "every weight shuffled", status="rejected")
    assert api.call("POST", "/experiments", {"name": "shuffled", "treatment": worse})[0] == 401  # no token
    status, started = api.call("POST", "/experiments", {"name": "shuffled", "treatment": worse, "share": 0.5},
                               token=TOKEN)
    assert status == 200 and started["control_version"] == shop["serving"], started
    assert api.call("POST", "/experiments", {"name": "again", "treatment": worse}, token=TOKEN)[0] == 409
    wait_until(lambda: (api.get("/models")[1]["loaded"]["experiment"] or {}).get("name") == "shuffled", 60,
               f"the worker serves the experiment's arms\n{shop['worker'].tail()}")

    users, seen, report = sorted(shop["future"]), [], None
    for start in range(0, 400, BATCH):
        shop_once(shop, users[start:start + BATCH], seen)
        (experiment,) = [e for e in api.get("/experiments")[1]["experiments"] if e["name"] == "shuffled"]
        report = experiment["report"]
        if report["verdict"] != "undecided":
            break
    n_users = sum(a["users"] for a in report["arms"].values())
    assert report["verdict"] == "control better", report
    assert n_users <= 400 and not report["srm"]["flagged"]
    assert {a["arm"]: a["model_version"] for a in seen if a["source"] == "model"} == {
        "control": shop["serving"], "treatment": worse}
    assert all(a["experiment"] == "shuffled" for a in seen)
    ctr = {arm: report["arms"][arm]["ctr"] for arm in ("control", "treatment")}
    print(f"\nexperiment: control better after {n_users} users (CTR control {ctr['control']:.3f}, treatment "
          f"{ctr['treatment']:.3f}); {report['reason']}")

    result = CliRunner().invoke(cli, ["experiment", "status", "shuffled"],
                                env={"STREAMREC_DATABASE_URL": shop["url"], "STREAMREC_EXPERIMENT_TUNING_USERS": "300"})
    assert result.exit_code == 0 and "verdict: control better" in result.output, result.output
    print(result.output)
    status, stopped = api.call("POST", "/experiments/shuffled/stop", token=TOKEN)
    assert status == 200 and stopped["experiment"]["status"] == "stopped" and stopped["kind"] == "manual"
    assert api.call("POST", "/experiments/shuffled/stop", token=TOKEN)[0] == 409
    wait_until(lambda: api.get("/models")[1]["loaded"]["experiment"] is None, 30, "the arms are freed")
    status, answer = api.get(f"/recommend/{users[0]}")
    assert status == 200 and "experiment" not in answer and answer["model_version"] == shop["serving"]


def test_interleaving_prefers_the_serving_version_over_a_worse_candidate(shop):
    api, engine, worker = shop["api"], shop["engine"], shop["worker"]
    worse = publish(engine, shuffled(shop["good"], 2), "every weight shuffled", status="rejected")
    status, started = api.call("POST", "/experiments", {"name": "draft", "treatment": worse, "kind": "interleave"},
                               token=TOKEN)
    assert status == 200 and started["kind"] == "interleave" and started["share"] == 1.0, started
    wait_until(lambda: (api.get("/models")[1]["loaded"]["experiment"] or {}).get("name") == "draft", 60,
               f"the worker serves both versions\n{worker.tail()}")

    users, report, request_ids = sorted(shop["future"])[::-1], None, []
    for start in range(0, 300, BATCH):
        clicks, shown = [], []
        for user in users[start:start + BATCH]:
            status, answer = api.get(f"/recommend/{user}?k=20")
            assert status == 200 and answer["arm"] == "interleaved" and answer["experiment"] == "draft", answer
            request_ids.append(answer["request_id"])
            displayed = [i["item_id"] for i in answer["items"]][:10]  # the page shows ten of the twenty
            shown.append({"request_id": answer["request_id"], "shown": list(range(1, len(displayed) + 1))})
            hit = next((n for n, item in enumerate(displayed) if item in shop["future"][user]), None)
            if hit is not None:
                clicks.append({"event_id": f"click-{answer['request_id']}", "type": "click", "user_id": user,
                               "item_id": displayed[hit], "storefront": "movielens", "ts": now_ms(),
                               "request_id": answer["request_id"], "position": hit + 1})
        assert api.call("POST", "/shown", shown, token=TOKEN) == (200, {"accepted": len(shown), "rejected": []})
        with StorefrontProducer.from_config(worker.config) as producer:
            assert producer.send_events(clicks).ok
        wait_ingested(worker.config, engine, 60)
        wait_ingested(worker.config, engine, 60, topic=worker.config.served_topic)
        (experiment,) = [e for e in api.get("/experiments")[1]["experiments"] if e["name"] == "draft"]
        report = experiment["report"]
        if report["verdict"] != "undecided":
            break
    print(f"\ninterleaving: {report['verdict']} after {report['users']} users: {report['reason']}")
    assert report["verdict"] == "control better" and report["users"] <= 300, report
    with engine.connect() as conn:
        stored = dict(conn.execute(select(shown_positions.c.request_id, shown_positions.c.shown).where(
            shown_positions.c.request_id.in_(request_ids))).all())
        teams = conn.execute(select(served_lists.c.teams).where(served_lists.c.request_id == request_ids[0])).scalar()
    assert len(stored) == len(request_ids) and all(v == list(range(1, 11)) for v in stored.values())
    assert len(teams) == 20 and {"control", "treatment"} == set(teams)
    assert api.call("POST", "/experiments/draft/stop", token=TOKEN)[0] == 200
    wait_until(lambda: api.get("/models")[1]["loaded"]["experiment"] is None, 30, "the arms are freed")


def canary_until_decided(shop: dict, candidate: int, offset: int) -> tuple[dict, int, list[dict]]:
    """Shoppers keep shopping until the workers decide the candidate's canary: (decision, users, answers)."""
    users, seen = sorted(shop["future"]), []
    api, engine = shop["api"], shop["engine"]
    wait_until(lambda: (api.get("/models")[1]["loaded"]["experiment"] or {}).get("arms", {}).get("treatment")
               == candidate, 60, f"the worker serves the canary\n{shop['worker'].tail()}")
    for start in range(0, len(users), BATCH):
        batch = [users[(offset + start + n) % len(users)] for n in range(BATCH)]
        shop_once(shop, batch, seen)
        decided = [r for r in list_rollouts(engine) if r["version_id"] == candidate
                   and r["decision"] in ("promoted", "rolled_back")]
        if decided:
            return decided[0], len({a["user_id"] for a in seen}), seen
    raise AssertionError(f"no decision on version {candidate} after {len(users)} users:\n{shop['worker'].tail()}")


def test_canaries_roll_back_a_worse_candidate_and_promote_a_good_one_by_themselves(shop):
    api, engine, serving = shop["api"], shop["engine"], shop["serving"]
    assert running_experiment(engine) is None
    worse = publish(engine, shuffled(shop["good"], 1), "passed the gate (test)", canary_share=0.5)
    decision, n_users, seen = canary_until_decided(shop, worse, 0)
    assert decision["decision"] == "rolled_back", decision
    assert "significant loss" in decision["reason"] and decision["evidence"]["verdict"] == "control better"
    assert decision["baseline_version"] == serving and decision["decided_by"].startswith("worker@")
    assert serving_version(engine)["id"] == serving
    print(f"\ncanary of a worse candidate: rolled back after {n_users} users: {decision['reason']}")
    wait_until(lambda: api.get("/models")[1]["loaded"]["experiment"] is None, 30, "the canary's arm is freed")
    status, answer = api.get(f"/recommend/{sorted(shop['future'])[0]}")
    assert status == 200 and answer["model_version"] == serving and "arm" not in answer

    good = publish(engine, shop["good"], "as good as the serving version: its weights again", canary_share=0.5)
    decision, n_users, seen = canary_until_decided(shop, good, 400)
    assert decision["decision"] == "promoted", decision
    assert decision["evidence"]["comparisons"]["ctr"]["lift_lower"] > -0.25
    wait_until(lambda: api.get("/models")[1]["loaded"]["version"] == good, 30, "the promoted candidate serves")
    status, answer = api.get(f"/recommend/{sorted(shop['future'])[0]}")
    assert status == 200 and answer["model_version"] == good and "arm" not in answer
    status, models = api.get("/models")
    assert models["serving"]["id"] == good and [r["decision"] for r in models["rollouts"][:2]] == [
        "promoted", "canary"]
    print(f"canary of a good candidate: promoted after {n_users} users: {decision['reason']}")
    assert shop["worker"].alive()

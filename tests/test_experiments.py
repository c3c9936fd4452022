"""Experiment statistics and canary decisions in a real store (SQLite and Postgres).

* the confidence sequence keeps its coverage however often it is looked at, where the
  fixed-sample interval does not;
* a sample-ratio mismatch (the split changed in the middle of an experiment) is flagged on
  stored served lists, and the verdict is withheld;
* canary candidates start, wait, are promoted, rolled back or superseded, each step recorded,
  and a decision is taken once however many workers try at the same moment;
* a training job in canary mode starts a canary instead of promoting, and the next job
  fine-tunes the candidate;
* team-draft interleaving keeps each ranking's order and balances the teams; on stored
  interleaved lists and clicks, shoppers who click what the better ranking put first make it
  win within a few hundred users, and an A/A interleaving stays undecided at every look.
"""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from drift.experiments import assign, halfwidth, team_draft
from runtime.config import Config
from store.experiments import (
    ExperimentError,
    decide,
    get_experiment,
    list_rollouts,
    newest_candidate,
    place_candidate,
    running_experiment,
    start_experiment,
    stop_experiment,
)
from store.online import attribute, store_served
from store.registry import finish_run, list_versions, now_ms, serving_version, start_run
from streams.rollout import decide_canary, experiment_status
from streams.validation import ingest_table
from tests.harness import MOVIELENS_STORE_ENV as ENV
from training.job import run_training_job


def test_the_confidence_sequence_keeps_its_coverage_at_every_look():
    """A/A experiments looked at after every 25 users up to 4,000: the always-valid sequence
    excludes the true difference (0) in about alpha of them at any look; the fixed-sample 95%
    interval, peeked at as often, in several times as many."""
    rng = np.random.default_rng(7)
    runs, users, every = 400, 4_000, 25
    outcomes = (rng.random((runs, 2, users)) < 0.1).astype(np.float64)  # per-user CTR 0.1 in both arms
    looks = np.arange(every, users + 1, every)
    sums, squares = outcomes.cumsum(axis=2)[..., looks - 1], (outcomes ** 2).cumsum(axis=2)[..., looks - 1]
    means = sums / looks
    variances = (squares - looks * means ** 2) / (looks - 1)
    diff, variance = means[:, 1] - means[:, 0], (variances[:, 0] + variances[:, 1]) / looks
    widths = np.vectorize(halfwidth)(variance, 2 * looks, 0.05, 1_000)
    always_valid = (np.abs(diff) > widths).any(axis=1).mean()
    fixed = (np.abs(diff) > stats.norm.ppf(0.975) * np.sqrt(variance)).any(axis=1).mean()
    print(f"\nA/A, 160 looks: the confidence sequence erred in {always_valid:.1%} of runs, "
          f"the fixed-sample interval in {fixed:.1%}")
    assert always_valid <= 0.06 and fixed >= 0.2


def _version(engine, status: str = "rejected") -> int:
    """A model_versions row (no real weights: these tests never load them)."""
    created = now_ms()
    return finish_run(engine, start_run(engine, 0, "test"), {
        "parent_id": None, "status": status, "reason": "test", "windows": [], "rehearsal_size": 0, "metrics": {},
        "duration_s": 0.0, "device": "cpu", "n_items": 0, "n_users": 0, "created_at": created,
        "promoted_at": created if status == "promoted" else None, "weights": b"-", "sha256": "0" * 64})


def _serve(engine, experiment: dict, users: list[str], share: float, clicked: float, rng) -> None:
    """Store one served list per user, in the arm ``share`` puts them, and a click on a ``clicked`` share."""
    lists, clicks = [], []
    for user in users:
        request_id = f"{experiment['name']}-{user}"
        lists.append({"request_id": request_id, "served_at": now_ms(), "surface": "recommend",
                      "storefront": "shop", "source": "model", "model_version": 1, "experiment": experiment["name"],
                      "arm": assign(experiment["salt"], user, share), "user_id": user, "session_id": None,
                      "query": None, "items": ["a", "b"], "scores": [2.0, 1.0], "status": None, "latency_ms": 3.0})
        if rng.random() < clicked:
            clicks.append({"event_id": f"e-{request_id}", "type": "click", "user_id": user, "item_id": "a",
                           "storefront": "shop", "ts": now_ms(), "request_id": request_id, "position": 1})
    with engine.begin() as conn:
        store_served(conn, lists, now_ms())
        attribute(conn, ingest_table(clicks), 0, now_ms())


def test_a_split_changed_mid_experiment_is_flagged_and_the_verdict_withheld(engine):
    config, rng = Config.from_env({}), np.random.default_rng(3)
    control, treatment = _version(engine, "promoted"), _version(engine)
    experiment = start_experiment(engine, "srm", treatment, share=0.5)
    assert experiment["control_version"] == control and experiment["salt"] == "srm"
    _serve(engine, experiment, [f"u{i}" for i in range(1_500)], 0.5, 0.2, rng)
    report = experiment_status(engine, config, experiment)
    users = [report["arms"][arm]["users"] for arm in ("control", "treatment")]
    assert sum(users) == 1_500 and not report["srm"]["flagged"] and report["verdict"] == "undecided", report
    assert report["guardrails"]["arms"]["treatment"]["p99_latency_ms"] == pytest.approx(3.0)

    _serve(engine, experiment, [f"w{i}" for i in range(1_500)], 0.8, 0.2, rng)  # the split moved to 80%
    report = experiment_status(engine, config, experiment)
    assert report["srm"]["flagged"] and report["srm"]["p_value"] < 0.001, report["srm"]
    assert report["verdict"] == "withheld" and report["reason"].startswith("sample ratio mismatch"), report["reason"]
    print(f"\nusers {report['arms']['control']['users']}/{report['arms']['treatment']['users']} against 50/50: "
          f"p = {report['srm']['p_value']:.2g}")

    with pytest.raises(ExperimentError, match="'srm' is running"):
        start_experiment(engine, "another", treatment)
    stop_experiment(engine, "srm", "test", 0.1)
    assert get_experiment(engine, "srm")["status"] == "stopped" and running_experiment(engine) is None
    with pytest.raises(ExperimentError, match="ran before"):
        start_experiment(engine, "srm", treatment)
    for bad, match in ((dict(name="x y", treatment=treatment), "name"), (dict(name="x", treatment=99), "no model"),
                       (dict(name="x", treatment=control), "both version"),
                       (dict(name="x", treatment=treatment, share=1.0), "share")):
        with pytest.raises(ExperimentError, match=match):
            start_experiment(engine, **bad)


def test_canary_candidates_start_wait_and_are_decided_once_with_their_reasons(engine):
    v1 = _version(engine, "promoted")
    with engine.begin() as conn:
        v2 = _version(engine, "canary")
        assert place_candidate(conn, v2, 0.2, "trainer-a") == "canary"
    canary = running_experiment(engine)
    assert (canary["name"], canary["kind"], canary["control_version"], canary["treatment_version"],
            canary["share"]) == (f"canary-v{v2}", "canary", v1, v2, 0.2)
    waiting = []
    for _ in range(2):  # candidates that pass the gate while the canary runs wait for it
        with engine.begin() as conn:
            waiting.append(_version(engine, "canary"))
            assert place_candidate(conn, waiting[-1], 0.2, "trainer-a") == "waiting"
    assert newest_candidate(engine) == waiting[-1]  # what the next job fine-tunes

    evidence = {"verdict": "treatment better", "lift": float("nan")}  # stored JSON never holds NaN
    assert decide(engine, canary["name"], v2, "promoted", "good", evidence, "worker-1", 0.2)
    assert not decide(engine, canary["name"], v2, "rolled_back", "late", {}, "worker-2", 0.2)  # already decided
    assert serving_version(engine)["id"] == v2
    statuses = {v["id"]: v["status"] for v in list_versions(engine)}
    assert statuses == {v1: "promoted", v2: "promoted", waiting[0]: "superseded", waiting[1]: "canary"}
    second = running_experiment(engine)
    assert (second["name"], second["control_version"], second["treatment_version"]) == (
        f"canary-v{waiting[1]}", v2, waiting[1])

    with engine.begin() as conn:
        v5 = _version(engine, "canary")
        place_candidate(conn, v5, 0.2, "trainer-b")
    stop_experiment(engine, second["name"], "cli", 0.2)  # a canary stopped by hand is rolled back
    statuses = {v["id"]: v["status"] for v in list_versions(engine)}
    assert (statuses[waiting[1]], statuses[v5]) == ("rolled_back", "superseded")
    assert serving_version(engine)["id"] == v2 and running_experiment(engine) is None
    decisions = [(r["version_id"], r["decision"], r["decided_by"]) for r in reversed(list_rollouts(engine))]
    assert decisions == [(v2, "canary", "trainer-a"), (waiting[0], "waiting", "trainer-a"),
                         (waiting[1], "waiting", "trainer-a"), (v2, "promoted", "worker-1"),
                         (waiting[1], "canary", "worker-1"), (waiting[0], "superseded", "worker-1"),
                         (v5, "waiting", "trainer-b"), (waiting[1], "rolled_back", "cli"),
                         (v5, "superseded", "cli")]
    promoted = next(r for r in list_rollouts(engine) if r["decision"] == "promoted")
    assert promoted["evidence"] == {"verdict": "treatment better", "lift": None} and promoted["reason"] == "good"
    assert promoted["baseline_version"] == v1 and promoted["experiment"] == canary["name"]


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_workers_deciding_at_the_same_moment_decide_once(engine):
    _version(engine, "promoted")
    with engine.begin() as conn:
        candidate = _version(engine, "canary")
        place_candidate(conn, candidate, 0.5, "trainer")
    name, barrier, results = f"canary-v{candidate}", threading.Barrier(4), []

    def try_to(decision: str) -> None:
        barrier.wait()
        results.append(decide(engine, name, candidate, decision, decision, {}, threading.current_thread().name, 0.5))

    threads = [threading.Thread(target=try_to, args=(d,), name=f"worker-{n}")
               for n, d in enumerate(["promoted", "rolled_back"] * 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, False, True]
    decided = [r for r in list_rollouts(engine) if r["decision"] in ("promoted", "rolled_back")]
    assert len(decided) == 1
    assert {v["id"]: v["status"] for v in list_versions(engine)}[candidate] == decided[0]["decision"]


def test_a_canary_with_too_little_evidence_waits(engine):
    config = Config.from_env({"STREAMREC_CANARY_MIN_USERS": "50"})
    _version(engine, "promoted")
    with engine.begin() as conn:
        candidate = _version(engine, "canary")
        place_candidate(conn, candidate, 0.5, "trainer")
    _serve(engine, running_experiment(engine), [f"u{i}" for i in range(40)], 0.5, 0.3, np.random.default_rng(1))
    looked = decide_canary(engine, config, "worker")
    assert looked["decision"] == "wait" and not looked["decided"], looked
    assert running_experiment(engine)["treatment_version"] == candidate


@pytest.mark.slow  # three training jobs
def test_a_training_job_in_canary_mode_starts_a_canary_and_the_next_fine_tunes_it(movielens_store, database_url):
    engine, _ = movielens_store
    env = ENV | {"STREAMREC_ROLLOUT": "canary", "STREAMREC_CANARY_SHARE": "0.25"}
    first = run_training_job(database_url, env, 1, "test-host:1")
    assert first["status"] == "promoted"  # nothing serves yet: nothing to run a canary against
    second = run_training_job(database_url, env, 2, "test-host:1")
    assert second["status"] == "canary", second
    canary = running_experiment(engine)
    assert (canary["control_version"], canary["treatment_version"], canary["share"]) == (
        first["version_id"], second["version_id"], 0.25)
    assert serving_version(engine)["id"] == first["version_id"]
    third = run_training_job(database_url, env, 3, "test-host:1")
    assert third["status"] == "waiting", third
    v3 = list_versions(engine, 1)[0]
    assert v3["parent_id"] == second["version_id"]  # fine-tuned from the canary, judged against the serving one
    assert v3["metrics"]["baseline_name"] == f"version {first['version_id']}"
    rows = pd.DataFrame(list_rollouts(engine))
    assert rows["decision"].tolist() == ["waiting", "canary", "promoted"]
    assert rows["decided_by"].str.startswith("test-host:1/train:").all()


def test_team_draft_keeps_each_rankings_order_and_balances_the_teams():
    rng = np.random.default_rng(5)
    catalog = [f"i{n}" for n in range(40)]
    for n in range(300):
        control, treatment = list(rng.permutation(catalog)[:20]), list(rng.permutation(catalog)[:20])
        items, teams = team_draft(control, treatment, 20, f"r{n}")
        assert len(items) == len(set(items)) == 20 and len(teams) == 20
        counts = [teams[:m].count("control") - teams[:m].count("treatment") for m in range(1, 21)]
        assert all(abs(c) <= 1 for c in counts)  # the teams never differ by more than one pick
        for team, ranking in (("control", control), ("treatment", treatment)):
            mine = [i for i, t in zip(items, teams) if t == team]
            assert mine == sorted(mine, key=ranking.index)  # each team adds its items in its own order
    items, teams = team_draft(["a"], ["b", "c", "d"], 4, "r")  # a team out of items leaves the rest to the other
    assert sorted(items) == ["a", "b", "c", "d"] and teams.count("treatment") == 3


def _interleave(engine, experiment: dict, users: list[str], control_first: bool, rng) -> None:
    """Each user is served one interleaved list of the two versions' rankings and clicks the
    item they want; the control ranking puts it first when ``control_first``, the treatment
    ranking (a shuffled version) somewhere in its 20. Half the clicks name the list, half are inferred."""
    lists, clicks = [], []
    for n, user in enumerate(users):
        want = f"{user}-want"
        others = [f"i{k}" for k in rng.permutation(100)[:30]]
        control = [want, *others[:19]] if control_first else others[:20]
        treatment = list(rng.permutation([want, *others[10:29]])) if control_first else others[:20]
        request_id = f"{experiment['name']}-{user}"
        items, teams = team_draft(control, treatment, 20, request_id)
        lists.append({"request_id": request_id, "served_at": now_ms(), "surface": "recommend",
                      "storefront": "shop", "source": "model", "model_version": 1, "experiment": experiment["name"],
                      "arm": "interleaved", "user_id": user, "session_id": None, "query": None, "items": items,
                      "scores": [1.0] * len(items), "status": None, "latency_ms": 3.0, "teams": teams})
        target = want if want in items else items[rng.integers(0, 3)]
        extra = {"request_id": request_id, "position": items.index(target) + 1} if n % 2 else {}
        clicks.append({"event_id": f"e-{request_id}", "type": "click", "user_id": user, "item_id": target,
                       "storefront": "shop", "ts": now_ms(), **extra})
    with engine.begin() as conn:
        store_served(conn, lists, now_ms())
    with engine.begin() as conn:
        attribute(conn, ingest_table(clicks), 3_600_000, now_ms())


def test_interleaving_finds_the_better_ranking_with_few_users_and_stays_undecided_on_a_tie(engine):
    config, rng = Config.from_env({}), np.random.default_rng(11)
    control, treatment = _version(engine, "promoted"), _version(engine)
    experiment = start_experiment(engine, "draft", treatment, kind="interleave", share=1.0)
    assert experiment["kind"] == "interleave" and experiment["control_version"] == control
    decided_at = None
    for batch in range(10):  # looked at after every 20 users
        _interleave(engine, experiment, [f"u{batch}-{i}" for i in range(20)], True, rng)
        report = experiment_status(engine, config, experiment)
        if report["verdict"] != "undecided":
            decided_at = report["users"]
            break
    print(f"\ninterleaving, better control: {report['reason']}, decided after {decided_at} users")
    assert report["verdict"] == "control better" and decided_at <= 200, report
    assert report["wins"]["control"] > 3 * report["wins"]["treatment"]
    stop_experiment(engine, "draft", "test", 0.1)

    tie = start_experiment(engine, "tie", treatment, kind="interleave", share=1.0)
    for batch in range(10):
        _interleave(engine, tie, [f"t{batch}-{i}" for i in range(20)], False, rng)
        report = experiment_status(engine, config, tie)
        assert report["verdict"] == "undecided", report  # the same ranking in both teams: no winner at any look
    assert report["users"] == 200 and report["clicked_users"] == 200
    with pytest.raises(ExperimentError, match="share"):
        start_experiment(engine, "x", treatment, kind="interleave", share=1.5)
    with pytest.raises(ExperimentError, match="kind"):
        start_experiment(engine, "x", treatment, kind="draft")

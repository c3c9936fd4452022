"""Drift metrics on real MovieLens-100k streams: stationary (shuffled) streams raise no alert,
the event log in its own order alerts on at most 5% of its window-metric rows, injected shifts
raise the matching alerts within two windows; properties of the divergences; detectors rebuilt
from stored values decide as detectors that lived through the stream; model drift between
real fine-tuned versions, and score drift within one.

The stationary stream is MovieLens-100k in random order (so every window is a sample of one
distribution), cut into windows of 2,000 events; the event log is the same ratings in time
order. The serving model of each window is the popularity of all earlier windows; each
window's "version" is the popularity of that window alone (a model without memory, so
forgetting shows when the stream shifts).

Alerts are confirmed breaches (``drift.metrics.confirm``): a per-window statistic alerts on
its second consecutive breach. A step change therefore alerts on the ``*_reference``
comparisons in its second window, while the ``*_previous`` ones breach in its first window
only (the second compares two shifted windows).
"""

from __future__ import annotations

import copy
import doctest
import importlib

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drift.detectors import AdwinHits, PageHinkleyLog, judge_series
from drift.divergence import js_divergence, noise_floor, psi
from drift.metrics import CONCEPT, INPUT, METRICS, MetricValue
from drift.quality import quality, sample_events
from drift.scores import sample_users
from drift.window import DriftTracker, forgetting, model_drift
from learner.bundle import ModelBundle
from learner.evaluate import BundleScorer, Popularity
from learner.finetune import FineTuneConfig, fine_tune
from learner.gate import split_holdout
from learner.model import ModelConfig
from learner.trainer import TrainConfig
from streams import movielens
from training.drift_recording import topk_shift, vector_shift

WINDOW = 2_000
STATIONARY_WINDOWS = 22
SHIFT_AT = 10  # the shifted streams follow the stationary one from this window on
STOREFRONT = movielens.STOREFRONT


@pytest.fixture(scope="module")
def stream() -> tuple[list[pd.DataFrame], pd.DataFrame]:
    """Shuffled MovieLens windows (event time follows the new order) and the catalog."""
    events = pd.DataFrame(movielens.to_events(movielens.load_ratings(), now_ms=1_763_000_000_000))
    events = events.sample(frac=1.0, random_state=7).reset_index(drop=True)
    events["ts"] = 1_763_000_000_000 + np.arange(len(events)) * 1000
    windows = [events.iloc[i * WINDOW:(i + 1) * WINDOW].copy() for i in range(len(events) // WINDOW)]
    return windows, pd.DataFrame(movielens.to_catalog(movielens.load_movies()))


class Stream:
    """A DriftTracker plus the forgetting probe (the held-out tenth of the first window)."""

    def __init__(self, catalog: pd.DataFrame):
        self.tracker = DriftTracker(reference_windows=3, catalog=catalog)
        self.windows: list[pd.DataFrame] = []
        self.probe_first: float | None = None

    def step(self, window: pd.DataFrame) -> set[str]:
        """Metrics of the next window; returns the names of those that alerted (``self.breaches``: that breached)."""
        k = len(self.windows)
        if k == 0:
            self.probe_history, held_out = split_holdout(window, 0.1)
            self.probe = sample_events(held_out, 1000, seed=1)
        serving = Popularity.of(pd.concat(self.windows), also=window) if k else None
        history = pd.concat(self.windows[-3:]) if k else None
        values = self.tracker.observe(window, serving, "popularity of earlier windows", history)
        version = Popularity.of(window, also=self.probe)  # trained on this window only
        probe = quality(version, self.probe, self.probe_history)
        values += forgetting(STOREFRONT, probe, self.probe_first, "probe of window 1")
        self.tracker.record([v for v in values if v.kind == "forgetting"])  # confirms their alerts
        self.probe_first = probe.recall if self.probe_first is None else self.probe_first
        self.windows.append(window)
        self.last = values
        self.breaches = {v.metric for v in values if v.breach}
        return {v.metric for v in values if v.alert}


@pytest.fixture(scope="module")
def runs(stream) -> dict:
    """Alerts (and breaches) per window of the stationary stream, and of two shifted continuations of
    its first SHIFT_AT windows: popularity reversed, and a flood of a new category."""
    windows, catalog = stream
    stationary = Stream(catalog)
    alerts, breaches, at_shift = [], [], None
    for k, window in enumerate(windows[:STATIONARY_WINDOWS]):
        if k == SHIFT_AT:
            at_shift = copy.deepcopy(stationary)
        alerts.append(stationary.step(window))
        breaches.append(stationary.breaches)
    seen_metrics = {v.metric for v in stationary.last}

    counts = pd.concat(windows).value_counts("item_id")
    reverse = dict(zip(counts.index, counts.index[::-1]))  # the most popular item becomes the least, and so on
    reversed_run, reversed_alerts, reversed_breaches = copy.deepcopy(at_shift), [], []
    for window in windows[SHIFT_AT:SHIFT_AT + 3]:
        reversed_alerts.append(reversed_run.step(window.assign(item_id=window["item_id"].map(reverse))))
        reversed_breaches.append(reversed_run.breaches)

    rng = np.random.default_rng(3)
    flood_items = [f"flood-{i}" for i in range(60)]
    flood_catalog = pd.DataFrame({"storefront": STOREFRONT, "item_id": flood_items, "title": "Gadget",
                                  "category": "Gadgets", "description": None})
    flood_run = copy.deepcopy(at_shift)
    flood_run.tracker.catalog = pd.concat([catalog, flood_catalog], ignore_index=True)
    flood_alerts, flood_breaches = [], []
    for window in windows[SHIFT_AT:SHIFT_AT + 3]:
        flooded = window.copy()
        share = rng.random(len(flooded)) < 0.3  # 30% of the events go to the new category
        flooded.loc[share, "item_id"] = rng.choice(flood_items, share.sum())
        flood_alerts.append(flood_run.step(flooded))
        flood_breaches.append(flood_run.breaches)
    return {"stationary": alerts, "stationary_breaches": breaches, "reversed": reversed_alerts,
            "reversed_breaches": reversed_breaches, "flood": flood_alerts, "flood_breaches": flood_breaches,
            "metrics": seen_metrics}


def test_stationary_stream_raises_no_alert_over_twenty_windows(runs):
    assert len(runs["stationary"]) >= 20
    measured = set(INPUT) - {"serving_score_psi"}  # the popularity of earlier windows changes every window
    assert runs["metrics"] == measured | set(CONCEPT) | {"probe_recall@20", "probe_ndcg@20", "backward_transfer"}
    assert [sorted(a) for a in runs["stationary"] if a] == []
    assert sum(map(len, runs["stationary_breaches"])) <= 2, runs["stationary_breaches"]  # and hardly a breach


@pytest.mark.parametrize("shift, first, confirmed", [
    ("reversed", ["popularity_psi_previous", "popularity_psi_reference", "popularity_js_previous",
                  "popularity_js_reference", "backward_transfer"],
     ["popularity_psi_reference", "popularity_js_reference", "prequential_recall@20", "prequential_ndcg@20",
      "prequential_loss", "backward_transfer"]),
    ("flood", ["category_psi_previous", "category_psi_reference", "category_js_previous", "category_js_reference",
               "new_item_share"],
     ["category_psi_reference", "category_js_reference"]),
])
def test_injected_shift_alerts_within_two_windows(runs, shift, first, confirmed):
    # the window of the shift breaches every comparison that sees it ...
    assert set(first) <= runs[f"{shift}_breaches"][0], runs[f"{shift}_breaches"][0]
    # ... and the next one confirms it: the alert (change detectors alert at once)
    first_two = runs[shift][0] | runs[shift][1]
    assert set(confirmed) <= first_two, f"missing {set(confirmed) - first_two}; got {runs[shift]}"
    assert not {m for m in runs[shift][0] if METRICS[m].confirm == 2}, runs[shift][0]
    # the shift is still there a window later: comparisons with the reference keep alerting
    name = "popularity" if shift == "reversed" else "category"
    assert {f"{name}_psi_reference", f"{name}_js_reference"} <= runs[shift][2]


def test_purchase_share_alerts_when_shoppers_stop_buying_for_two_windows(stream):
    windows, catalog = stream
    tracker = DriftTracker(reference_windows=3, catalog=catalog)
    for window in windows[:4]:
        assert not any(v.breach for v in tracker.observe(window) if v.metric == "purchase_share")
    first, second = ([v for v in tracker.observe(w.assign(type="click")) if v.metric == "purchase_share"][0]
                     for w in windows[4:6])
    assert first.breach and not first.alert and first.value == 0.0 and first.baseline > 0.15
    assert second.breach and second.alert
    assert first.method.startswith("calibrated: mean") and "windows 1-3" in first.method
    assert first.detail["comparisons"] == 10 and first.detail["calibrated"] == first.threshold


@pytest.fixture(scope="module")
def event_log() -> tuple[list[pd.DataFrame], pd.DataFrame]:
    """MovieLens-100k in its own (time) order, in windows of 2,000 events, and the catalog."""
    events = pd.DataFrame(movielens.to_events(movielens.load_ratings(), now_ms=1_763_000_000_000))
    windows = [events.iloc[i * WINDOW:(i + 1) * WINDOW].copy() for i in range(len(events) // WINDOW)]
    return windows, pd.DataFrame(movielens.to_catalog(movielens.load_movies()))


def test_the_event_log_in_its_own_order_alerts_on_at_most_five_percent_of_rows(event_log):
    windows, catalog = event_log
    tracker = DriftTracker(reference_windows=3, catalog=catalog)
    rows = []
    for k, window in enumerate(windows):
        serving = Popularity.of(pd.concat(windows[:k]), also=window) if k else None
        rows += tracker.observe(window, serving, "popularity of earlier windows",
                                pd.concat(windows[max(0, k - 3):k]) if k else None)
    alerts = pd.Series([v.metric for v in rows if v.alert], dtype=object)
    share = len(alerts) / len(rows)
    print(f"\nevent log, {len(windows)} windows of {WINDOW}: {len(alerts)} alerts in {len(rows)} rows ({share:.1%}), "
          f"{sum(v.breach for v in rows)} breaches; alerts: {alerts.value_counts().to_dict()}")
    assert len(windows) == 50 and len(rows) > 600
    assert share <= 0.05


CHANGED_CATEGORY = "Drama, Thriller"


def test_a_category_mix_changed_halfway_alerts_within_two_windows(event_log):
    windows, catalog = event_log
    categories = catalog.set_index("item_id")["category"]
    log = pd.concat(windows)
    pool = log[log["item_id"].map(categories) == CHANGED_CATEGORY]
    assert 0.01 < len(pool) / len(log) < 0.05  # a small category of the log ...
    rng = np.random.default_rng(5)
    half = len(windows) // 2
    tracker = DriftTracker(reference_windows=3, catalog=catalog)
    alerts, breaches, shares = [], [], []
    for k, window in enumerate(windows):
        if k >= half:  # ... gets a fifth of the events from the middle on: re-drawn from its own events
            window = window.copy()
            moved = rng.random(len(window)) < 0.2
            window.loc[moved, "item_id"] = pool["item_id"].sample(int(moved.sum()), replace=True,
                                                                  random_state=k).to_numpy()
        shares.append(float((window["item_id"].map(categories) == CHANGED_CATEGORY).mean()))
        values = tracker.observe(window)
        alerts.append({v.metric for v in values if v.alert})
        breaches.append({v.metric for v in values if v.breach})
    print(f"\n{CHANGED_CATEGORY}: share {np.mean(shares[:half]):.3f} -> {np.mean(shares[half:]):.3f}; "
          f"breaches at the change {sorted(breaches[half])}, alerts a window later {sorted(alerts[half + 1])}")
    assert [a for a in alerts[:half] if a] == []  # the normal half raises none
    category = {"category_psi_reference", "category_js_reference"}
    assert category <= breaches[half] and category <= alerts[half + 1]  # the change alerts in its second window
    assert all(category <= a for a in alerts[half + 1:])  # and stays alerting


counts = st.lists(st.integers(0, 500), min_size=2, max_size=12)


@settings(max_examples=60, deadline=None)
@given(counts, st.data())
def test_divergences_are_symmetric_nonnegative_and_zero_on_equal_distributions(expected, data):
    actual = data.draw(st.lists(st.integers(0, 500), min_size=len(expected), max_size=len(expected)))
    assert psi(expected, actual) >= 0 and abs(psi(expected, actual) - psi(actual, expected)) < 1e-9
    assert 0 <= js_divergence(expected, actual) <= 1
    assert abs(js_divergence(expected, actual) - js_divergence(actual, expected)) < 1e-9
    assert psi(expected, expected) == 0 and js_divergence(expected, expected) == 0
    doubled = [2 * c for c in expected]
    assert psi(expected, doubled) < 0.05  # proportions matter, not sizes (up to the smoothing)


def test_noise_floor_bounds_divergences_of_samples_from_one_distribution():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(41) * 0.5)
    above = {"psi": 0, "js": 0}
    for _ in range(300):
        a, b = rng.multinomial(3000, p), rng.multinomial(2000, p)
        above["psi"] += psi(a, b) > noise_floor("psi", 41, 3000, 2000)
        above["js"] += js_divergence(a, b) > noise_floor("js", 41, 3000, 2000)
    assert above["psi"] <= 3 and above["js"] <= 3, above  # a 99.9% quantile: ~0.3 expected in 300
    shifted = rng.multinomial(2000, np.roll(p, 1))
    assert psi(rng.multinomial(3000, p), shifted) > noise_floor("psi", 41, 3000, 2000)


def test_detectors_rebuilt_from_stored_values_decide_like_detectors_that_saw_the_stream():
    rng = np.random.default_rng(5)
    recall = [float(rng.binomial(3000, 0.12) / 3000) for _ in range(20)] + [0.07, 0.07, 0.07]
    live = [AdwinHits(), PageHinkleyLog("down")]
    for i, value in enumerate(recall):
        fired = [d.name for d in live if d.update(value, 3000)]
        replayed = judge_series("prequential_recall@20", [(v, 3000) for v in recall[:i]], value, 3000)
        assert replayed[0] == bool(fired), i
        if fired:
            assert replayed[1] == "+".join(fired)
    assert judge_series("prequential_recall@20", [(v, 3000) for v in recall[:20]], 0.07, 3000)[0]
    assert not any(judge_series("prequential_recall@20", [(v, 3000) for v in recall[:i]], recall[i], 3000)[0]
                   for i in range(20))


def test_every_metric_is_defined_with_a_direction():
    assert len(METRICS) == 20
    for metric in METRICS.values():
        assert metric.kind in ("input", "concept", "model", "forgetting") and metric.direction in ("up", "down", "both")
        assert len(metric.definition) > 30 and metric.confirm in (1, 2)
    assert {m.name for m in METRICS.values() if m.confirm == 1} == set(CONCEPT) | {"item_vector_shift",
                                                                                   "topk_overlap@20"}
    row = MetricValue("serving_score_psi", "s", 0.3, threshold=float("inf"), detail={"x": float("nan")}).row()
    assert row["kind"] == "input" and row["threshold"] is None and row["detail"] == {"x": None}


def test_model_drift_is_small_for_fine_tunes_and_alerts_for_a_reckless_one(stream):
    windows, _ = stream
    config = ModelConfig(dim=16, layers=1, heads=1, max_len=20, use_text=False)

    def tune(epochs: int, lr: float) -> FineTuneConfig:
        return FineTuneConfig(train=TrainConfig(epochs=epochs, batch_size=256, lr=lr, seed=0), rehearsal_ratio=0.0,
                              holdout=0.0)

    first, second, third = windows[:3]
    v1, _ = fine_tune(ModelBundle.build(config, events=first, seed=0), first, config=tune(1, 1e-3))
    careful, _ = fine_tune(v1, second, history=first, previous=v1, config=tune(1, 1e-3))
    careful2, _ = fine_tune(careful, third, history=pd.concat([first, second]), previous=careful, config=tune(1, 1e-3))
    reckless, _ = fine_tune(v1, second, history=first, config=tune(3, 2e-2))  # 20x the learning rate
    items = sorted(set(first["item_id"]) | set(second["item_id"]) | set(third["item_id"]))
    probe = sample_users(first["user_id"], 300, seed=1)  # a fixed probe of users
    events = pd.concat([first, second, third])

    def drift(old, new) -> list:
        shift, overlap = vector_shift(old, new, items), topk_shift(old, new, events, probe, items)
        print(f"\nitem vector shift {shift[0]:.3f} over {shift[1]} items, top-20 overlap {overlap[0]:.3f}")
        assert shift[1] >= len(set(first["item_id"])) and overlap[1] == len(probe)
        return model_drift(STOREFRONT, shift, overlap, "version 1")

    updates = [drift(v1, careful), drift(careful, careful2)]  # two ordinary consecutive fine-tunes ...
    assert [[(v.metric, v.breach, v.alert) for v in values] for values in updates] == [
        [("item_vector_shift", False, False), ("topk_overlap@20", False, False)]] * 2
    loud = drift(v1, reckless)  # ... and one at 20 times the learning rate
    assert [(v.metric, v.alert) for v in loud] == [("item_vector_shift", True), ("topk_overlap@20", True)]
    assert vector_shift(v1, v1, items)[0] < 1e-6 and topk_shift(v1, v1, events, probe, items)[0] == 1.0

    # score drift within one version: version 1 serves windows 4 to 6 (its reference: window 4), then a swap
    tracker = DriftTracker(reference_windows=3, score_users=300, seed=1)
    for window in windows[:3]:
        tracker.observe(window)
    score_rows = []
    for k, (bundle, name) in enumerate([(v1, "version 1")] * 3 + [(careful, "version 2")] * 2, start=3):
        values = tracker.observe(windows[k], BundleScorer(bundle), name, pd.concat(windows[:k]))
        (row,) = [v for v in values if v.metric == "serving_score_psi"]
        score_rows.append(row)
    print("serving_score_psi", [(round(v.value, 5), v.threshold and round(v.threshold, 5)) for v in score_rows])
    assert [v.reference.split(" (")[0] for v in score_rows] == ["version 1 on window 4"] * 3 + [
        "version 2 on window 7"] * 2
    assert [v.detector for v in score_rows] == ["none", "threshold", "threshold", "none", "threshold"]
    assert [v.value for v in score_rows if v.detector == "none"] == [0.0, 0.0]  # the reference restarts at the swap
    assert not any(v.breach for v in score_rows)
    assert all(v.threshold >= 0.1 and v.method.startswith(("calibrated", "stable-score floor")) for v in score_rows
               if v.detector == "threshold")


@pytest.mark.parametrize("module", ["divergence", "calibration", "input", "metrics", "detectors", "quality",
                                    "model_shift", "scores", "window", "report"])
def test_documented_examples_run(module):
    result = doctest.testmod(importlib.import_module(f"drift.{module}"))
    assert result.attempted > 0 and result.failed == 0

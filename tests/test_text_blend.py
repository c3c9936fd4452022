"""The text and live terms for new items (:mod:`learner.blend`): fitted on held-out events and on a
lineage's evidence, and scored the same way by the gate (``BundleScorer``) and by serving
(``Recommender``). Real MovieLens-100k
events and catalog, the real MiniLM vectors."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from learner.blend import GRID, LIVE_GRID, PAIRS, Evidence, TextBlend, fit_weight
from learner.bundle import ModelBundle
from learner.device import Device
from learner.evaluate import BundleScorer, blend_hits, evaluate
from learner.finetune import FineTuneConfig, fine_tune
from learner.model import ModelConfig
from learner.sequences import history_batch
from learner.trainer import TrainConfig
from serving.rankers import Click
from serving.snapshot import build_snapshot
from streams import movielens

CPU = Device(torch.device("cpu"))


@pytest.fixture(scope="module")
def trained(movielens_text_vectors) -> tuple[ModelBundle, pd.DataFrame, pd.DataFrame]:
    """A model trained on 6,000 MovieLens events, its catalog and the events."""
    events = pd.DataFrame(movielens.to_events(movielens.load_ratings(), 10 ** 12)).sort_values("ts")[:6_000]
    catalog = pd.DataFrame(movielens.to_catalog(movielens.load_movies()))
    cache = dict(movielens_text_vectors)
    base = ModelBundle.build(ModelConfig(dim=32), catalog=catalog, events=events, cache=cache)
    bundle, _ = fine_tune(base, events, catalog=catalog, cache=cache, device=CPU,
                          config=FineTuneConfig(train=TrainConfig(epochs=2, batch_size=256, lr=0.003)))
    return bundle, catalog, events


def test_the_text_term_is_fitted_on_held_out_events_and_favours_items_without_evidence(trained):
    bundle, _, events = trained
    blend = bundle.text_blend
    assert bundle.info["text_blend"] == blend.to_dict() and blend.weight >= 0 and np.isfinite(blend.weight)
    counts = bundle.model.item_counts
    assert int(counts.sum()) == len(events)  # the interactions it trained on (held-out ones included)
    weights = TextBlend(weight=1.0).item_weights(counts)
    assert weights[counts == 0].eq(1.0).all() and (weights[counts > 50] < 0.1).all()


def test_serving_ranks_with_the_text_term_as_the_gate_scores(trained, movielens_text_vectors):
    bundle, catalog, events = trained
    bundle = bundle.copy()
    bundle.info["text_blend"] = TextBlend(weight=4.0).to_dict()  # strong, so that it matters
    user = events["user_id"].value_counts().index[3]
    history = events[events["user_id"] == user].sort_values(["ts", "event_id"])  # as workers keep histories
    _, batch = history_batch(history, bundle.vocab, bundle.model.config.max_len)
    scores = BundleScorer(bundle, CPU).scores(batch)[0]
    scores[:2] = float("-inf")
    expected = [bundle.vocab.items.keys()[row - 2] for row in scores.topk(10).indices.tolist()]
    without = BundleScorer(bundle, CPU, blend=TextBlend()).scores(batch)[0]
    without[:2] = float("-inf")
    assert expected != [bundle.vocab.items.keys()[row - 2] for row in without.topk(10).indices.tolist()]

    recommender = build_snapshot({"id": 1}, bundle, catalog, cache=dict(movielens_text_vectors), device=CPU)
    clicks = [Click(e.item_id, e.type, e.storefront) for e in history.itertuples()]
    assert [s.item_id for s in recommender.recommend(clicks, 10)] == expected

    # with a live term: new items' interactions since the version, counted by serving as by the gate
    bundle.info["text_blend"] = TextBlend(weight=4.0, live=3.0).to_dict()
    new_items = [i for i, n in zip(bundle.vocab.items.keys(), bundle.model.item_counts[2:].tolist()) if n == 0]
    live = {item: n for item, n in zip(new_items[:30], range(1, 31))} | {events["item_id"].iloc[0]: 50}
    rows = torch.zeros(1, len(bundle.vocab.items))
    rows[0, torch.from_numpy(bundle.vocab.items.index(live.keys()))] = torch.tensor([float(n) for n in live.values()])
    scores = BundleScorer(bundle, CPU).scores(batch, live=rows)[0]
    scores[:2] = float("-inf")
    with_live = [bundle.vocab.items.keys()[row - 2] for row in scores.topk(10).indices.tolist()]
    assert set(with_live) & set(new_items[:30]) and with_live != expected
    recommender = build_snapshot({"id": 1}, bundle, catalog, cache=dict(movielens_text_vectors), device=CPU)
    recommender.set_live(live)
    assert [s.item_id for s in recommender.recommend(clicks, 10)] == with_live



def test_blends_compared_on_the_same_events_rank_as_evaluate_does_with_one_model_run(trained):
    bundle, _, events = trained
    later = pd.DataFrame(movielens.to_events(movielens.load_ratings(), 10 ** 12)).sort_values("ts")[6_000:7_000]
    spread, center = 0.5, bundle.text_blend.center
    blends = [TextBlend(center=center), TextBlend(weight=4 * spread, center=center), TextBlend(live=spread, center=center),
              TextBlend(weight=16 * spread, live=2 * spread, center=center)]
    scorer = BundleScorer(bundle, CPU, blend=TextBlend())
    runs = []
    hook = bundle.model.register_forward_hook(lambda *_: runs.append(1))
    try:
        hits, targets = blend_hits(scorer, blends, later, events, k=20)
    finally:
        hook.remove()
    assert len(runs) == 2  # 1,000 events: two batches of 512, the model run once a batch for every blend
    new = (bundle.model.item_counts[targets] == 0).numpy() & (targets > 1)
    new_items = [i for i, n in zip(bundle.vocab.items.keys(), bundle.model.item_counts[2:].tolist()) if n == 0]
    for blend, blend_hit in zip(blends, hits):
        result = evaluate(scorer.with_blend(blend), later, events, ks=(20,), new_items=new_items)
        assert blend_hit.mean() == pytest.approx(result["recall@20"], abs=1e-12)
        assert blend_hit[new].mean() == pytest.approx(result["new_item_recall@20"], abs=1e-12)
    assert hits[3][new].mean() > hits[0][new].mean()  # the terms find new items the model alone misses
    with pytest.raises(ValueError, match="weights only"):
        blend_hits(scorer, [TextBlend(), TextBlend(half_count=5.0)], later, events)


def test_updates_fit_the_term_on_the_lineages_evidence_scored_before_training(trained, caplog):
    bundle, catalog, _ = trained
    events = pd.DataFrame(movielens.to_events(movielens.load_ratings(), 10 ** 12)).sort_values("ts")
    first, second = events[6_000:8_000], events[8_000:10_000]
    config = FineTuneConfig(train=TrainConfig(epochs=1, batch_size=256, lr=0.003))
    parent_alone = evaluate(BundleScorer(bundle, CPU, blend=TextBlend()), first, events[:6_000], ks=(20,))

    updated, _ = fine_tune(bundle, first, history=events[:6_000], catalog=catalog, previous=bundle, device=CPU,
                           config=config)
    evidence = Evidence.of(updated.info["text_blend_evidence"])
    assert evidence.events == len(first) and evidence.grid == PAIRS
    score = evidence.score()
    assert score.recalls[0.0, 0.0] == pytest.approx(parent_alone["recall@20"])  # scored by the parent, untrained
    trained_counts = dict(zip(bundle.vocab.items.keys(), bundle.model.item_counts[2:].tolist()))
    assert evidence.new_events == sum(trained_counts.get(item, 0) == 0 for item in first["item_id"])
    # new items shoppers have started to click since are found more often with the live term
    assert score.new_recalls[max(GRID), max(LIVE_GRID)] > score.new_recalls[max(GRID), 0.0]
    # each pair's changed share counts the events whose hit it turns, so it bounds its change of recall
    assert score.changed[0.0, 0.0] == 0 and score.changed[max(GRID), max(LIVE_GRID)] > 0
    assert all(score.changed[p] >= abs(score.recalls[p] - score.recalls[0.0, 0.0]) - 1e-9 for p in PAIRS)
    assert "text_blend_evidence" not in bundle.info

    caplog.clear()  # the first update's fit too may be logged
    with caplog.at_level(logging.INFO, logger="learner.finetune"):
        again, _ = fine_tune(updated, second, history=events[:8_000], catalog=catalog, previous=updated, device=CPU,
                             config=config)
    evidence = Evidence.of(again.info["text_blend_evidence"])
    assert evidence.events == pytest.approx(len(first) * 0.5 ** (len(second) / 25_000) + len(second))
    [fit] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("text blend")]
    weight, live = fit_weight(evidence.score(), config.text_blend_tolerance, config.text_blend_confidence)
    assert f"text weight {weight:.2f} sd" in fit and f"live weight {live:.2f} sd" in fit
    assert "of the lineage's updates" in fit


def test_the_terms_do_not_change_what_the_model_learns(trained):
    """Early stopping judges the model alone: a parent serving strong terms trains the same model."""
    bundle, catalog, _ = trained
    events = pd.DataFrame(movielens.to_events(movielens.load_ratings(), 10 ** 12)).sort_values("ts")
    window = events[6_000:8_000]
    config = FineTuneConfig(train=TrainConfig(epochs=2, batch_size=256, lr=0.003), text_blend_evidence_events=0)
    trained_by = []
    for blend in (TextBlend(), TextBlend(weight=16.0, live=4.0, center=bundle.text_blend.center)):
        parent = bundle.copy()
        parent.info["text_blend"] = blend.to_dict()
        student, epochs = fine_tune(parent, window, history=events[:6_000], catalog=catalog, previous=parent,
                                    device=CPU, config=config)
        trained_by.append((student, [e["validation_recall@20"] for e in epochs]))
    (first, first_log), (second, second_log) = trained_by
    assert first_log == second_log and len(first_log) == 2
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                  second.model.state_dict().values()))

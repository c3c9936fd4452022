"""Learner building blocks on small inputs: metrics by hand, id maps, sequences, checkpoints,
determinism and catalog growth (real MovieLens slices, id-only model, no text encoder)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from learner.bundle import ModelBundle
from learner.checkpoint import ChecksumMismatch, dump_bundle, load_bundle
from learner.evaluate import BundleScorer, Popularity, evaluate, metrics_at, ranks
from learner.finetune import FineTuneConfig, fine_tune
from learner.idmap import IdMap, Vocabulary
from learner.model import ModelConfig
from learner.sequences import history_batch, next_item_examples, training_sequences
from learner.trainer import TrainConfig, Trainer, scores_over
from streams import movielens

SMALL = ModelConfig(dim=32, layers=1, heads=2, max_len=20, use_text=False)


def frame(rows: list[tuple[str, str, int, str]], prefix: str = "e") -> pd.DataFrame:
    """Events from (user, item, ts, type) tuples, with event ids ``<prefix><row>``."""
    return pd.DataFrame({"event_id": [f"{prefix}{i}" for i in range(len(rows))], "type": [r[3] for r in rows],
                         "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "storefront": "shop",
                         "ts": [r[2] for r in rows], "session_id": None})


@pytest.fixture(scope="module")
def ml_events() -> pd.DataFrame:
    events = pd.DataFrame(movielens.to_events(movielens.load_ratings(), now_ms=1_763_000_000_000))
    return events.sample(frac=1.0, random_state=0)  # rows are not guaranteed sorted


def test_ranks_and_metrics_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3],    # target 2: one item above -> rank 1
                           [0.2, 0.2, 0.2, 0.8],    # target 0: tied with 1 and 2, below 3 -> rank 3
                           [0.1, 0.4, 0.3, 0.2]])   # target 1: top -> rank 0
    r = ranks(scores, torch.tensor([2, 0, 1]))
    assert r.tolist() == [1, 3, 0]
    m = metrics_at(r, (1, 2))
    assert m["recall@1"].tolist() == [0.0, 0.0, 1.0]
    assert m["recall@2"].tolist() == [1.0, 0.0, 1.0]
    assert m["ndcg@2"].tolist() == pytest.approx([1 / math.log2(3), 0.0, 1.0])


def test_evaluate_excludes_seen_items_but_not_the_target():
    vocab = Vocabulary(IdMap(["a", "b", "c", "d"]))
    history = frame([("u", "a", 1, "click"), ("u", "b", 2, "click")], prefix="h")
    events = frame([("u", "b", 3, "purchase"), ("u", "c", 4, "click"), ("v", "d", 5, "click")])
    popularity = Popularity(vocab, frame([("x", "a", 0, "click")] * 5 + [("x", "b", 0, "click")] * 4
                                               + [("x", "c", 0, "click")] * 3 + [("x", "d", 0, "click")] * 2))
    result = evaluate(popularity, events, history, ks=(1, 2))
    # u->b: a is seen, b (the target, seen before too) ranks 0. u->c: a, b seen -> c ranks 0.
    # v->d: nothing seen; a, b, c score higher -> rank 3.
    assert result["examples"] == 3
    assert result["recall@1"] == pytest.approx(2 / 3)
    assert result["recall@2"] == pytest.approx(2 / 3)
    assert result["ndcg@2"] == pytest.approx(2 / 3)


def test_unknown_target_is_a_miss():
    vocab = Vocabulary(IdMap(["a"]))
    result = evaluate(Popularity(vocab, frame([])), frame([("u", "zzz", 1, "click")]), ks=(5,))
    assert result["recall@5"] == 0.0


def test_id_map_is_append_only_and_round_trips_as_json():
    ids = IdMap(["m1", "m2"])
    assert ids.index(["m2", "m1", "new"]).tolist() == [3, 2, 1]
    older = IdMap.from_json(ids.to_json())
    assert ids.add(["m3", "m1"]) == ["m3"] and older.is_prefix_of(ids) and not ids.is_prefix_of(older)
    assert ids.index(["m3"]).tolist() == [4]


def test_training_sequences_predict_every_target_once_with_context_as_input():
    vocab = Vocabulary()
    history = frame([("u", f"h{i}", i, "click") for i in range(30)], prefix="h")
    window = frame([("u", f"w{i}", 100 + i, "purchase" if i % 2 else "click") for i in range(45)]
                   + [("v", "solo", 5, "click")], prefix="w")
    vocab.add_events(pd.concat([history, window])["user_id"], pd.concat([history, window])["item_id"], ["shop"])
    data = training_sequences(history, window, vocab, max_len=20)
    targets = data.targets[data.targets > 0]
    assert sorted(targets.tolist()) == sorted(vocab.items.index([f"w{i}" for i in range(45)]).tolist())
    first = (data.targets == vocab.items.index(["w0"])[0]).nonzero()[0]
    row, col = first.tolist()
    # the first window event is predicted from the last history event
    assert data.inputs.items[row, col] == vocab.items.index(["h29"])[0]
    assert set(data.target_types[data.targets > 0].tolist()) == {1, 2}


def test_next_item_examples_use_only_earlier_events():
    vocab = Vocabulary(IdMap(["a", "b", "c"]), IdMap(["u"]), IdMap(["shop"]))
    examples = next_item_examples(frame([("u", "a", 1, "click")], prefix="h"),
                                  frame([("u", "c", 3, "click"), ("u", "b", 2, "click")]), vocab, max_len=3)
    assert examples.inputs.items.tolist() == [[0, 0, 2], [0, 2, 3]]
    assert examples.targets.tolist() == [3, 4]
    assert examples.seen_items.tolist() == [2, 2, 3]


def test_model_is_causal():
    bundle = ModelBundle.build(SMALL, events=frame([("u", f"i{i}", i, "click") for i in range(10)]))
    model = bundle.model.eval()
    _, batch = history_batch(
        frame([("u", f"i{i}", i, "click") for i in range(8)]), bundle.vocab, SMALL.max_len)
    before = model(batch)
    batch.items[0, -1] = bundle.vocab.items.index(["i9"])[0]
    after = model(batch)
    assert torch.equal(before[:, :-1], after[:, :-1]) and not torch.equal(before[:, -1], after[:, -1])


def _train(events: pd.DataFrame, seed: int) -> ModelBundle:
    bundle = ModelBundle.build(SMALL, events=events, seed=seed)
    Trainer(bundle, TrainConfig(epochs=2, batch_size=64, seed=seed)).fit(events)
    return bundle


def test_same_seed_same_weights_and_exact_checkpoint_round_trip(ml_events):
    events = ml_events.sort_values("ts").iloc[:3000]
    first, second = _train(events, seed=7), _train(events, seed=7)
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name
    other = _train(events, seed=8)
    assert not torch.equal(first.model.item_ids.weight, other.model.item_ids.weight)

    first.info = {"window": 1}
    data, checksum = dump_bundle(first)
    loaded = load_bundle(data, checksum)
    assert loaded.vocab == first.vocab and loaded.info == {"window": 1}
    assert loaded.model.config == first.model.config
    original = first.model.state_dict()
    assert loaded.model.state_dict().keys() == original.keys()
    for name, tensor in loaded.model.state_dict().items():
        assert tensor.dtype == original[name].dtype and torch.equal(tensor, original[name]), name
    assert dump_bundle(loaded) == (data, checksum)

    with pytest.raises(ChecksumMismatch):
        load_bundle(data, "0" * 64)
    tampered = bytearray(data)
    tampered[-1] ^= 1
    with pytest.raises(ChecksumMismatch):
        load_bundle(bytes(tampered), checksum)


def test_catalog_growth_keeps_old_scores_and_ranks_new_ids(ml_events):
    ordered = ml_events.sort_values("ts")
    window, later = ordered.iloc[:3000], ordered.iloc[3000:4000]
    bundle = _train(window, seed=0)
    users, before = bundle.user_vectors(window)
    old_items = bundle.item_vectors()
    old_scores = before @ old_items.T

    added = bundle.extend(events=later)
    assert added["items"] > 0 and added["users"] == 0  # no user vectors: no user ids kept
    users_after, after = bundle.user_vectors(window)
    assert users_after == users
    assert torch.equal((after @ bundle.item_vectors()[:len(old_items)].T), old_scores)
    new_rows = bundle.item_vectors()[len(old_items):]
    assert torch.count_nonzero(new_rows) == 0  # no text, no interactions: the neutral zero vector

    grown, _ = fine_tune(bundle, later, history=window, previous=bundle,
                         config=FineTuneConfig(train=TrainConfig(epochs=2, batch_size=64)))
    assert grown.vocab == bundle.vocab and torch.count_nonzero(grown.item_vectors()[len(old_items):]) > 0
    assert torch.equal(bundle.item_vectors()[len(old_items):], new_rows)  # fine_tune trained a copy
    assert 0.0 <= evaluate(BundleScorer(grown), ordered.iloc[4000:4500], ordered.iloc[:4000])["recall@20"] <= 1.0


def test_sampled_scores_are_the_full_scores_of_the_candidates(ml_events):
    bundle = ModelBundle.build(ModelConfig(dim=16, layers=1, heads=2, max_len=20), events=ml_events.iloc[:2000],
                               seed=3)
    bundle.model.item_text.normal_()  # a text tower with something in it
    model = bundle.model.eval()
    examples = next_item_examples(None, ml_events.iloc[2000:2100], bundle.vocab, 20)
    inputs, mask = examples.inputs, torch.zeros(len(examples), 20, dtype=torch.bool)
    mask[:, -1] = True
    candidates = torch.tensor([3, 7, 50, 400])
    with torch.no_grad():
        states, scores = scores_over(model, inputs, mask, candidates)
        full_states = model(inputs)[mask]
        full = model.logits(full_states, model.item_vectors())
        assert torch.allclose(model.item_vectors(candidates), model.item_vectors()[candidates], atol=1e-5)
    assert torch.allclose(states, full_states, atol=1e-5)
    assert torch.allclose(scores, full[:, candidates], atol=1e-4)


def test_sampled_loss_is_the_full_loss_when_every_item_is_surely_a_candidate(ml_events):
    """The log-Q correction removes the sampling, not the popularity: with so many uniform draws
    that every item is a candidate, the corrected sampled loss is the full softmax loss."""
    events = ml_events.iloc[:3000]
    bundle = ModelBundle.build(ModelConfig(dim=16, layers=1, heads=2, max_len=20), events=events, seed=3)
    trainer = Trainer(bundle, TrainConfig(loss="sampled", negatives=100 * len(bundle.vocab.items)))
    trainer.model, trainer.epoch_targets = bundle.model.eval(), events
    counts = torch.bincount(torch.from_numpy(bundle.vocab.items.index(events["item_id"])),
                            minlength=len(bundle.vocab.items))
    trainer.target_shares = counts / counts.sum()
    inputs, targets, types = next(training_sequences(None, events, bundle.vocab, 20).batches(64, torch.Generator()))
    mask = targets > 0
    with torch.no_grad():
        step, logits, labels = trainer._sampled_step(inputs, targets, types, mask)
        full = bundle.model.logits(step.states, bundle.model.item_vectors())
    assert len(step.candidates) == len(bundle.vocab.items) - 2  # every item but padding and unknown
    sampled_loss = torch.nn.functional.cross_entropy(logits, labels)
    full_loss = torch.nn.functional.cross_entropy(full, targets[mask])
    assert abs(sampled_loss.item() - full_loss.item()) < 1e-4, (sampled_loss, full_loss)


def test_sampled_softmax_learns_and_distils_like_the_full_one(ml_events):
    events = ml_events.sort_values("ts")
    train, test = events.iloc[:16000], events.iloc[16000:17000]
    results = {}
    for loss in ("full", "sampled"):
        base = ModelBundle.build(SMALL, events=events, seed=1)
        settings = FineTuneConfig(train=TrainConfig(epochs=4, batch_size=128, lr=3e-3, seed=1, loss=loss,
                                                    negatives=256))
        first, _ = fine_tune(base, train.iloc[:8000], config=settings)
        second, epochs = fine_tune(first, train.iloc[8000:], history=train.iloc[:8000], previous=first,
                                   config=settings)
        assert all(math.isfinite(e["loss"]) for e in epochs)
        results[loss] = evaluate(BundleScorer(second), test, train, ks=(20,))["recall@20"]
    popular = evaluate(Popularity(second.vocab, train), test, train, ks=(20,))["recall@20"]
    assert results["sampled"] > popular and results["sampled"] > 0.8 * results["full"], (results, popular)


def test_evaluation_is_the_same_whatever_the_batch(ml_events):
    """Large catalogs are ranked fewer examples at a time; the metrics must not depend on it."""
    events = ml_events.sort_values("ts")
    bundle = ModelBundle.build(ModelConfig(dim=8, heads=1, max_len=20, use_text=False), events=events, seed=4)
    one_go = evaluate(BundleScorer(bundle), events.iloc[3000:3400], events.iloc[:3000], ks=(20,), with_loss=True)
    batched = evaluate(BundleScorer(bundle), events.iloc[3000:3400], events.iloc[:3000], ks=(20,), with_loss=True,
                       batch_size=7)
    assert one_go["examples"] == batched["examples"] == 400
    assert all(math.isclose(one_go[m], batched[m], rel_tol=1e-5) for m in ("recall@20", "ndcg@20", "loss"))

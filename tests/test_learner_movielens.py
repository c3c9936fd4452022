"""The learner on real MovieLens-100k windows with the real MiniLM text encoder.

The first 60,000 ratings (in time) are four sealed windows of 15,000; each window fine-tunes
the previous bundle (history as context, a rehearsal sample of older events, distillation
from the previous bundle, early stopping on the window's last 10%); the next 15,000 ratings
are the test window.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import pytest
import torch

from learner.bundle import ModelBundle
from learner.checkpoint import dump_bundle, load_bundle
from learner.evaluate import BundleScorer, Popularity, evaluate
from learner.finetune import FineTuneConfig, fine_tune
from learner.model import ModelConfig
from learner.text import TextEncoder
from learner.trainer import TrainConfig
from streams import movielens

WINDOW = 15_000
WINDOWS = 4
pytestmark = pytest.mark.slow  # four MovieLens fine-tunes: minutes on 2 CPUs


@pytest.fixture(scope="module")
def movielens_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    events = pd.DataFrame(movielens.to_events(movielens.load_ratings(), now_ms=1_763_000_000_000))
    catalog = pd.DataFrame(movielens.to_catalog(movielens.load_movies()))
    return events.sort_values(["ts", "event_id"], kind="stable").reset_index(drop=True), catalog


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


@pytest.fixture(scope="module")
def text_cache(movielens_text_vectors) -> dict:
    return dict(movielens_text_vectors)


@pytest.fixture(scope="module")
def trained(movielens_frames, encoder, text_cache) -> ModelBundle:
    events, catalog = movielens_frames
    logging.getLogger("learner").setLevel(logging.INFO)
    started = time.perf_counter()
    bundle = ModelBundle.build(ModelConfig(), catalog=catalog, encoder=encoder, cache=text_cache, seed=0)
    print(f"\nbuilt bundle, {len(text_cache)} item texts' vectors at hand, in {time.perf_counter() - started:.1f}s")
    config = FineTuneConfig(train=TrainConfig(epochs=15, batch_size=256, lr=3e-3, seed=0), rehearsal_ratio=0.2)
    previous = None
    for w in range(WINDOWS):
        window, history = events.iloc[w * WINDOW:(w + 1) * WINDOW], events.iloc[:w * WINDOW]
        rehearsal = history.sample(n=min(len(history), 5_000), random_state=w)
        started = time.perf_counter()
        bundle, epochs = fine_tune(bundle, window, history=history, rehearsal=rehearsal, previous=previous,
                                   catalog=catalog, encoder=encoder, cache=text_cache, config=config)
        previous = bundle
        print(f"window {w}: {len(window)} events, {len(epochs)} epochs, {time.perf_counter() - started:.1f}s, "
              f"validation recall@20 {max(e['validation_recall@20'] for e in epochs):.3f}")
    return bundle


def test_beats_popularity_on_the_next_window(movielens_frames, trained):
    events, _ = movielens_frames
    history, test = events.iloc[:WINDOWS * WINDOW], events.iloc[WINDOWS * WINDOW:(WINDOWS + 1) * WINDOW]
    model = evaluate(BundleScorer(trained), test, history)
    popular_all = evaluate(Popularity(trained.vocab, history), test, history)
    popular_recent = evaluate(Popularity(trained.vocab, history.iloc[-WINDOW:]), test, history)
    print(f"\nrecall@20 model {model['recall@20']:.4f}, popularity (all history) {popular_all['recall@20']:.4f}, "
          f"popularity (last window) {popular_recent['recall@20']:.4f}; ndcg@20 model {model['ndcg@20']:.4f}, "
          f"popularity {popular_all['ndcg@20']:.4f}")
    baseline = max(popular_all["recall@20"], popular_recent["recall@20"])
    assert model["examples"] == len(test)
    assert model["recall@20"] >= 1.3 * baseline
    assert model["ndcg@20"] >= 1.3 * max(popular_all["ndcg@20"], popular_recent["ndcg@20"])


DISNEY_CLASSICS = ["Snow White and the Seven Dwarfs", "Pinocchio", "Cinderella", "Alice in Wonderland", "Fantasia",
                   "Dumbo", "Beauty and the Beast", "Aladdin", "Pocahontas", "Hunchback of Notre Dame, The",
                   "Hercules", "Aristocats, The", "Sword in the Stone, The", "Fox and the Hound, The"]


def test_cold_item_with_text_reaches_a_matching_user(movielens_frames, trained, encoder, text_cache):
    """A sequel that exists only in the catalog is recommended to a fan of Disney animation."""
    _, catalog = movielens_frames
    bundle = trained.copy()
    title, genres = "The Lion King II: Simba's Pride", "Animation, Children's, Musical"
    new_item = pd.DataFrame([{"storefront": "movielens", "item_id": "m-new-1", "title": title, "category": genres,
                              "description": f"{title} is a 1998 film. Genres: {genres}."}])
    assert bundle.extend(catalog=new_item, encoder=encoder, cache=text_cache)["items"] == 1

    seen = [catalog.loc[catalog["title"] == t, "item_id"].iloc[0] for t in DISNEY_CLASSICS]
    fan = pd.DataFrame({"event_id": [f"fan-{i}" for i in range(len(seen))], "type": "click", "user_id": "u-fan",
                        "item_id": seen, "storefront": "movielens",
                        "ts": np.arange(len(seen), dtype=np.int64) + 1_763_000_000_000, "session_id": None})
    _, user = bundle.user_vectors(fan)
    scores = bundle.model.logits(user, bundle.item_vectors())[0]
    scores[torch.from_numpy(bundle.vocab.items.index(seen))] = float("-inf")
    top20 = [bundle.vocab.items.keys()[i - 2] for i in scores.topk(20).indices.tolist()]
    rank = top20.index("m-new-1") if "m-new-1" in top20 else None
    print(f"\ncold item rank {rank}; top 5: {top20[:5]}")
    assert rank is not None


def test_trained_bundle_round_trips_exactly(trained, movielens_frames):
    events, _ = movielens_frames
    data, checksum = dump_bundle(trained)
    loaded = load_bundle(data, checksum)
    assert loaded.vocab == trained.vocab and loaded.text_hashes == trained.text_hashes
    for name, tensor in trained.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    sample = events.iloc[:2000]
    assert torch.equal(loaded.user_vectors(sample)[1], trained.user_vectors(sample)[1])
    assert torch.equal(loaded.item_vectors(), trained.item_vectors())

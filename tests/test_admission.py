"""Id admission and expiry under a churning stream: bounded id tables, retired items still recommendable.

A synthetic shop where every window brings a new cohort of products and shoppers and the
cohorts of two windows ago go quiet; the real MiniLM encoder embeds the product texts.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from learner.admission import DAY_MS, IdPolicy
from learner.bundle import ModelBundle
from learner.checkpoint import _header_metadata, dump_bundle, load_bundle, sha256
from learner.finetune import FineTuneConfig, fine_tune
from learner.model import ModelConfig
from learner.text import TextEncoder
from learner.trainer import TrainConfig
from serving.snapshot import build_snapshot

KINDS = ["hiking boots", "rain jacket", "coffee grinder", "desk lamp", "yoga mat", "chef knife"]
COHORT_ITEMS, COHORT_USERS, WINDOWS = 24, 12, 8


def cohort(window: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Window ``window``'s new products (catalog rows) and its shoppers' events, a day apart per window."""
    rng = np.random.default_rng(window)
    items = [f"w{window}-p{i}" for i in range(COHORT_ITEMS)]
    titles = [f"{KINDS[i % 6]} model {window}-{i}" for i in range(COHORT_ITEMS)]
    catalog = pd.DataFrame({"item_id": items, "title": titles,
                            "category": [KINDS[i % 6] for i in range(COHORT_ITEMS)], "description": None,
                            "storefront": "shop"})
    n = 240
    events = pd.DataFrame({"event_id": [f"w{window}-e{i}" for i in range(n)], "type": "click",
                           "user_id": [f"w{window}-u{u}" for u in rng.integers(0, COHORT_USERS, n)],
                           "item_id": [items[i] for i in rng.integers(0, COHORT_ITEMS, n)], "storefront": "shop",
                           "ts": window * DAY_MS + np.sort(rng.integers(0, DAY_MS // 2, n)), "session_id": None})
    return catalog, events


@pytest.fixture(scope="module")
def churned():
    """Eight windows trained one after another with min count 2 and a TTL of 2.5 days; the
    table sizes after each, the final bundle and the whole catalog."""
    encoder = TextEncoder()
    policy = IdPolicy(min_count=2, ttl_ms=int(2.5 * DAY_MS))
    config = FineTuneConfig(train=TrainConfig(epochs=1, batch_size=64, seed=1), holdout=0, rehearsal_ratio=0,
                            ids=policy)
    bundle = ModelBundle.build(ModelConfig(dim=16, layers=1, heads=2, max_len=20, user_embeddings=True), seed=1)
    catalogs, sizes = [], []
    for window in range(WINDOWS):
        catalog, events = cohort(window)
        catalogs.append(catalog)
        bundle, _ = fine_tune(bundle, events, catalog=pd.concat(catalogs, ignore_index=True), encoder=encoder,
                              previous=bundle, config=config)
        sizes.append(bundle.info["ids"])
    return bundle, sizes, pd.concat(catalogs, ignore_index=True), encoder


def test_id_tables_stay_bounded_while_the_vocabulary_grows(churned):
    bundle, sizes, catalog, _ = churned
    assert len(bundle.vocab.items) - 2 == WINDOWS * COHORT_ITEMS  # every item is still known ...
    active = 3  # ... but only the cohorts of the last 2.5 days keep id rows
    for table, cohort_size in (("items", COHORT_ITEMS), ("users", COHORT_USERS)):
        rows = [s[table]["rows"] for s in sizes]
        assert max(rows) <= 2 + active * cohort_size, rows
        assert rows[-1] == rows[-2]  # steady state: as many retired as admitted
        assert sizes[-1][table]["retired"] > 0 and sizes[-1][table]["added"] > 0
    model = bundle.model
    assert model.item_ids.num_embeddings == 2 + int((model.item_id_rows[2:] > 0).sum())  # compacted
    retired = bundle.vocab.items.index([f"w0-p{i}" for i in range(COHORT_ITEMS)])
    assert (model.item_id_rows[retired] == 0).all() and (model.item_counts[retired] == 0).all()
    assert "admit after 2 interactions, retire after 2.5 days unseen" == sizes[-1]["policy"]


def test_retired_items_stay_recommendable_by_their_text(churned):
    bundle, _, catalog, encoder = churned
    retired = "w0-p3"  # a desk lamp of the first cohort
    row = int(bundle.vocab.items.index([retired])[0])
    assert bundle.model.item_id_rows[row] == 0
    vector = bundle.item_vectors()[row]
    assert vector.norm() > 0  # its text projection
    assert torch.allclose(vector, bundle.model.text_projection(bundle.model.item_text[row].float()), atol=1e-6)
    recommender = build_snapshot({"id": 1}, bundle, catalog, {}, encoder)
    similar = [s.item_id for s in recommender.similar(retired, 10)]
    assert similar and all(catalog.set_index("item_id").loc[s, "category"] == "desk lamp" for s in similar[:3])
    found = [s.item_id for s in recommender.search(encoder.encode(["desk lamp model 0-3"])[0], 5)]
    assert retired in found


def test_admission_state_survives_a_checkpoint_and_old_bundles_load(churned):
    bundle, _, _, _ = churned
    data, checksum = dump_bundle(bundle)
    loaded = load_bundle(data, checksum)
    for name in ("item_id_rows", "item_counts", "item_last_seen", "user_id_rows"):
        assert torch.equal(getattr(loaded.model, name), getattr(bundle.model, name)), name
    assert torch.equal(loaded.item_vectors(), bundle.item_vectors())
    # a bundle written before admission existed: a row for every id, no admission buffers
    old = ModelBundle.build(ModelConfig(dim=8, heads=1, use_text=False), events=cohort(0)[1], seed=2)
    tensors = {k: v for k, v in load_tensors(dump_bundle(old)[0]).items() if "_id_rows" not in k
               and "_counts" not in k and "_last_seen" not in k}
    legacy = save_tensors(tensors, metadata={"streamrec": json.dumps(_header_metadata(dump_bundle(old)[0]))})
    revived = load_bundle(legacy, sha256(legacy))
    assert torch.equal(revived.model.item_id_rows, torch.arange(len(old.vocab.items)))
    assert torch.equal(revived.item_vectors(), old.item_vectors())


def test_a_model_without_user_vectors_keeps_no_user_ids():
    """Shoppers come and go by the million: without user vectors no user id is kept, in the
    vocabulary or in the weights; bundles of earlier releases, which kept them, load without them."""
    bundle = ModelBundle.build(ModelConfig(dim=8, heads=1, use_text=False), events=cohort(0)[1], seed=2)
    for window in range(1, 4):
        assert bundle.extend(events=cohort(window)[1])["users"] == 0
    assert bundle.vocab.users.keys() == [] and len(bundle.vocab.items) == 2 + 4 * COHORT_ITEMS
    data, _ = dump_bundle(bundle)
    metadata = _header_metadata(data)
    assert metadata["users"] == []
    metadata["users"] = [f"w0-u{u}" for u in range(COHORT_USERS)]  # as an earlier release wrote it
    earlier = save_tensors(load_tensors(data), metadata={"streamrec": json.dumps(metadata)})
    revived = load_bundle(earlier, sha256(earlier))
    assert revived.vocab == bundle.vocab
    assert torch.equal(revived.user_vectors(cohort(3)[1])[1], bundle.user_vectors(cohort(3)[1])[1])

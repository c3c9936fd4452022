"""Serving pieces without the worker: user histories, trending items, and a Recommender on a
model trained on real MovieLens-100k events with the real MiniLM encoder."""

from __future__ import annotations

import doctest
import random
import sys
import threading

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from learner.bundle import ModelBundle
from learner.finetune import FineTuneConfig, fine_tune
from learner.model import ModelConfig
from learner.text import TextEncoder
from learner.trainer import TrainConfig
from replay.codec import to_table
from runtime.memory import release_free_heap
from serving import history as history_module
from serving.compiled import CompiledModule, CompileError, compile_text_encoder
from serving.history import Trending, UserHistories
from serving.rankers import Click, Recommender, UnknownItem
from serving.snapshot import build_snapshot
from streams import movielens


def test_docstring_examples_run():
    assert doctest.testmod(history_module).failed == 0


events_strategy = st.lists(st.tuples(st.sampled_from(["u1", "u2"]), st.integers(0, 40), st.sampled_from(
    ["click", "purchase"])), max_size=60)


@settings(max_examples=200, deadline=None)
@given(events_strategy, st.randoms(use_true_random=False))
def test_histories_keep_the_newest_distinct_events_whatever_the_order_and_repeats(raw, rnd):
    events = [{"event_id": f"e{ts}-{user}", "type": kind, "user_id": user, "item_id": f"m{ts % 7}",
               "storefront": "shop", "ts": ts} for user, ts, kind in raw]
    events = list({e["event_id"]: e for e in events}.values())  # an event id names one event
    replayed = events + rnd.sample(events, len(events) // 2)  # some arrive twice
    rnd.shuffle(replayed)
    histories = UserHistories(max_events=5)
    for start in range(0, len(replayed), 7):
        histories.add(to_table(replayed[start:start + 7]))
    for user in ("u1", "u2"):
        mine = sorted((e["ts"], e["event_id"]) for e in events if e["user_id"] == user)
        assert [(e.ts, e.event_id) for e in histories.recent(user)] == mine[-5:]
        assert histories.purchased(user) == {e["item_id"] for e in events
                                             if e["user_id"] == user and e["type"] == "purchase"}


def test_trending_prefers_recent_events_and_keeps_storefronts_apart():
    hour = 3_600_000
    events = ([{"event_id": f"a{i}", "type": "click", "user_id": "u", "item_id": "old-hit", "storefront": "A",
                "ts": 0} for i in range(6)]
              + [{"event_id": f"b{i}", "type": "click", "user_id": "u", "item_id": "new-hit", "storefront": "A",
                  "ts": 3 * hour} for i in range(1)]
              + [{"event_id": f"c{i}", "type": "click", "user_id": "u", "item_id": "b-only", "storefront": "B",
                  "ts": 0} for i in range(2)])
    trending = Trending(half_life_s=3600)
    trending.add(to_table(events))
    top = trending.top("A", 5)
    assert [item for item, _ in top] == ["new-hit", "old-hit"]  # 6 events 3 half-lives ago weigh 0.75
    assert top[1][1] == pytest.approx(6 / 8)
    assert trending.top("A", 5, exclude={"new-hit"}) == [("old-hit", pytest.approx(0.75))]
    assert [item for item, _ in trending.top("B", 5)] == ["b-only"]
    assert trending.top("nowhere", 5) == []
    # far later events rescale the weights instead of overflowing
    trending.add(to_table([{"event_id": "late", "type": "click", "user_id": "u", "item_id": "late",
                            "storefront": "A", "ts": 2000 * hour}]))
    assert trending.top("A", 1) == [("late", pytest.approx(1.0))]


@pytest.fixture(scope="module")
def movielens_data():
    events = pd.DataFrame(movielens.to_events(movielens.load_ratings(), now_ms=1_763_000_000_000))
    events = events.sort_values(["ts", "event_id"], kind="stable").reset_index(drop=True)
    catalog = pd.DataFrame(movielens.to_catalog(movielens.load_movies()))
    return events, catalog


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


@pytest.fixture(scope="module")
def text_cache(movielens_text_vectors) -> dict:
    """MiniLM vectors of the catalog's texts, shared by every snapshot here (each would encode them again)."""
    return dict(movielens_text_vectors)


@pytest.fixture(scope="module")
def recommender(movielens_data, encoder, text_cache) -> Recommender:
    """A model trained on the first 20,000 ratings, knowing only the catalog items seen so far;
    the full catalog is given to the Recommender, so the rest are cold items."""
    events, catalog = movielens_data
    train = events.iloc[:20_000]
    known = catalog[catalog["item_id"].isin(set(train["item_id"]))]
    base = ModelBundle.build(ModelConfig(dim=32), catalog=known, events=train, encoder=encoder, cache=text_cache,
                             seed=0)
    bundle, _ = fine_tune(base, train, catalog=known, encoder=encoder, cache=text_cache,
                          config=FineTuneConfig(train=TrainConfig(epochs=2, batch_size=256, lr=3e-3, seed=0)))
    return build_snapshot({"id": 7}, bundle, catalog, {"default": set(train["item_id"])}, encoder, text_cache)


def test_recommendations_leave_out_purchases_and_explain_themselves(recommender, movielens_data):
    events, _ = movielens_data
    user_events = events.iloc[:20_000].groupby("user_id").filter(lambda g: len(g) >= 20)
    user = user_events["user_id"].iloc[0]
    rows = user_events[user_events["user_id"] == user]
    history = [history_module.Interaction(r.ts, r.event_id, r.item_id, r.type, r.storefront)
               for r in rows.itertuples()]
    bought = {e.item_id for e in history if e.type == "purchase"}
    assert bought
    items = recommender.recommend(history, 50, exclude=bought)
    assert len(items) == 50 and not bought & {s.item_id for s in items}
    assert [s.score for s in items] == sorted((s.score for s in items), reverse=True)
    assert all(s.because[0] in {e.item_id for e in history} and -1 <= s.because[1] <= 1 for s in items)
    with_purchases = {s.item_id for s in recommender.recommend(history, 200)}
    assert bought & with_purchases  # asked to include them, the model ranks some bought items high
    assert recommender.recommend(history, 10, storefront="default")


def test_similar_items_work_for_cold_catalog_items(recommender, movielens_data):
    events, catalog = movielens_data
    seen = set(events.iloc[:20_000]["item_id"])
    cold = catalog[~catalog["item_id"].isin(seen)]
    assert len(cold) > 50
    # a cold item starts among its MiniLM look-alikes, so its nearest items by vector are
    # often its nearest items by text (by chance the overlap would be about 0.06 of 10)
    overlaps = []
    for item in cold["item_id"].iloc[:20]:
        similar = recommender.similar(item, 10)
        assert len(similar) == 10 and item not in {s.item_id for s in similar}
        text_vector = recommender.search_index.rows(recommender.vocab.items.index([item]))[0]
        by_text = {s.item_id for s in recommender.search(text_vector, 11)} - {item}
        overlaps.append(len(by_text & {s.item_id for s in similar}))
    assert sum(overlaps) / len(overlaps) >= 1, overlaps
    with pytest.raises(UnknownItem):
        recommender.similar("no-such-item", 5)


def test_search_finds_titles_by_meaning_and_personalises(recommender, encoder, movielens_data):
    titles = recommender.titles
    found = recommender.search(encoder.encode(["space opera with starships"])[0], 10)
    assert any(word in titles[s.item_id] for s in found for word in ("Star", "Space", "Galaxy", "Alien"))
    query = encoder.encode(["love story"])[0]
    plain = [s.item_id for s in recommender.search(query, 20)]
    events, _ = movielens_data
    rnd = random.Random(0)
    user_rows = events.iloc[:20_000][events.iloc[:20_000]["user_id"] == rnd.choice(events["user_id"].unique()[:50])]
    history = [history_module.Interaction(r.ts, r.event_id, r.item_id, r.type, r.storefront)
               for r in user_rows.itertuples()]
    personal = [s.item_id for s in recommender.search(query, 20, history)]
    assert len(personal) == 20 and personal != plain  # same candidates, re-ranked for the user
    assert len(set(personal) & set(plain)) >= 10


class CountingEncoder:
    """The real MiniLM encoder, counting its calls."""

    def __init__(self, encoder: TextEncoder):
        self.encoder, self.calls = encoder, []

    def key(self, text: str) -> str:
        return self.encoder.key(text)

    def copy(self):
        return self

    @property
    def model(self):
        return self.encoder.model

    def encode(self, texts: list[str]):
        self.calls.append(list(texts))
        return self.encoder.encode(texts)


def test_queries_arriving_together_are_encoded_together_and_cached(encoder):
    import asyncio

    import numpy as np

    from runtime.blocking import StoreThread
    from serving.queries import QueryEncoder

    counting = CountingEncoder(encoder)
    queries = [f"waterproof hiking boots size {i}" for i in range(20)]

    async def run():
        batcher = QueryEncoder(counting, StoreThread("query"), cache_size=8)
        vectors = await asyncio.gather(*(batcher.encode(q) for q in queries + queries[:5]))
        calls_after_burst = len(counting.calls)
        again = await batcher.encode(queries[-1])  # among the 8 newest: cached
        with pytest.raises(TypeError):  # a query that is not text is refused before it joins a batch
            await batcher.encode(None)
        await batcher.encode("fine on its own")
        return vectors, calls_after_burst, again

    vectors, calls, again = asyncio.run(run())
    assert calls < len(queries) and sum(len(c) for c in counting.calls[:calls]) == len(queries)  # repeats shared
    alone = encoder.encode(queries)
    assert np.allclose(np.stack(vectors[:20]), alone, atol=1e-5) and np.allclose(vectors[20], alone[0], atol=1e-5)
    assert np.allclose(again, alone[-1], atol=1e-5) and counting.calls[calls:] == [["fine on its own"]]


def _shops(catalog: pd.DataFrame) -> pd.DataFrame:
    """The catalog in two storefronts: one sells the even rows, the other the odd ones."""
    return catalog.assign(storefront=["even" if i % 2 == 0 else "odd" for i in range(len(catalog))])


def _bundle_of(recommender: Recommender) -> ModelBundle:
    return ModelBundle(recommender.model, recommender.vocab, {}, {"text_blend": recommender.blend.to_dict()})


@pytest.fixture(scope="module")
def indexed(recommender, movielens_data, encoder, text_cache) -> tuple[Recommender, Recommender]:
    """The same version over the two storefronts, exact and from inverted-file indexes
    (ann_above=0: every search goes through an index)."""
    shops = _shops(movielens_data[1])
    return (build_snapshot({"id": 7}, _bundle_of(recommender), shops, {}, encoder, text_cache),
            build_snapshot({"id": 7}, _bundle_of(recommender), shops, {}, encoder, text_cache, ann_above=0))


def test_indexes_find_what_exact_search_finds_and_respect_filters(indexed, movielens_data):
    from serving.index import recall_at_k

    exact, approximate = indexed
    assert approximate.recommend_index.approximate and not exact.recommend_index.approximate
    events, catalog = movielens_data
    rng = random.Random(3)
    train = events.iloc[:20_000]
    users = train.groupby("user_id").filter(lambda g: len(g) >= 10)["user_id"].unique().tolist()
    histories = [[history_module.Interaction(r.ts, r.event_id, r.item_id, r.type, r.storefront)
                  for r in train[train["user_id"] == user].itertuples()] for user in rng.sample(users, 40)]
    queries = torch.stack([approximate.user_vector(h) for h in histories]).numpy()
    measured = recall_at_k(approximate.recommend_index, exact.recommend_index, queries)
    assert measured >= 0.95, measured
    even, overlaps = set(catalog["item_id"].iloc[::2]), []
    for history in histories[:10]:
        bought = {e.item_id for e in history[:5]}
        found = approximate.recommend(history, 20, storefront="even", exclude=bought)
        ids = [s.item_id for s in found]
        assert len(ids) == 20 and set(ids) <= even and not set(ids) & bought
        assert [s.score for s in found] == sorted((s.score for s in found), reverse=True)
        wanted = {s.item_id for s in exact.recommend(history, 20, storefront="even", exclude=bought)}
        overlaps.append(len(wanted & set(ids)) / 20)
        item = history[-1].item_id
        similar = {s.item_id for s in approximate.similar(item, 10)}
        overlaps.append(len(similar & {s.item_id for s in exact.similar(item, 10)}) / 10)
    assert sum(overlaps) / len(overlaps) >= 0.95, overlaps


def test_new_items_shoppers_click_since_the_version_rise_in_the_lists_their_text_fits(indexed, movielens_data,
                                                                                   encoder, text_cache):
    """A version with a live term: a new catalog item nobody had clicked when it was trained enters
    the top 20 once shoppers click it (exactly and through the indexes), for a shopper whose recent
    items its text does not go against; one whose text does go against them stays out, and clicks
    on a warm item, which the model has evidence for, change nothing."""
    from dataclasses import replace

    exact, _ = indexed
    events, catalog = movielens_data
    train = events.iloc[:20_000]
    bundle = _bundle_of(exact)
    blend = replace(exact.blend, live=2.0 * max(exact.blend.weight, 1.0))
    bundle.info["text_blend"] = blend.to_dict()
    shops = _shops(catalog)
    live_exact, live_indexed = (build_snapshot({"id": 8}, bundle, shops, {}, encoder, text_cache, ann_above=above)
                                for above in (None, 0))
    user = train["user_id"].value_counts().index[5]
    history = [history_module.Interaction(r.ts, r.event_id, r.item_id, r.type, r.storefront)
               for r in train[train["user_id"] == user].itertuples()]
    profile, offset = live_exact._profile(history)

    def text_fits(item: str) -> bool:  # profile(u) . text(i) >= 0, as learner.blend.TextBlend scores it
        row = live_exact.vocab.items.index([item])
        return not live_exact._has_text[row[0]] or bool(live_exact.search_index.rows(row)[0] @ profile - offset >= 0)

    unseen = [i for i in catalog["item_id"] if i not in set(train["item_id"])
              and i not in {s.item_id for s in live_exact.recommend(history, 200)}]
    new = next(i for i in unseen if text_fits(i))
    against = next(i for i in unseen if not text_fits(i))
    warm = live_exact.recommend(history, 40)[-1].item_id  # ranked 40th, no live term can lift it
    for snapshot in (live_exact, live_indexed):
        before = [s.item_id for s in snapshot.recommend(history, 20)]
        snapshot.set_live({warm: 1_000})
        assert [s.item_id for s in snapshot.recommend(history, 20)] == before
        snapshot.set_live({new: 1_000, against: 1_000, warm: 1_000})
        after = [s.item_id for s in snapshot.recommend(history, 20)]
        assert new in after and new not in before and warm not in after and against not in after
    exact.set_live({new: 1_000})  # a version without a live term takes none
    assert new not in {s.item_id for s in exact.recommend(history, 20)}


def test_catalog_additions_extend_the_indexes_of_the_same_version(indexed, movielens_data, encoder, text_cache):
    _, indexed = indexed
    shops = _shops(movielens_data[1])
    sequel = pd.DataFrame([{"item_id": "m-sequel", "title": "Star Wars: Return of the Padawan (1999)",
                            "category": "Action, Sci-Fi", "description": None, "storefront": "odd"}])
    grown = build_snapshot({"id": 7}, _bundle_of(indexed), pd.concat([shops, sequel], ignore_index=True), {},
                        encoder, text_cache, ann_above=0, previous=indexed)
    assert grown.recommend_index.index.ntotal == indexed.recommend_index.index.ntotal + 1  # one insert, no rebuild
    assert indexed.recommend_index.index.ntotal == len(indexed.item_ids)  # the old snapshot is untouched
    similar = [s.item_id for s in grown.similar("m-sequel", 10)]
    assert "m-sequel" not in similar and len(similar) == 10
    titles = grown.titles
    assert any("Star Wars" in titles[i] or "Empire" in titles[i] or "Jedi" in titles[i] for i in similar), similar
    other_version = build_snapshot({"id": 8}, _bundle_of(indexed), shops, {}, encoder, text_cache, ann_above=0,
                                previous=grown)
    assert other_version.recommend_index.index is not grown.recommend_index.index
    assert other_version.recommend_index.index.ntotal == len(other_version.item_ids)


def test_an_int8_snapshot_answers_like_the_float32_one_in_a_quarter_of_the_memory(indexed, movielens_data,
                                                                                    encoder, text_cache):
    exact, _ = indexed
    events, catalog = movielens_data
    compact = build_snapshot({"id": 7}, _bundle_of(exact), _shops(catalog), {}, encoder, text_cache, precision="int8")
    assert compact.recommend_index.nbytes * 3.5 < exact.recommend_index.nbytes
    train, even, overlaps = events.iloc[:20_000], set(catalog["item_id"].iloc[::2]), []
    for user in train["user_id"].unique()[:20]:
        history = [history_module.Interaction(r.ts, r.event_id, r.item_id, r.type, r.storefront)
                   for r in train[train["user_id"] == user].itertuples()]
        assert torch.allclose(compact.user_vector(history), exact.user_vector(history), atol=0.05)
        found = [s.item_id for s in compact.recommend(history, 20, storefront="even")]
        assert len(found) == 20 and set(found) <= even
        overlaps.append(len(set(found) & {s.item_id for s in exact.recommend(history, 20, storefront="even")}) / 20)
        item = history[-1].item_id
        similar = {s.item_id for s in exact.similar(item, 10)}
        overlaps.append(len({s.item_id for s in compact.similar(item, 10)} & similar) / 10)
    assert sum(overlaps) / len(overlaps) >= 0.9, overlaps


def test_freed_heap_goes_back_to_the_operating_system():
    def rss_mib() -> float:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

    # 64 KiB blocks come from the C heap; keeping every tenth leaves holes glibc would otherwise keep
    blocks = [np.ones(8192) for _ in range(4000)]
    kept = blocks[::10]
    del blocks
    before = rss_mib()
    assert release_free_heap()
    assert rss_mib() < before - 100, (before, rss_mib())  # about 225 MiB of the 250 freed went back
    assert all(block.sum() == 8192 for block in kept)  # and only free pages: the live blocks are intact


@pytest.mark.parametrize("metric, precision", [("ip", "int8"), ("ip", "float16"), ("cos", "int8"), ("cos", "float32")])
def test_an_index_holds_the_only_copy_and_scores_like_the_vectors_it_holds(metric, precision):
    from serving.index import ItemIndex

    rng = np.random.default_rng(5)
    shared = rng.normal(size=16)  # the direction a model's item vectors share
    vectors = (3 * shared + rng.normal(size=(3000, 16))).astype(np.float32)
    index = ItemIndex(vectors, metric, approximate=True, precision=precision)
    served = vectors / np.linalg.norm(vectors, axis=1, keepdims=True) if metric == "cos" else vectors
    codes = "float16" if (metric, precision) == ("ip", "int8") else precision  # see ItemIndex
    assert index.vectors is None and index.nbytes == 3000 * 16 * {"int8": 1, "float16": 2, "float32": 4}[codes]
    assert index.describe()["recall_at_20"] >= 0.95 and 1 <= index.probes <= index.lists
    tolerance = 0.02 * np.abs(served).max()  # int8: 1/255 of each dimension's range
    assert np.abs(index.rows(np.arange(2, 3000)) - served[2:]).max() < tolerance
    for query in rng.normal(size=(20, 16)).astype(np.float32):
        rows, scores = index.search(query, 10)
        unit = query / np.linalg.norm(query) if metric == "cos" else query
        assert np.allclose(scores, index.rows(rows) @ unit, atol=1e-3 * np.abs(scores).max())
        assert list(scores) == sorted(scores, reverse=True) and rows.min() >= 2

    changed, added = vectors.copy(), (3 * shared + rng.normal(size=(1, 16))).astype(np.float32)
    changed[10] = vectors[20]
    grown = index.extended(np.concatenate([changed, added]))
    added = added / np.linalg.norm(added) if metric == "cos" else added
    assert len(grown) == 3001 and grown.index.ntotal == 3001 and index.index.ntotal == 3000
    assert np.abs(grown.rows(np.array([10, 3000])) - [served[20], added[0]]).max() < tolerance
    assert np.abs(index.rows(np.array([10])) - served[10:11]).max() < tolerance  # the old index is untouched
    if metric == "cos":  # the inserted row is found, and the changed one where it now points
        assert grown.search(added[0], 1)[0][0] == 3000 and set(grown.search(vectors[20], 2)[0]) == {10, 20}
    more = (3 * shared + rng.normal(size=(3000, 16))).astype(np.float32)
    doubled = grown.extended(np.concatenate([changed, added, more]))  # grown too much: new lists, new tuning
    assert doubled.built_rows == 6001 and doubled.lists > grown.lists and doubled.describe()["recall_at_20"] >= 0.9


def test_a_filter_that_keeps_few_rows_scans_every_list_and_is_exact_over_them():
    from serving.index import ItemIndex

    rng = np.random.default_rng(6)
    vectors = rng.normal(size=(20_000, 16)).astype(np.float32)
    index, exact = ItemIndex(vectors, approximate=True, recall=0.5), ItemIndex(vectors)
    assert index.probes < index.lists
    for kept in (5, 50, 2_000):
        allowed = np.zeros(len(vectors), dtype=bool)
        allowed[rng.choice(np.arange(2, len(vectors)), kept, replace=False)] = True
        for query in rng.normal(size=(5, 16)).astype(np.float32):
            rows, scores = index.search(query, 20, allowed)
            assert len(rows) == min(20, kept) and allowed[rows].all()
            if kept <= 50:  # as few lists hold them: every list is scanned
                assert rows.tolist() == exact.search(query, 20, allowed)[0].tolist()


def test_a_query_encoder_copy_shares_the_weights_and_encodes_alongside_the_original(encoder, movielens_data):
    from concurrent.futures import ThreadPoolExecutor

    titles = movielens_data[1]["title"].astype(str).tolist()[:256]
    expected = encoder.encode(titles)
    copy = encoder.copy()
    with ThreadPoolExecutor(2) as pool:  # catalog encoding and query encoding at once, as in a worker
        futures = [pool.submit(e.encode, titles) for e in (encoder, copy, encoder, copy)]
        results = [f.result() for f in futures]
    assert copy.model is encoder.model and copy.tokenizer is not encoder.tokenizer
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-5)


def test_a_compiled_snapshot_computes_states_and_answers_as_torch_does(recommender, movielens_data, encoder,
                                                                      text_cache):
    events, catalog = movielens_data
    compiled = build_snapshot({"id": 7}, _bundle_of(recommender), catalog, {"default": set()}, encoder, text_cache)
    rows = events.iloc[:20_000]
    rows = rows[rows["user_id"] == rows["user_id"].value_counts().index[0]]  # the longest history: over max_len
    history = [history_module.Interaction(r.ts, r.event_id, r.item_id, r.type, r.storefront) for r in rows.itertuples()]
    assert len(history) > compiled.max_len and {e.type for e in history} == {"click", "purchase"}
    expected = recommender.user_vector(history)
    assert _answers_meanwhile(compiled.compile,
                              lambda: torch.allclose(compiled.user_vector(history), expected, atol=1e-4))
    strangers = [Click("no-such-item"), Click(history[0].item_id, "purchase", "no-such-shop")]
    for events_read in (history[:1], history[:7], history, strangers, []):
        assert torch.allclose(compiled.user_vector(events_read), recommender.user_vector(events_read), atol=1e-4)
        if events_read:
            assert [s.item_id for s in compiled.recommend(events_read, 20)] == \
                [s.item_id for s in recommender.recommend(events_read, 20)]
    query = encoder.encode(["space adventure"])[0]
    assert [s.item_id for s in compiled.search(query, 10, history)] == \
        [s.item_id for s in recommender.search(query, 10, history)]


def _answers_meanwhile(compile, answer_unchanged) -> bool:
    """Runs ``compile`` on a thread of its own, checking ``answer_unchanged()`` until it is done;
    whether it compiled."""
    compiled = []
    thread = threading.Thread(target=lambda: compiled.append(compile()))
    thread.start()
    while thread.is_alive():
        assert answer_unchanged()
    return compiled == [True]


class DataDependent(torch.nn.Module):
    """A module whose graph depends on its input's values, which ``torch.export`` cannot trace."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x


def test_a_module_that_cannot_be_exported_is_refused_with_the_reason():
    with pytest.raises(CompileError, match="DataDependent could not be exported to ONNX: .+"):
        CompiledModule(DataDependent().eval(), (torch.ones(3, 2),), ("x",), {"x": {0: "rows"}})

    class Local(torch.nn.Linear):  # the export process cannot import it
        pass

    with pytest.raises(CompileError, match="Local could not be sent to the export process"):
        CompiledModule(Local(2, 2).eval(), (torch.ones(3, 2),), ("x",), {"x": {0: "rows"}})


def test_a_compiled_query_encoder_encodes_as_torch_does(encoder):
    texts = ["Star Wars (1977)", "romantic comedy", "x", "a long description of a film, " * 30]
    expected = encoder.encode(texts)
    copy = encoder.copy()
    assert _answers_meanwhile(lambda: compile_text_encoder(copy),
                              lambda: np.allclose(encoder.encode(texts), expected, atol=1e-5))
    assert copy.is_compiled and not encoder.is_compiled
    assert np.abs(copy.encode(texts * 20) - np.tile(expected, (20, 1))).max() < 1e-4  # in batches of 64 too


def test_trending_read_while_windows_are_added_ends_with_every_item():
    """Requests rank trending items on the web thread while the serving thread adds windows: a
    ranking made from weights being added to is never kept once the window is in."""
    trending = Trending(half_life_s=3600)
    windows = [to_table([{"event_id": f"{w}-{i}", "type": "click", "user_id": "u", "item_id": f"i{w}-{i}",
                          "storefront": "shop", "ts": 1_000 * w} for i in range(30)]) for w in range(40)]
    done = threading.Event()

    def serve():
        for window in windows:
            trending.add(window)
        done.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can, so reads land mid-add
    try:
        adder = threading.Thread(target=serve)
        adder.start()
        while not done.is_set():
            trending.top("shop", 2_000)
        adder.join()
    finally:
        sys.setswitchinterval(interval)
    top = trending.top("shop", 2_000)
    assert len(top) == 1_000 and {item for item, _ in top} >= {f"i39-{i}" for i in range(30)}  # the newest first

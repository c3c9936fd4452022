"""The two text-embedding caches kept beyond a process, a safetensors file and the store's
table (Postgres and SQLite), hold to one interface: what was saved is there for the next one
made, a vector reads back within float16's precision, and saving twice keeps nothing twice."""

from __future__ import annotations

import numpy as np
import pytest

from learner.text import TEXT_DIM, TextEncoder, embed_texts
from learner.text_cache import FileTextCache, KeptTextCache
from store.db import make_engine, migrate
from store.registry import StoredTextEmbeddings
from tests.conftest import _fresh_postgres_database


@pytest.fixture(params=["file", "sqlite", "postgres"])
def make_cache(request, tmp_path):
    """Makes a new cache object over the same place each time it is called."""
    if request.param == "file":
        yield lambda: FileTextCache(tmp_path / "texts.safetensors")
        return
    url, drop = (f"sqlite:///{tmp_path / 'store.db'}", lambda: None) if request.param == "sqlite" \
        else _fresh_postgres_database()
    engine = make_engine(url)
    migrate(engine)
    yield lambda: StoredTextEmbeddings(engine)
    engine.dispose()
    drop()


def test_both_caches_keep_what_was_saved_for_the_next_one(make_cache):
    rng = np.random.default_rng(0)
    vectors = {f"{n:064x}": (v / np.linalg.norm(v)).astype(np.float32) for n, v in
               enumerate(rng.normal(size=(5, TEXT_DIM)))}
    first = make_cache()
    assert isinstance(first, KeptTextCache) and len(first) == 0
    for key, vector in vectors.items():
        first[key] = vector
    assert first.save() == 5 and first.save() == 0  # nothing new the second time
    again = make_cache()
    assert set(again) == set(vectors)
    assert all(np.abs(np.asarray(again[k], np.float32) - v).max() < 1e-3 for k, v in vectors.items())
    again["f" * 64] = vectors[next(iter(vectors))]
    assert again.save() == 1 and len(make_cache()) == 6


def test_embedding_through_a_kept_cache_encodes_each_text_once(make_cache):
    encoder = TextEncoder()
    texts = ["red running shoes", "a blue denim jacket", "red running shoes"]
    cache = make_cache()
    expected = embed_texts(texts, encoder, cache)
    assert len(cache) == 2 and cache.save() == 2
    reread = embed_texts(texts, None, make_cache())  # every text cached: no encoder needed
    assert np.abs(reread - expected).max() < 1e-3

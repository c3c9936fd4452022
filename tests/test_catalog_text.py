"""Catalog text is embedded as it arrives, outside training jobs: in batches stored one at a
time, shared by embedders running at once, nothing done again while the catalog is unchanged,
and a trainer embeds what the store lacks before its first job (Postgres and SQLite, real MiniLM)."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
from sqlalchemy import delete, func, select

from learner.text import TextEncoder, catalog_texts, text_key
from store.catalog import load_catalog
from store.ingest import IngestBatch, IngestWriter
from store.models import text_embeddings, training_runs
from store.registry import StoredTextEmbeddings, now_ms
from training.catalog_text import CatalogEmbedder
from training.loop import run_trainer

PRODUCTS = ["trail running shoes", "waterproof hiking boots", "a wool winter coat", "cotton summer dress",
            "stainless steel chef knife", "cast iron skillet", "noise cancelling headphones", "a mechanical keyboard",
            "a yoga mat", "adjustable dumbbells", "a ceramic teapot", "a paperback mystery novel"]


def write_catalog(engine, rows: list[dict], offset: int) -> None:
    IngestWriter(engine, "g", 10 ** 8).write(IngestBatch(
        received_at=now_ms(), items=[row | {"ts": now_ms()} for row in rows],
        offsets={("catalog", 0): (offset - 1 if offset > 1 else None, offset)}))


def catalog(n: int, start: int = 0) -> list[dict]:
    return [{"storefront": "shop", "item_id": f"item-{i}", "title": f"{PRODUCTS[i % len(PRODUCTS)]} no. {i}",
             "category": "home", "description": ""} for i in range(start, start + n)]


class CountingEncoder:
    """The pretrained encoder, counting the texts it encodes."""

    def __init__(self, encoder: TextEncoder):
        self.encoder, self.texts = encoder.copy(), 0  # a tokenizer per thread

    def __call__(self) -> CountingEncoder:
        return self

    def encode(self, texts: list[str]) -> np.ndarray:
        self.texts += len(texts)
        return self.encoder.encode(texts)


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


def test_two_embedders_share_the_catalog_and_store_what_the_encoder_gives(engine, encoder):
    write_catalog(engine, catalog(60), 1)
    first, second = CountingEncoder(encoder), CountingEncoder(encoder)
    embedders = [CatalogEmbedder(engine, first, batch=8), CatalogEmbedder(engine, second, batch=8)]
    errors = []

    def embed(embedder):
        try:
            embedder.embed()
        except Exception as exc:  # a thread's exception would only be a warning
            errors.append(exc)

    threads = [threading.Thread(target=embed, args=(e,)) for e in embedders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors  # overlapping batches stored at once (in key order: no deadlock)
    assert embedders[0].pending() == {}
    assert first.texts > 0 and second.texts > 0  # both took batches
    assert first.texts + second.texts < 2 * 60  # random batches: most texts encoded once only
    texts = catalog_texts(load_catalog(engine))
    cached = StoredTextEmbeddings(engine)
    assert set(cached) == {text_key(t) for t in texts.values()}
    expected = encoder.encode(list(texts.values()))
    stored = np.stack([np.asarray(cached[text_key(t)], np.float32) for t in texts.values()])
    assert np.abs(stored - expected).max() < 2e-3  # float16 in the store

    again = CountingEncoder(encoder)
    embedder = CatalogEmbedder(engine, again)
    assert embedder.embed() == 0 and again.texts == 0  # everything cached already
    write_catalog(engine, catalog(1, start=60) + [catalog(1)[0] | {"title": "a red leather sofa"}], 2)
    assert embedder.embed() == 2 and again.texts == 2  # the new item and the changed text only
    assert embedder.embed() == 0 and again.texts == 2  # catalog unchanged since: one small query

    stop = threading.Event()
    stop.set()
    write_catalog(engine, catalog(5, start=61), 3)
    assert CatalogEmbedder(engine, again).embed(stop) == 0 and again.texts == 2


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_trainer_embeds_missing_catalog_text_before_its_first_job(movielens_store, caplog):
    engine, config = movielens_store
    texts = sorted({text_key(t) for t in catalog_texts(load_catalog(engine)).values()})
    with engine.begin() as conn:  # as if 300 items had just arrived
        conn.execute(delete(text_embeddings).where(text_embeddings.c.key.in_(texts[:300])))
    stop = threading.Event()
    trainer = threading.Thread(target=run_trainer, args=(config,), kwargs={"stop": stop})
    with caplog.at_level(logging.INFO):
        trainer.start()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(select(func.count()).select_from(training_runs)
                                .where(training_runs.c.finished_at.is_not(None))).scalar():
                    break
            time.sleep(0.5)
        stop.set()
        trainer.join()
    messages = [r.getMessage() for r in caplog.records]
    embedded = [i for i, m in enumerate(messages) if m.startswith("catalog text:")]
    claimed = next(i for i, m in enumerate(messages) if "training windows" in m)
    assert embedded and embedded[-1] < claimed, messages
    assert "300 embedded" in messages[embedded[-1]] and messages[embedded[-1]].endswith(" 0 pending")
    assert CatalogEmbedder(engine, TextEncoder).pending() == {}

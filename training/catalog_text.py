"""Catalog text embedded as it arrives, in batches, outside training jobs and snapshot builds.

A training job or a snapshot needs the pretrained MiniLM vector of every catalog item's text.
Embedding them inside the job made the first job of a large catalog last minutes (MiniLM on a
CPU encodes a few hundred texts a second) and stretched its lease and the trainer's measured
throughput. Instead, a trainer embeds what the store's text cache lacks before it claims a
job, one batch at a time: each batch is stored when it is done (a killed trainer loses one
batch at most) and takes pending texts in random order, so trainers that embed at the same
time share the work instead of repeating it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine

from learner.text import TextEncoder, catalog_texts, text_key
from store.catalog import catalog_mark, load_catalog
from store.registry import cached_text_keys, store_text_embeddings

log = logging.getLogger(__name__)

BATCH = 256
"""Texts embedded and stored at a time."""


class CatalogEmbedder:
    """Embeds the catalog texts the store's cache lacks with the pretrained encoder
    (``encoder()``, called only when there is something to embed).

    :meth:`embed` does nothing while the catalog is unchanged since it last found every text
    cached, so calling it before every job costs one small query.
    """

    def __init__(self, engine: Engine, encoder: Callable[[], TextEncoder], batch: int = BATCH):
        self.engine, self.encoder, self.batch = engine, encoder, batch
        self._complete_at: tuple | None = None  # the catalog mark when every text was cached
        self._rng = random.Random()

    def pending(self) -> dict[str, str]:
        """Catalog texts whose embedding the store lacks, by cache key."""
        texts = {text_key(text): text for text in catalog_texts(load_catalog(self.engine)).values()}
        cached = cached_text_keys(self.engine)
        return {key: text for key, text in texts.items() if key not in cached}

    def embed(self, stop: threading.Event | None = None) -> int:
        """Embed batches (random pending texts each) until every catalog text is cached or ``stop``
        is set; how many this call embedded."""
        mark = catalog_mark(self.engine)
        if mark == self._complete_at:
            return 0
        done, started = 0, time.perf_counter()
        while stop is None or not stop.is_set():
            pending = self.pending()
            keys = self._rng.sample(sorted(pending), min(self.batch, len(pending)))
            if not keys:
                self._complete_at = mark
                break
            store_text_embeddings(self.engine, dict(zip(keys, self.encoder().encode([pending[k] for k in keys]))))
            done += len(keys)
            log.info("catalog text: %d embedded in %.1fs, %d pending", done, time.perf_counter() - started,
                     len(pending) - len(keys))
        return done

"""The worker's online-metrics service: served lists and attributed events become ``online_metrics``.

Every ``STREAMREC_ONLINE_METRICS_S`` it recomputes the hours whose lists can still gain
attributed events (from one hour plus ``STREAMREC_ATTRIBUTION_WINDOW_S`` ago on) with
:func:`drift.online.online_metrics`, and forgets served lists older than
``STREAMREC_SERVED_RETENTION_DAYS``. Every worker may do this: rows are replaced, not added.
"""

from __future__ import annotations

import logging
import time

import mode
import numpy as np
from sqlalchemy.exc import DBAPIError

from drift.online import HOUR_MS, online_metrics
from learner.text import catalog_texts, text_key
from runtime.blocking import StoreThread
from runtime.config import Config
from serving.history import Trending
from store.catalog import catalog_rows, catalog_sizes
from store.online import attributed_to, prune_served, save_online_metrics, served_since, text_vectors
from store.registry import FLOAT32_VECTOR_BYTES

log = logging.getLogger(__name__)


def _vector(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f4" if len(raw) == FLOAT32_VECTOR_BYTES else "<f2").astype(np.float32)


def refresh_online_metrics(engine, config: Config, trending: Trending | None, now_ms: int) -> int:
    """Recompute the online metrics of the hours that can still change; returns the rows written."""
    since = (now_ms - config.attribution_window_s * 1000 - HOUR_MS) // HOUR_MS * HOUR_MS
    lists = served_since(engine, since).to_pandas()
    if lists.empty:
        return 0
    events = attributed_to(engine, lists["request_id"]).to_pandas()
    served_items = sorted({item for items in lists["displayed"] for item in items})
    texts = catalog_texts(catalog_rows(engine, served_items))
    keys = {item: text_key(text) for item, text in texts.items()}
    stored = text_vectors(engine, keys.values())
    vectors = {item: _vector(stored[key]) for item, key in keys.items() if key in stored}
    popularity = {shop: trending.weights(shop) for shop in set(lists["storefront"])} if trending else None
    rows = online_metrics(lists, events, catalog_sizes(engine), popularity, vectors)
    save_online_metrics(engine, rows, now_ms)
    return len(rows)


class OnlineMetricsService(mode.Service):
    """Keeps ``online_metrics`` current and prunes old served lists (see the module doc)."""

    def __init__(self, config: Config, engine_of, trending: Trending | None = None, **kwargs):
        """``engine_of()`` gives the store's engine once there is one (None before)."""
        super().__init__(**kwargs)
        self.config, self.engine_of, self.trending = config, engine_of, trending
        self.store_thread = StoreThread("streamrec-online")
        self.refreshed_at: int | None = None

    def run_once(self) -> int:
        engine = self.engine_of()
        if engine is None:
            return 0
        now = time.time_ns() // 1_000_000
        written = refresh_online_metrics(engine, self.config, self.trending, now)
        prune_served(engine, now - int(self.config.served_retention_days * 86_400_000))
        self.refreshed_at = now
        return written

    @mode.Service.task
    async def _refresh_loop(self) -> None:
        while not self.should_stop:
            await self.sleep(self.config.online_metrics_s)
            try:
                await self.store_thread.run(self.run_once)
            except DBAPIError as exc:
                log.error("Online metrics not refreshed (store unreachable), retrying: %s", exc.orig or exc)
            except Exception:
                log.exception("Online metrics not refreshed, retrying")

    async def on_stop(self) -> None:
        self.store_thread.shutdown()

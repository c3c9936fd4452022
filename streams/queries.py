"""Search queries to MiniLM vectors: cached, and encoded together when they arrive together."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import numpy as np

from learner.text import TextEncoder
from runtime.blocking import StoreThread


class QueryEncoder:
    """Encodes queries on one thread of their own, one encoder call per batch of waiting queries.

    While a batch is being encoded, new queries wait; the next call takes up to ``max_batch``
    of them at once, so under load the cost per query falls. The ``cache_size`` most recently
    used vectors are kept.
    """

    def __init__(self, encoder: TextEncoder, thread: StoreThread, cache_size: int = 4096, max_batch: int = 32):
        self.encoder = encoder
        self.thread = thread
        self.cache_size = cache_size
        self.max_batch = max_batch
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._waiting: dict[str, list[asyncio.Future]] = {}
        self._draining = False

    async def encode(self, text: str) -> np.ndarray:
        """The unit vector of ``text``."""
        if text in self._cache:
            self._cache.move_to_end(text)
            return self._cache[text]
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(text, []).append(future)
        if not self._draining:
            self._draining = True
            asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                texts = list(self._waiting)[:self.max_batch]
                waiters = [self._waiting.pop(text) for text in texts]
                try:
                    vectors = await self.thread.run(self.encoder.encode, texts)
                except Exception as exc:  # every waiter of the batch gets the error
                    for future in (f for futures in waiters for f in futures if not f.done()):
                        future.set_exception(exc)
                    continue
                for text, futures, vector in zip(texts, waiters, vectors):
                    self._cache[text] = vector
                    for future in futures:
                        if not future.done():
                            future.set_result(vector)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        finally:
            self._draining = False

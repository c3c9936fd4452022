"""Search queries to MiniLM vectors: cached, and encoded together when they arrive together.

Each query is encoded by the encoder of the version that answers it (pretrained MiniLM or a
tuned adapter); the cache is keyed by encoder and text, so a hot swap never mixes them.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import numpy as np

from learner.text import TextEncoder
from runtime.blocking import StoreThread
from serving.compiled import compile_text_encoder


class QueryEncoder:
    """Encodes queries on one thread of their own, one encoder call per batch of waiting queries.

    While a batch is being encoded, new queries wait; the next call takes up to ``max_batch``
    of them at once (queries of one encoder), so under load the cost per query falls (on a CPU
    MiniLM encodes short queries fastest in batches of 8 to 24: 5 ms a query by ONNX Runtime on
    the benchmark machine, against 8 alone and 7.7 in batches of 32). The
    ``cache_size`` most recently used vectors are kept. Queries are encoded by copies of the
    encoders asked for (:meth:`prepare`), loaded before the first query needs them and never
    shared with catalog encoding on another thread (a tokenizer is not safe to share).
    """

    def __init__(self, encoder: TextEncoder, thread: StoreThread, cache_size: int = 4096, max_batch: int = 16):
        self.encoder = encoder
        self.thread = thread
        self.cache_size = cache_size
        self.max_batch = max_batch
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._waiting: dict[str, tuple[TextEncoder, str, list[asyncio.Future]]] = {}
        self._draining = False
        self._copies: OrderedDict[tuple[str, str], TextEncoder] = OrderedDict()

    def prepare(self, encoder: TextEncoder) -> TextEncoder:
        """The loaded copy that encodes ``encoder``'s queries (made and warmed on first call; the
        two most recently used are kept). Blocks: call it off the event loop."""
        key = encoder.key("")  # the same for encoders of the same weights
        copy = self._copies.get(key)
        if copy is None:
            copy = encoder.copy()
            copy.model  # loaded now, not by the first query
            self._copies[key] = copy
            while len(self._copies) > 2:
                self._copies.popitem(last=False)
        self._copies.move_to_end(key)
        return copy

    def compile(self, encoder: TextEncoder) -> bool:
        """Encode ``encoder``'s queries with an ONNX Runtime export from now on, once
        :meth:`prepare` has made their copy (see :meth:`learner.text.TextEncoder.compile`).
        Takes seconds: call it on another thread than the query thread, so queries go on."""
        copy = self._copy_of(encoder)
        return copy is not None and compile_text_encoder(copy)

    def is_compiled(self, encoder: TextEncoder) -> bool:
        """Whether ``encoder``'s queries are encoded by an ONNX Runtime export."""
        copy = self._copy_of(encoder)
        return copy is not None and copy.is_compiled

    def _copy_of(self, encoder: TextEncoder) -> TextEncoder | None:
        """The copy :meth:`prepare` made for ``encoder``'s weights, if any."""
        return self._copies.get(encoder.key(""))  # the same for encoders of the same weights

    async def encode(self, text: str, encoder: TextEncoder | None = None) -> np.ndarray:
        """The unit vector of ``text`` by ``encoder`` (default: the one given at construction)."""
        if not isinstance(text, str):
            raise TypeError(f"a search query is text, got {type(text).__name__}")
        encoder = encoder or self.encoder
        key = encoder.key(text)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, (encoder, text, []))[2].append(future)
        if not self._draining:
            self._draining = True
            asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                encoder = next(iter(self._waiting.values()))[0]
                keys = [key for key, (e, _, _) in self._waiting.items() if e is encoder][:self.max_batch]
                batch = [self._waiting.pop(key) for key in keys]
                try:
                    texts = [text for _, text, _ in batch]
                    vectors = await self.thread.run(lambda: self.prepare(encoder).encode(texts))
                except Exception as exc:  # every waiter of the batch gets the error
                    for future in (f for _, _, futures in batch for f in futures if not f.done()):
                        future.set_exception(exc)
                    continue
                for key, (_, _, futures), vector in zip(keys, batch, vectors):
                    self._cache[key] = vector
                    for future in futures:
                        if not future.done():
                            future.set_result(vector)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        finally:
            self._draining = False

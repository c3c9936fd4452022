"""``text-knn``: content only, no training; an item's score is the MiniLM cosine between its text
and the mean text vector of the user's ``knn_recent`` most recent items."""

from __future__ import annotations

import pandas as pd
import torch

from backtest.strategies.base import KnownIds
from learner.evaluate import Scorer
from learner.idmap import Vocabulary
from learner.sequences import SequenceBatch
from learner.text import TEXT_DIM, catalog_texts, embed_texts


class TextScorer:
    """Content only: scores are cosines between items' text vectors and the mean text vector of
    each history's ``recent`` newest items (items without text have a zero vector). The text
    vectors are its ``item_vectors``.

    >>> vocab = Vocabulary()
    >>> vocab.add_events(["u"], ["a", "b", "c"], ["s"])
    >>> texts = torch.tensor([[0.0, 0], [0, 0], [1, 0], [0.6, 0.8], [0, 1]])
    >>> batch = SequenceBatch(torch.tensor([[0, 2]]), torch.ones(1, 2, dtype=torch.long),
    ...                       torch.ones(1, 2, dtype=torch.long), users=torch.tensor([2]))
    >>> TextScorer(vocab, texts, recent=10).scores(batch)[0, 2:].tolist()
    [1.0, 0.6000000238418579, 0.0]
    """

    def __init__(self, vocab: Vocabulary, item_text: torch.Tensor, recent: int = 10, max_len: int = 50):
        self.vocab, self.item_text, self.recent, self.max_len = vocab, item_text, recent, max_len

    @property
    def item_vectors(self) -> torch.Tensor:
        return self.item_text

    def scores(self, inputs: SequenceBatch) -> torch.Tensor:
        items = inputs.items[:, -self.recent:]
        counts = (items > 0).sum(1, keepdim=True).clamp(min=1)
        profile = self.item_text[items].sum(1) / counts
        return profile @ self.item_text.T


class TextKnn(KnownIds):
    """Content-only peer baseline for cold items: :class:`TextScorer` over MiniLM vectors."""

    name = "text-knn"

    def fit_window(self, window: pd.DataFrame, past: list[pd.DataFrame]) -> dict:
        self.add_ids(window)
        return {}

    def scorer(self) -> Scorer:
        c = self.context
        item_text = torch.zeros(len(self.vocab.items), TEXT_DIM)
        texts = catalog_texts(c.catalog) if c.catalog is not None else {}
        if texts:
            vectors = embed_texts(list(texts.values()), c.encoder, c.cache)
            item_text[torch.from_numpy(self.vocab.items.index(texts))] = torch.from_numpy(vectors)
        return TextScorer(self.vocab, item_text, self.settings.knn_recent, self.settings.model.max_len)

"""What every strategy is: a way of keeping a recommender current as windows arrive."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd

from backtest.settings import BacktestSettings
from learner.device import Device
from learner.evaluate import Scorer
from learner.idmap import Vocabulary
from learner.text import TextEmbeddingCache, TextEncoder


@dataclass
class Context:
    """What every strategy may use: the catalog known so far (or None), the text embeddings, the device."""

    catalog: pd.DataFrame | None
    cache: TextEmbeddingCache
    encoder: TextEncoder | None
    device: Device


class Strategy(ABC):
    """One way of keeping a recommender current as windows arrive."""

    name: ClassVar[str]

    def __init__(self, settings: BacktestSettings, context: Context):
        self.settings = settings
        self.context = context

    def add_items(self, items: pd.DataFrame) -> None:
        """Catalog rows of items that just joined the catalog (``context.catalog`` has them too)."""

    @abstractmethod
    def fit_window(self, window: pd.DataFrame, past: list[pd.DataFrame]) -> dict:
        """Train on ``window`` (``past``: the earlier windows, oldest first); return extra facts
        about the step for the result (e.g. ``epochs``)."""

    @abstractmethod
    def scorer(self) -> Scorer:
        """The current model as a frozen :class:`learner.evaluate.Scorer`."""


def frames(parts: list[pd.DataFrame]) -> pd.DataFrame | None:
    """The events of ``parts`` in one frame, or None when there are none.

    >>> len(frames([pd.DataFrame({"a": [1]}), pd.DataFrame({"a": [2, 3]})])), frames([])
    (3, None)
    """
    return pd.concat(parts, ignore_index=True) if parts else None


class KnownIds(Strategy):
    """Baselines keep their own vocabulary: the catalog's items, then every id of the events seen."""

    def __init__(self, settings: BacktestSettings, context: Context):
        super().__init__(settings, context)
        self.vocab = Vocabulary()
        if context.catalog is not None:
            self.vocab.items.add(context.catalog["item_id"].astype(str))

    def add_items(self, items: pd.DataFrame) -> None:
        self.vocab.items.add(items["item_id"].astype(str))

    def add_ids(self, window: pd.DataFrame) -> None:
        """Learn the user, item and storefront ids of ``window``."""
        self.vocab.add_events(window["user_id"], window["item_id"], window["storefront"])

"""``popularity``: everyone gets the items most frequent in the last ``popularity_windows`` windows."""

from __future__ import annotations

import pandas as pd

from backtest.settings import BacktestSettings
from backtest.strategies.base import Context, KnownIds, frames
from learner.evaluate import Popularity, Scorer
from learner.sequences import events_frame


class RecentPopularity(KnownIds):
    """Counts of the recent past: :class:`learner.evaluate.Popularity` of the last windows."""

    name = "popularity"

    def __init__(self, settings: BacktestSettings, context: Context):
        super().__init__(settings, context)
        self.recent = events_frame(None)

    def fit_window(self, window: pd.DataFrame, past: list[pd.DataFrame]) -> dict:
        self.add_ids(window)
        self.recent = frames([*past, window][-self.settings.popularity_windows:])
        return {}

    def scorer(self) -> Scorer:
        return Popularity(self.vocab, self.recent, self.settings.model.max_len)

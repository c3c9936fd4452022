"""``joint``: a fresh model trained from scratch on every event so far, at every window (the upper bound)."""

from __future__ import annotations

import pandas as pd

from backtest.strategies.base import frames
from backtest.strategies.rehearsal import FineTuned
from learner.finetune import fine_tune


class Joint(FineTuned):
    """A fresh model trained on every event so far, at every window (the upper-bound baseline)."""

    name = "joint"
    rehearse = False

    def fit_window(self, window: pd.DataFrame, past: list[pd.DataFrame]) -> dict:
        everything = frames([*past, window])
        c = self.context
        self.bundle, epochs = fine_tune(self.fresh(everything), everything, catalog=c.catalog, encoder=c.encoder,
                                        cache=c.cache, config=self.config, device=c.device)
        return {"epochs": len(epochs), "trained_events": len(everything)}

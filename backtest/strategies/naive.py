"""``naive``: the worker's fine-tune without rehearsal and distillation (the new window only)."""

from __future__ import annotations

from backtest.strategies.rehearsal import FineTuned


class Naive(FineTuned):
    """:class:`~backtest.strategies.rehearsal.FineTuned` with no rehearsal memory and no distillation."""

    name = "naive"
    rehearse = False

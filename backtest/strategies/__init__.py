"""The strategies a backtest compares, one module each, each a small class with
``fit_window(window, past)`` and ``scorer()`` (:class:`backtest.strategies.base.Strategy`).

========== ===================================================================================
rehearsal  the worker's fine-tune with rehearsal and distillation (:mod:`.rehearsal`)
naive      the same fine-tune without rehearsal and distillation (:mod:`.naive`)
joint      a fresh model trained from scratch on every event so far, at every window (:mod:`.joint`)
popularity counts of the last ``popularity_windows`` windows (:mod:`.popularity`)
river-mf   ``river.reco.BiasedMF`` learned online with uniform negatives (:mod:`.river_mf`)
id-only    ``rehearsal`` without the text tower (:mod:`.id_only`)
text-knn   content only: MiniLM cosine to the user's recent items (:mod:`.text_knn`)
========== ===================================================================================

>>> STRATEGIES
('rehearsal', 'naive', 'joint', 'popularity', 'river-mf', 'id-only', 'text-knn')
"""

from __future__ import annotations

from backtest.settings import BacktestSettings
from backtest.strategies.base import Context, Strategy
from backtest.strategies.id_only import IdOnly
from backtest.strategies.joint import Joint
from backtest.strategies.naive import Naive
from backtest.strategies.popularity import RecentPopularity
from backtest.strategies.rehearsal import FineTuned
from backtest.strategies.river_mf import RiverMF
from backtest.strategies.text_knn import TextKnn

_CLASSES: dict[str, type[Strategy]] = {c.name: c for c in (FineTuned, Naive, Joint, RecentPopularity, RiverMF, IdOnly,
                                                           TextKnn)}
STRATEGIES = tuple(_CLASSES)
TEXT_STRATEGIES = frozenset({"rehearsal", "naive", "joint", "text-knn"})
"""The strategies that read the items' MiniLM vectors to rank."""


def make_strategy(name: str, settings: BacktestSettings, context: Context) -> Strategy:
    """The strategy called ``name`` (one of :data:`STRATEGIES`)."""
    if name not in _CLASSES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return _CLASSES[name](settings, context)

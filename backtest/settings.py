"""How a backtest cuts and scores the stream, and every strategy's settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from learner.finetune import FineTuneConfig
from learner.model import ModelConfig

SPLITS = ("events", "time")


@dataclass(frozen=True)
class BacktestSettings:
    """How the stream is cut and scored, and every strategy's settings.

    ``model`` and ``finetune`` are the worker's (the CLI maps its settings as training jobs do,
    with :func:`runtime.learner_configs.config_for`); the strategies derive their variants from
    them (no text for id-only, no rehearsal or distillation for naive and joint). The
    baselines' defaults are the best found on MovieLens-100k (10 windows): popularity over 1, 2
    or 3 windows, and river-mf over learning rates 0.002-0.1, 1-8 negatives, 16-64 factors and
    L2 0-0.01. ``serving_precision`` ranks with the item vectors held as a worker holds them
    (:class:`learner.evaluate.BundleScorer`).

    Examples
    --------
    >>> BacktestSettings(windows=4).describe()["model"]["dim"]
    64
    """

    windows: int = 10
    k: int = 20
    split: str = "events"
    eval_sample: int = 2000
    model: ModelConfig = field(default_factory=ModelConfig)
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)
    rehearsal_policy: str = "reservoir"
    rehearsal_capacity: int = 20_000
    rehearsal_half_life_s: float = 7 * 86_400
    history_windows: int = 20
    popularity_windows: int = 2
    mf_factors: int = 32
    mf_negatives: int = 4
    mf_lr: float = 0.005
    mf_l2: float = 0.0
    knn_recent: int = 10
    serving_precision: str = "float32"
    seed: int = 1

    def describe(self) -> dict:
        """The settings as JSON-able values."""
        out = dataclasses.asdict(self)
        out["model"] = self.model.to_dict()
        return out

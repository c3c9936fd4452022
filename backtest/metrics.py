"""What a backtest reports beyond each window's ranking: forgetting and backward transfer of the
matrix ``R``, means over windows, and JSON without NaN.

Each window's Recall@K, NDCG@K, new items' share of slots and the beyond-accuracy metrics
(coverage, intra-list diversity, novelty, average popularity) come from the one ranking
routine, :func:`learner.evaluate.evaluate`.
"""

from __future__ import annotations

import math

import numpy as np

from learner.evaluate import BEYOND_ACCURACY


def window_metrics(k: int) -> tuple[str, ...]:
    """The per-window metrics a backtest averages over windows 1..N-1, in the order it reports them.

    >>> window_metrics(20)[:3], window_metrics(20)[4:]
    (('recall@20', 'ndcg@20', 'cold_recall@20'), ('coverage@20', 'diversity@20', 'novelty@20', \
'avg_popularity@20', 'train_seconds'))
    """
    return (f"recall@{k}", f"ndcg@{k}", f"cold_recall@{k}", f"new_item_share@{k}",
            *(f"{name}@{k}" for name in BEYOND_ACCURACY), "train_seconds")


def transfer(R: list[list[float | None]]) -> tuple[float, float]:
    """(forgetting, backward transfer) of a lower-triangular matrix ``R[i][j]`` (metric on
    window j after training through window i); NaN with fewer than two windows.

    With ``T`` the last window, forgetting is the mean over ``j < T`` of
    ``max(R[j..T-1][j]) - R[T][j]`` and backward transfer the mean over ``j < T`` of
    ``R[T][j] - R[j][j]``.

    >>> transfer([[0.5, None], [0.3, 0.6]])
    (0.2, -0.2)
    >>> transfer([[0.5, None, None], [0.4, 0.6, None], [0.45, 0.3, 0.7]])
    (0.175, -0.175)
    """
    last = len(R) - 1
    if last < 1:
        return math.nan, math.nan
    forgetting = [max(R[i][j] for i in range(j, last)) - R[last][j] for j in range(last)]
    bwt = [R[last][j] - R[j][j] for j in range(last)]
    return round(float(np.mean(forgetting)), 12), round(float(np.mean(bwt)), 12)


def mean(values: list[float | None]) -> float:
    """The mean of the finite values; NaN when there are none.

    >>> mean([0.5, None, float("nan"), 1.0]), mean([None])
    (0.75, nan)
    """
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


def nan_to_none(value):
    """``value`` with every NaN or infinite float replaced by None (JSON has no NaN).

    >>> nan_to_none({"a": [1.0, float("nan")], "b": float("inf"), "c": "x"})
    {'a': [1.0, None], 'b': None, 'c': 'x'}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return value

"""Quality of a recommender on a batch of events, per event: the input of concept drift and forgetting.

Computed by :func:`learner.evaluate.evaluate` (full ranking over every known item, items the
user interacted with before excluded, ties against the target, an unknown target is a miss),
with the next-item cross-entropy of the softmax over all known items. Works with any
:class:`learner.evaluate.Scorer`: a model version (``BundleScorer``) or
:class:`learner.evaluate.Popularity`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from learner.evaluate import Scorer, evaluate
from learner.sequences import events_frame

K = 20


@dataclass
class Quality:
    """Mean Recall@K, NDCG@K and loss over ``n`` events (NaN when there are none)."""

    recall: float
    ndcg: float
    loss: float
    n: int


def quality(scorer: Scorer, events: pd.DataFrame, history: pd.DataFrame | None = None, k: int = K,
            batch_size: int = 512, max_events: int | None = None, seed: int = 0) -> Quality:
    """Quality of ``scorer`` on ``events``, each predicted from the user's events before it in
    ``history`` and earlier ``events`` (on a seeded sample of ``max_events`` of them, if given).

    Examples
    --------
    >>> from learner.evaluate import Popularity
    >>> ev = pd.DataFrame({"event_id": ["e1", "e2", "e3"], "type": "click", "user_id": ["u1", "u2", "u2"],
    ...     "item_id": ["a", "a", "b"], "storefront": "s", "ts": [1, 2, 3], "session_id": None})
    >>> q = quality(Popularity.of(ev.iloc[:1], also=ev), ev.iloc[1:], ev.iloc[:1])
    >>> q.recall, q.n, round(q.loss, 3)
    (1.0, 2, 0.752)
    """
    result = evaluate(scorer, events, history, ks=(k,), batch_size=batch_size, with_loss=True,
                      max_events=max_events, seed=seed)
    return Quality(result[f"recall@{k}"], result[f"ndcg@{k}"], result["loss"], result["examples"])


def by_storefront(scorer: Scorer, events: pd.DataFrame, history: pd.DataFrame | None = None,
                  k: int = K, max_events: int | None = None, seed: int = 0) -> dict[str, Quality]:
    """:func:`quality` of each storefront's events (at most ``max_events`` of each, sampled); a
    user's events in other storefronts count as history."""
    history = events_frame(history)
    out = {}
    for storefront in sorted(events["storefront"].unique()):
        mine = events["storefront"] == storefront
        out[storefront] = quality(scorer, events[mine], pd.concat([history, events[~mine]], ignore_index=True), k,
                                  max_events=max_events, seed=seed)
    return out


def sample_events(events: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A seeded sample of at most ``n`` events, the same for the same events whatever their order.

    Examples
    --------
    >>> ev = pd.DataFrame({"event_id": [f"e{i}" for i in range(10)]})
    >>> sample_events(ev, 3, seed=1)["event_id"].tolist() == sample_events(ev[::-1], 3, seed=1)["event_id"].tolist()
    True
    """
    ordered = events.sort_values("event_id", kind="stable")
    if len(ordered) <= n:
        return ordered
    rows = np.sort(np.random.default_rng(seed).choice(len(ordered), size=n, replace=False))
    return ordered.iloc[rows]

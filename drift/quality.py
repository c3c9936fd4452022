"""Quality of a recommender on a batch of events, per event: the input of concept drift and forgetting.

Same protocol as :func:`learner.evaluate.evaluate` (full ranking over every known item,
items the user interacted with before excluded, ties against the target, an unknown target
is a miss), plus the next-item cross-entropy of the softmax over all known items (over the
events whose item the scorer knows). Works with any :class:`learner.evaluate.Scorer`: a
model version (``BundleScorer``) or :class:`PopularityModel`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from learner.evaluate import Scorer, metrics_at, ranks
from learner.idmap import UNKNOWN, Vocabulary
from learner.sequences import events_frame, next_item_examples

K = 20


@dataclass
class Quality:
    """Mean Recall@K, NDCG@K and loss over ``n`` events (NaN when there are none)."""

    recall: float
    ndcg: float
    loss: float
    n: int


class PopularityModel:
    """Scores every item by ``log(1 + its event count in events)``: a smoothed popularity model
    whose softmax is the add-one popularity distribution (so it has a loss, too).

    Examples
    --------
    >>> from learner.idmap import IdMap
    >>> model = PopularityModel(Vocabulary(IdMap(["a", "b"])), pd.DataFrame({"item_id": ["b", "b", "a"]}))
    >>> model.log_counts.exp().round().tolist()
    [0.0, 0.0, 2.0, 3.0]
    """

    def __init__(self, vocab: Vocabulary, events: pd.DataFrame, max_len: int = 50):
        self.vocab = vocab
        self.max_len = max_len
        counts = events["item_id"].value_counts()
        index = torch.from_numpy(vocab.items.index(counts.index))
        self.log_counts = torch.zeros(len(vocab.items)).index_add_(
            0, index, torch.log1p(torch.tensor(counts.to_numpy(), dtype=torch.float32)))
        self.log_counts[:UNKNOWN + 1] = float("-inf")

    @classmethod
    def of(cls, events: pd.DataFrame, also: pd.DataFrame | None = None, max_len: int = 50) -> PopularityModel:
        """Popularity of ``events``, knowing the ids of ``events`` and ``also`` (e.g. the window to judge)."""
        vocab = Vocabulary()
        for frame in (events, events_frame(also)):
            vocab.add_events(frame["user_id"].unique(), frame["item_id"].unique(), frame["storefront"].unique())
        return cls(vocab, events, max_len)

    def scores(self, inputs) -> torch.Tensor:
        return self.log_counts.expand(len(inputs), -1).clone()


def quality(scorer: Scorer, events: pd.DataFrame, history: pd.DataFrame | None = None, k: int = K,
            batch_size: int = 512) -> Quality:
    """Quality of ``scorer`` on ``events``, each predicted from the user's events before it in
    ``history`` and earlier ``events``.

    Examples
    --------
    >>> ev = pd.DataFrame({"event_id": ["e1", "e2", "e3"], "type": "click", "user_id": ["u1", "u2", "u2"],
    ...     "item_id": ["a", "a", "b"], "storefront": "s", "ts": [1, 2, 3], "session_id": None})
    >>> q = quality(PopularityModel.of(ev.iloc[:1], also=ev), ev.iloc[1:], ev.iloc[:1])
    >>> q.recall, q.n, round(q.loss, 3)
    (1.0, 2, 0.752)
    """
    examples = next_item_examples(events_frame(history), events, scorer.vocab, scorer.max_len)
    hits = ndcg = loss = 0.0
    scored = 0
    for lo in range(0, len(examples), batch_size):
        hi = min(lo + batch_size, len(examples))
        scores = scorer.scores(examples.inputs.select(slice(lo, hi))).float()
        targets = examples.targets[lo:hi].to(scores.device)
        scores[:, :UNKNOWN + 1] = float("-inf")
        known = targets > UNKNOWN
        target_logp = torch.log_softmax(scores, dim=1).gather(1, targets[:, None])[:, 0]
        loss += float(-target_logp[known].sum())
        scored += int(known.sum())
        rows, items = examples.seen_pairs(lo, hi)
        target_scores = scores.gather(1, targets[:, None])
        scores[rows.to(scores.device), items.to(scores.device)] = float("-inf")
        scores.scatter_(1, targets[:, None], target_scores)
        values = metrics_at(ranks(scores, targets), (k,))
        hits += float(values[f"recall@{k}"].sum())
        ndcg += float(values[f"ndcg@{k}"].sum())
    n = len(examples)
    return Quality(hits / n if n else math.nan, ndcg / n if n else math.nan, loss / scored if scored else math.nan, n)


def by_storefront(scorer: Scorer, events: pd.DataFrame, history: pd.DataFrame | None = None,
                  k: int = K) -> dict[str, Quality]:
    """:func:`quality` of each storefront's events; a user's events in other storefronts count as history."""
    history = events_frame(history)
    out = {}
    for storefront in sorted(events["storefront"].unique()):
        mine = events["storefront"] == storefront
        out[storefront] = quality(scorer, events[mine], pd.concat([history, events[~mine]], ignore_index=True), k)
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

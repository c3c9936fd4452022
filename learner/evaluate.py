"""Next-item evaluation with full ranking: Recall@K and NDCG@K over every known item.

Protocol: every event in ``events`` is one example. Its input is the user's history before
it (events from ``history`` and earlier ``events``), its target is its item. All known items
are ranked (no sampled negatives), except padding/unknown rows and items the user interacted
with before the event; the target itself is always ranked, even when seen before. Ties count
against the target (an item scoring the same is ranked above it), so a constant scorer gets
no credit. A target the scorer's vocabulary does not know is a miss.
"""

from __future__ import annotations

import math
from typing import Protocol

import pandas as pd
import torch

from learner.bundle import ModelBundle
from learner.device import Device, pick_device
from learner.idmap import UNKNOWN, Vocabulary
from learner.sequences import SequenceBatch, events_frame, next_item_examples


class Scorer(Protocol):
    """Scores every item row of ``vocab.items`` for a batch of histories."""

    vocab: Vocabulary
    max_len: int

    def scores(self, inputs: SequenceBatch) -> torch.Tensor:
        """float32 [B, n_items]; rows 0 and 1 (padding, unknown) are ignored."""


class BundleScorer:
    """A trained ``ModelBundle`` as a scorer (eval mode, item vectors computed once)."""

    def __init__(self, bundle: ModelBundle, device: Device | None = None):
        self.device = device or pick_device()
        self.model = bundle.model.to(self.device.torch_device).eval()
        self.vocab = bundle.vocab
        self.max_len = bundle.model.config.max_len
        with torch.no_grad(), self.device.autocast():
            self.item_vectors = self.model.item_vectors().float()

    @torch.no_grad()
    def scores(self, inputs: SequenceBatch) -> torch.Tensor:
        with self.device.autocast():
            states = self.model.user_vectors(inputs.to(self.device))
        return self.model.logits(states, self.item_vectors)


class PopularityScorer:
    """Baseline: every user gets the same scores, the item's event count in ``events``.

    >>> from learner.idmap import IdMap
    >>> events = pd.DataFrame({"item_id": ["a", "b", "b"]})
    >>> PopularityScorer(Vocabulary(IdMap(["a", "b"])), events).counts.tolist()
    [0.0, 0.0, 1.0, 2.0]
    """

    def __init__(self, vocab: Vocabulary, events: pd.DataFrame, max_len: int = 50):
        self.vocab = vocab
        self.max_len = max_len
        index = torch.from_numpy(vocab.items.index(events["item_id"]))
        self.counts = torch.zeros(len(vocab.items)).index_add_(0, index, torch.ones(len(index)))

    def scores(self, inputs: SequenceBatch) -> torch.Tensor:
        return self.counts.expand(len(inputs), -1).clone()


def ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target among its row's scores [B, n]; ties count against the target.

    A target scored ``-inf`` (unrankable) gets a rank past every cutoff.
    """
    target_scores = scores.gather(1, targets[:, None])
    at_or_above = (scores >= target_scores).sum(1) - 1
    return torch.where(torch.isfinite(target_scores[:, 0]), at_or_above, torch.iinfo(torch.int64).max // 2)


def metrics_at(ranks: torch.Tensor, ks: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Per-example ``recall@k`` (hit) and ``ndcg@k`` (1/log2(rank + 2) if hit) for each k.

    >>> {name: v.tolist() for name, v in metrics_at(torch.tensor([0, 2, 9]), (3,)).items()}
    {'recall@3': [1.0, 1.0, 0.0], 'ndcg@3': [1.0, 0.5, 0.0]}
    """
    out = {}
    for k in ks:
        hit = (ranks < k).float()
        out[f"recall@{k}"] = hit
        out[f"ndcg@{k}"] = hit / torch.log2(ranks.float() + 2)
    return out


def evaluate(scorer: Scorer, events: pd.DataFrame, history: pd.DataFrame | None = None,
             ks: tuple[int, ...] = (10, 20), batch_size: int = 512) -> dict[str, float]:
    """Mean metrics over ``events`` (see the module docstring), plus ``examples``."""
    examples = next_item_examples(events_frame(history), events, scorer.vocab, scorer.max_len)
    totals = {name: 0.0 for k in ks for name in (f"recall@{k}", f"ndcg@{k}")}
    for lo in range(0, len(examples), batch_size):
        hi = min(lo + batch_size, len(examples))
        scores = scorer.scores(examples.inputs.select(slice(lo, hi))).float()
        targets = examples.targets[lo:hi].to(scores.device)
        rows, items = examples.seen_pairs(lo, hi)
        target_scores = scores.gather(1, targets[:, None])
        scores[rows.to(scores.device), items.to(scores.device)] = float("-inf")
        scores.scatter_(1, targets[:, None], target_scores)
        scores[:, :UNKNOWN + 1] = float("-inf")
        for name, values in metrics_at(ranks(scores, targets), ks).items():
            totals[name] += values.sum().item()
    n = len(examples)
    result = {name: total / n if n else math.nan for name, total in totals.items()}
    result["examples"] = n
    return result

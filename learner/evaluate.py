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

import numpy as np
import pandas as pd
import torch

from learner.blend import TextBlend
from learner.bundle import ModelBundle
from learner.device import Device, pick_device
from learner.idmap import UNKNOWN, Vocabulary
from learner.neighbours import as_served
from learner.sequences import SequenceBatch, events_frame, next_item_examples

SCORES_PER_BATCH = 2 ** 25
"""Most scores (examples x items) :func:`evaluate` holds at once: 128 MB of float32."""


class Scorer(Protocol):
    """Scores every item row of ``vocab.items`` for a batch of histories."""

    vocab: Vocabulary
    max_len: int

    def scores(self, inputs: SequenceBatch) -> torch.Tensor:
        """float32 [B, n_items]; rows 0 and 1 (padding, unknown) are ignored."""


class BundleScorer:
    """A trained ``ModelBundle`` as a scorer (eval mode, item vectors computed once).

    ``precision`` scores as a worker holding the item vectors that way does
    (:data:`learner.options.SERVING_PRECISIONS`): users' states and scores both read them.
    Scores carry the bundle's text term (:mod:`learner.blend`), or ``blend``'s with ``counts``
    as the items' interactions when given.
    """

    def __init__(self, bundle: ModelBundle, device: Device | None = None, precision: str = "float32",
                 blend: TextBlend | None = None, counts: torch.Tensor | None = None):
        self.device = device or pick_device()
        self.model = bundle.model.to(self.device.torch_device).eval()
        self.vocab = bundle.vocab
        self.max_len = bundle.model.config.max_len
        self.blend = bundle.text_blend if blend is None else blend
        self.counts = self.model.item_counts if counts is None else counts.to(self.device.torch_device)
        self.blend_text = self.blend.text_rows(self.model.item_text) if self.blend.weight else None
        with torch.no_grad(), self.device.autocast():
            self.item_vectors = self.model.item_vectors().float()
        if precision != "float32":
            self.item_vectors = torch.from_numpy(as_served(self.item_vectors.cpu().numpy(), precision)).to(
                self.item_vectors.device)

    @torch.no_grad()
    def scores(self, inputs: SequenceBatch) -> torch.Tensor:
        inputs = inputs.to(self.device)
        with self.device.autocast():
            states = self.model(inputs, self.item_vectors)[:, -1]
        scores = self.model.logits(states, self.item_vectors)
        return self.blend.add_to(scores, inputs.items, self.blend_text, self.counts) if self.blend.weight else scores


class Popularity:
    """Baseline: every user gets the same scores, ``log(1 + the item's event count in events)``.

    A smoothed popularity model: its softmax is the add-one popularity distribution, so it has a
    loss too. The gate judges the first candidate against it, and drift judges windows with it
    before the first version.

    Examples
    --------
    >>> from learner.idmap import IdMap
    >>> model = Popularity(Vocabulary(IdMap(["a", "b"])), pd.DataFrame({"item_id": ["b", "b", "a"]}))
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
    def of(cls, events: pd.DataFrame, also: pd.DataFrame | None = None, max_len: int = 50) -> Popularity:
        """Popularity of ``events``, knowing the ids of ``events`` and ``also`` (e.g. the window to judge)."""
        vocab = Vocabulary()
        for frame in (events, events_frame(also)):
            vocab.add_events(frame["user_id"].unique(), frame["item_id"].unique(), frame["storefront"].unique())
        return cls(vocab, events, max_len)

    def scores(self, inputs: SequenceBatch) -> torch.Tensor:
        return self.log_counts.expand(len(inputs), -1).clone()


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
             ks: tuple[int, ...] = (10, 20), batch_size: int = 512, with_loss: bool = False,
             max_events: int | None = None, seed: int = 0, new_items: set[str] | None = None) -> dict[str, float]:
    """Mean metrics over ``events`` (see the module docstring), plus ``examples``; NaN without events.

    ``with_loss`` adds ``loss``: the mean next-item cross-entropy (nats) of the softmax over all
    known items, over the events whose item the scorer knows. ``max_events`` bounds the cost: a
    seeded sample of that many events is scored, the others still count as users' history.
    With ``new_items`` (ids of items nobody has interacted with yet), ``new_item_share@K`` is
    the share of the top-K slots (largest K of ``ks``) they fill.
    Examples are scored ``batch_size`` at a time, fewer in a large catalog: at most
    :data:`SCORES_PER_BATCH` scores at once, so memory stays bounded (33 examples a batch at a
    million items).

    Examples
    --------
    >>> ev = pd.DataFrame({"event_id": ["e1", "e2", "e3"], "type": "click", "user_id": ["u1", "u2", "u2"],
    ...     "item_id": ["a", "a", "b"], "storefront": "s", "ts": [1, 2, 3], "session_id": None})
    >>> result = evaluate(Popularity.of(ev.iloc[:1], also=ev), ev.iloc[1:], ev.iloc[:1], ks=(20,), with_loss=True)
    >>> result["recall@20"], result["examples"], round(result["loss"], 3)
    (1.0, 2, 0.752)
    """
    if max_events is not None and len(events) > max_events:
        keep = np.zeros(len(events), dtype=bool)
        keep[np.random.default_rng(seed).choice(len(events), size=max_events, replace=False)] = True
        history, events = pd.concat([events_frame(history), events[~keep]], ignore_index=True), events[keep]
    examples = next_item_examples(events_frame(history), events, scorer.vocab, scorer.max_len)
    totals = {name: 0.0 for k in ks for name in (f"recall@{k}", f"ndcg@{k}")}
    loss, scored, new_slots = 0.0, 0, 0.0
    if new_items is not None:
        is_new = torch.zeros(len(scorer.vocab.items), dtype=torch.bool)
        is_new[torch.from_numpy(scorer.vocab.items.index(new_items))] = True
        is_new[:UNKNOWN + 1] = False
    batch_size = max(1, min(batch_size, SCORES_PER_BATCH // len(scorer.vocab.items)))
    for lo in range(0, len(examples), batch_size):
        hi = min(lo + batch_size, len(examples))
        scores = scorer.scores(examples.inputs.select(slice(lo, hi))).float()
        targets = examples.targets[lo:hi].to(scores.device)
        scores[:, :UNKNOWN + 1] = float("-inf")
        if with_loss:
            known = targets > UNKNOWN
            target_logp = torch.log_softmax(scores, dim=1).gather(1, targets[:, None])[:, 0]
            loss += float(-target_logp[known].sum())
            scored += int(known.sum())
        rows, items = examples.seen_pairs(lo, hi)
        target_scores = scores.gather(1, targets[:, None])
        scores[rows.to(scores.device), items.to(scores.device)] = float("-inf")
        scores.scatter_(1, targets[:, None], target_scores)
        for name, values in metrics_at(ranks(scores, targets), ks).items():
            totals[name] += values.sum().item()
        if new_items is not None:
            top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices.cpu()
            new_slots += is_new[top].float().mean(1).sum().item()
    n = len(examples)
    result = {name: total / n if n else math.nan for name, total in totals.items()}
    if new_items is not None:
        result[f"new_item_share@{max(ks)}"] = new_slots / n if n else math.nan
    result["examples"] = n
    if with_loss:
        result["loss"] = loss / scored if scored else math.nan
    return result

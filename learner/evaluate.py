"""Next-item evaluation with full ranking: Recall@K and NDCG@K over every known item.

Protocol: every event in ``events`` is one example. Its input is the user's history before
it (events from ``history`` and earlier ``events``), its target is its item. All known items
are ranked (no sampled negatives), except padding/unknown rows and items the user interacted
with before the event; the target itself is always ranked, even when seen before. Ties count
against the target (an item scoring the same is ranked above it), so a constant scorer gets
no credit. A target the scorer's vocabulary does not know is a miss.

Beyond accuracy (``beyond_accuracy=True``), from the top-K list of every example: the items
ranked first once the items the user interacted with before are excluded (what the user would
be shown; the target is not put back into it), over the items the scorer knows ``I`` (rows of
``vocab.items`` past padding and unknown). With ``c_i`` the events of item ``i`` in the
training data (``history``), ``N`` their total and ``L`` the lists:

* ``coverage@K``: ``|union of L| / |I|``, the share of known items in at least one list;
* ``diversity@K``: the mean over lists of ``1 - mean cos(v_i, v_j)`` over the list's pairs
  ``i < j``, with ``v`` the items' MiniLM text vectors when ``item_vectors`` are given, else
  the scorer's own item vectors (``scorer.item_vectors``; NaN for a scorer without them, such
  as :class:`Popularity`). Items without a vector (all zero) are left out of the pairs, and a
  list with fewer than two such items out of the mean;
* ``novelty@K``: the mean over every slot of ``-log2 p_i``, ``p_i = (c_i + 0.5) / (N + 0.5 |I|)``,
  the item's share of the training events with 0.5 added to every count (as the online metrics
  smooth it; Zhou et al., PNAS 2010): a never-seen item is the most novel;
* ``avg_popularity@K``: the mean over every slot of ``c_i``.

Slots whose score is ``-inf`` (a list longer than the items left to rank) are no slots.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from learner.blend import LiveCounts, TextBlend
from learner.bundle import ModelBundle
from learner.device import Device, pick_device
from learner.idmap import PAD, UNKNOWN, IdMap, Vocabulary
from learner.precision import as_served
from learner.sequences import NextItemExamples, SequenceBatch, events_frame, next_item_examples

SCORES_PER_BATCH = 2 ** 25
"""Most scores (examples x items) :func:`evaluate` holds at once: 128 MB of float32."""


BEYOND_ACCURACY = ("coverage", "diversity", "novelty", "avg_popularity")
"""The beyond-accuracy metrics :func:`evaluate` reports as ``<name>@K`` (see the module docstring)."""


class Scorer(Protocol):
    """Scores every item row of ``vocab.items`` for a batch of histories.

    A scorer may also have ``item_vectors`` ([n_items, d], rows as ``vocab.items``): the
    vectors :func:`evaluate` measures diversity with when it is given no text vectors; and
    ``takes_live`` true when its ``scores`` also take items' live interactions
    (``live``, :meth:`learner.blend.LiveCounts.before`).
    """

    vocab: Vocabulary
    max_len: int

    def scores(self, inputs: SequenceBatch) -> torch.Tensor:
        """float32 [B, n_items]; rows 0 and 1 (padding, unknown) are ignored."""


class BundleScorer:
    """A trained ``ModelBundle`` as a scorer (eval mode, item vectors computed once).

    ``precision`` scores as a worker holding the item vectors that way does
    (:data:`learner.options.SERVING_PRECISIONS`): users' states and scores both read them.
    Scores carry the bundle's text term (:mod:`learner.blend`), or ``blend``'s with ``counts``
    as the items' interactions when given (:func:`blend_hits` compares several on one model run).
    """

    def __init__(self, bundle: ModelBundle, device: Device | None = None, precision: str = "float32",
                 blend: TextBlend | None = None, counts: torch.Tensor | None = None):
        self.device = device or pick_device()
        self.model = bundle.model.to(self.device.torch_device).eval()
        self.vocab = bundle.vocab
        self.max_len = bundle.model.config.max_len
        self.counts = self.model.item_counts if counts is None else counts.to(self.device.torch_device)
        self._use(bundle.text_blend if blend is None else blend)
        with torch.no_grad(), self.device.autocast():
            self.item_vectors = self.model.item_vectors().float()
        if precision != "float32":
            self.item_vectors = torch.from_numpy(as_served(self.item_vectors.cpu().numpy(), precision)).to(
                self.item_vectors.device)

    def _use(self, blend: TextBlend) -> None:
        self.blend = blend
        self.blend_text = blend.text_rows(self.model.item_text) if blend else None
        self.takes_live = bool(blend.live)

    def with_blend(self, blend: TextBlend) -> BundleScorer:
        """This scorer with ``blend``'s text term instead (model and item vectors shared)."""
        other = copy.copy(self)
        other._use(blend)
        return other

    @torch.no_grad()
    def scores(self, inputs: SequenceBatch, live: torch.Tensor | None = None) -> torch.Tensor:
        inputs = inputs.to(self.device)
        with self.device.autocast():
            states = self.model(inputs, self.item_vectors)[:, -1]
        scores = self.model.logits(states, self.item_vectors)
        return self.blend.add_to(scores, inputs.items, self.blend_text, self.counts, live) if self.blend else scores


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


class ItemVectors:
    """Vectors of items by id (``ids``' rows; rows 0 and 1 zero), for intra-list diversity.

    ``basis`` names what they are (``"text"``: MiniLM vectors of the items' texts;
    ``"model"``: a scorer's own item vectors). They stay where they are (any device, any float
    dtype); :func:`evaluate` reads only the rows of the lists it builds.

    Examples
    --------
    >>> vectors = ItemVectors.of({"a": np.array([1.0, 0.0]), "b": np.array([0.0, 2.0])})
    >>> vectors.basis, vectors.vectors.tolist()
    ('text', [[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    >>> vectors.rows_for(IdMap(["b", "c", "a"])).tolist()
    [0, 1, 3, 1, 2]
    """

    def __init__(self, ids: IdMap, vectors: torch.Tensor, basis: str = "text"):
        if len(vectors) != len(ids):
            raise ValueError(f"{len(vectors)} vectors for {len(ids)} id rows")
        self.ids, self.vectors, self.basis = ids, vectors, basis

    @classmethod
    def of(cls, by_id: dict[str, np.ndarray], basis: str = "text") -> ItemVectors:
        """The vectors of a mapping item id -> vector (e.g. MiniLM vectors of a catalog's texts)."""
        ids = IdMap(by_id)
        vectors = torch.zeros(len(ids), len(next(iter(by_id.values()))) if by_id else 1)
        if by_id:
            vectors[UNKNOWN + 1:] = torch.from_numpy(np.stack([np.asarray(v, np.float32) for v in by_id.values()]))
        return cls(ids, vectors, basis)

    @classmethod
    def text_of(cls, bundle: ModelBundle) -> ItemVectors | None:
        """The MiniLM text vectors a bundle holds for its items (None for an id-only model)."""
        if not bundle.model.config.use_text:
            return None
        return cls(bundle.vocab.items, bundle.model.item_text, "text")

    def rows_for(self, items: IdMap) -> torch.Tensor:
        """The row of each item row of ``items`` in :attr:`vectors` (unknown: row 1, zero)."""
        if items is self.ids or items.is_prefix_of(self.ids):
            return torch.arange(len(items))
        return torch.from_numpy(np.concatenate([[PAD, UNKNOWN], self.ids.index(items.keys())]))


class _BeyondAccuracy:
    """Running sums of coverage, diversity, novelty and popularity over the top-K lists of batches."""

    def __init__(self, scorer: Scorer, history: pd.DataFrame, item_vectors: ItemVectors | None, ks: tuple[int, ...]):
        vocab = scorer.vocab.items
        self.ks, self.known = ks, len(vocab) - (UNKNOWN + 1)
        rows = vocab.index(history["item_id"]) if len(history) else np.zeros(0, np.int64)
        counts = np.bincount(rows[rows > UNKNOWN], minlength=len(vocab)).astype(np.float64)
        self.counts = torch.from_numpy(counts)
        self.novelty = torch.from_numpy(-np.log2((counts + 0.5) / (len(history) + 0.5 * max(self.known, 1))))
        if item_vectors is None and getattr(scorer, "item_vectors", None) is not None:
            item_vectors = ItemVectors(vocab, scorer.item_vectors, "model")
        self.vectors = item_vectors
        self.rows = item_vectors.rows_for(vocab) if item_vectors is not None else None
        self.covered = {k: torch.zeros(len(vocab), dtype=torch.bool) for k in ks}
        self.sums = {(name, k): 0.0 for name in BEYOND_ACCURACY for k in ks}
        self.slots = {k: 0 for k in ks}
        self.lists = {k: 0 for k in ks}

    def add(self, top: torch.Tensor, valid: torch.Tensor) -> None:
        """One batch's lists: ``top`` [B, K] item rows, best first, and which slots hold an item (host tensors)."""
        similarity = has_vector = None
        if self.vectors is not None:
            vectors = self.vectors.vectors[self.rows[top].to(self.vectors.vectors.device)].float()
            norms = vectors.norm(dim=2, keepdim=True)
            has_vector = ((norms[..., 0] > 0).cpu() & valid).float()
            unit = vectors / norms.clamp_min(1e-12)
            similarity = (unit @ unit.transpose(1, 2)).cpu()
        for k in self.ks:
            rows, ok = top[:, :k], valid[:, :k]
            self.covered[k][rows[ok]] = True
            self.slots[k] += int(ok.sum())
            self.sums["novelty", k] += float(self.novelty[rows][ok].sum())
            self.sums["avg_popularity", k] += float(self.counts[rows][ok].sum())
            if similarity is not None:
                has = has_vector[:, :k]
                pairs = has[:, :, None] * has[:, None, :] * (1 - torch.eye(rows.shape[1]))
                n_pairs = pairs.sum((1, 2))
                listed = n_pairs > 0
                mean_cosine = (similarity[:, :k, :k] * pairs).sum((1, 2))[listed] / n_pairs[listed]
                self.sums["diversity", k] += float((1 - mean_cosine).sum())
                self.lists[k] += int(listed.sum())

    def result(self) -> dict[str, float]:
        out = {}
        for k in self.ks:
            out[f"coverage@{k}"] = int(self.covered[k][UNKNOWN + 1:].sum()) / self.known if self.known else math.nan
            out[f"diversity@{k}"] = self.sums["diversity", k] / self.lists[k] if self.lists[k] else math.nan
            for name in ("novelty", "avg_popularity"):
                out[f"{name}@{k}"] = self.sums[name, k] / self.slots[k] if self.slots[k] else math.nan
        return out


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
             max_events: int | None = None, seed: int = 0, new_items: set[str] | None = None,
             beyond_accuracy: bool = False, item_vectors: ItemVectors | None = None,
             live_events: pd.DataFrame | None = None) -> dict:
    """Mean metrics over ``events`` (see the module docstring), plus ``examples``; NaN without events.

    ``with_loss`` adds ``loss``: the mean next-item cross-entropy (nats) of the softmax over all
    known items, over the events whose item the scorer knows. ``max_events`` bounds the cost: a
    seeded sample of that many events is scored, the others still count as users' history.
    With ``new_items`` (ids of items nobody has interacted with yet), ``new_item_share@K`` is
    the share of the top-K slots (largest K of ``ks``) they fill, ``new_item_recall@K`` the
    Recall@K of the events on them (``new_item_examples`` of them). A scorer that ``takes_live``
    gets each item's live interactions before each event: its events in ``live_events`` (events
    the scorer has not trained on; default ``events``) earlier in time. ``beyond_accuracy`` adds
    ``coverage@K``, ``diversity@K``, ``novelty@K`` and ``avg_popularity@K`` for each K of ``ks``
    (the module docstring), the training data being ``history`` as given; ``item_vectors``
    (e.g. :meth:`ItemVectors.text_of`) are what diversity is measured with.
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

    Beyond accuracy: ``u2`` clicked ``a`` before its second event, so that list is ``b`` alone;
    the lists are ``[a, b]`` and ``[b]`` of the two known items, with ``a`` counted once in the
    one training event (``p_a = 1.5/2``, ``p_b = 0.5/2``); ``a`` and ``b`` are orthogonal:

    >>> texts = ItemVectors.of({"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0])})
    >>> result = evaluate(Popularity.of(ev.iloc[:1], also=ev), ev.iloc[1:], ev.iloc[:1], ks=(2,),
    ...                   beyond_accuracy=True, item_vectors=texts)
    >>> [round(result[f"{name}@2"], 4) for name in BEYOND_ACCURACY]
    [1.0, 1.0, 1.4717, 0.3333]

    (novelty: ``(-log2(3/4) - 2 log2(1/4)) / 3``; popularity: ``(1 + 0 + 0) / 3``.)
    """
    training = events_frame(history)
    examples, live = _examples(scorer, events, history, max_events, seed, getattr(scorer, "takes_live", False),
                               live_events)
    totals = {name: 0.0 for k in ks for name in (f"recall@{k}", f"ndcg@{k}")}
    loss, scored, new_slots, new_hits, new_examples = 0.0, 0, 0.0, 0.0, 0
    if new_items is not None:
        is_new = torch.zeros(len(scorer.vocab.items), dtype=torch.bool)
        is_new[torch.from_numpy(scorer.vocab.items.index(new_items))] = True
        is_new[:UNKNOWN + 1] = False
    beyond = _BeyondAccuracy(scorer, training, item_vectors, ks) if beyond_accuracy else None
    batch_size = max(1, min(batch_size, SCORES_PER_BATCH // len(scorer.vocab.items)))
    for lo in range(0, len(examples), batch_size):
        hi = min(lo + batch_size, len(examples))
        inputs = examples.inputs.select(slice(lo, hi))
        scores = (scorer.scores(inputs) if live is None else scorer.scores(inputs, live.before(examples.times[lo:hi])))
        scores = scores.float()
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
        if new_items is not None or beyond is not None:  # the lists shown: seen items left out, the target too
            top_scores, top = scores.topk(min(max(ks), scores.shape[1]), dim=1)
            top, valid = top.cpu(), torch.isfinite(top_scores).cpu()
            if new_items is not None:
                new_slots += is_new[top].float().mean(1).sum().item()
            if beyond is not None:
                beyond.add(top, valid)
        scores.scatter_(1, targets[:, None], target_scores)
        for name, values in metrics_at(ranks(scores, targets), ks).items():
            totals[name] += values.sum().item()
            if new_items is not None and name == f"recall@{max(ks)}":
                on_new = is_new.to(targets.device)[targets]
                new_hits, new_examples = new_hits + values[on_new].sum().item(), new_examples + int(on_new.sum())
    n = len(examples)
    result = {name: total / n if n else math.nan for name, total in totals.items()}
    if new_items is not None:
        result[f"new_item_share@{max(ks)}"] = new_slots / n if n else math.nan
        result[f"new_item_recall@{max(ks)}"] = new_hits / new_examples if new_examples else math.nan
        result["new_item_examples"] = new_examples
    if beyond is not None:
        result.update(beyond.result() if n else {f"{name}@{k}": math.nan for name in BEYOND_ACCURACY for k in ks})
    result["examples"] = n
    if with_loss:
        result["loss"] = loss / scored if scored else math.nan
    return result


def _examples(scorer: Scorer, events: pd.DataFrame, history: pd.DataFrame | None, max_events: int | None,
              seed: int, with_live: bool, live_events: pd.DataFrame | None
              ) -> tuple[NextItemExamples, LiveCounts | None]:
    """:func:`evaluate`'s examples (a seeded sample of ``max_events`` of ``events``, the others
    history) and, ``with_live``, the live interactions of ``live_events`` (default ``events``)."""
    live = None
    if with_live:
        untrained = events if live_events is None else events_frame(live_events)
        live = LiveCounts(scorer.vocab.items.index(untrained["item_id"]), untrained["ts"].to_numpy(),
                          len(scorer.vocab.items))
    if max_events is not None and len(events) > max_events:
        keep = np.zeros(len(events), dtype=bool)
        keep[np.random.default_rng(seed).choice(len(events), size=max_events, replace=False)] = True
        history, events = pd.concat([events_frame(history), events[~keep]], ignore_index=True), events[keep]
    return next_item_examples(events_frame(history), events, scorer.vocab, scorer.max_len), live


def blend_hits(scorer: BundleScorer, blends: Sequence[TextBlend], events: pd.DataFrame,
               history: pd.DataFrame | None = None, k: int = 20, max_events: int | None = None,
               seed: int = 0, live_events: pd.DataFrame | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each example's hit at ``k`` under each of ``blends`` ([len(blends), examples] bool, the
    examples :func:`evaluate` scores with these arguments, hit as it counts them) and each
    example's target item row: one pass of the model and of the terms' parts
    (:meth:`learner.blend.TextBlend.terms`) for every blend, which must differ in their weights only.

    >>> from learner.bundle import ModelBundle
    >>> from learner.model import ModelConfig
    >>> ev = pd.DataFrame({"event_id": [f"e{i}" for i in range(30)], "type": "click",
    ...     "user_id": [f"u{i % 3}" for i in range(30)], "item_id": [f"i{i % 7}" for i in range(30)],
    ...     "storefront": "s", "ts": range(30), "session_id": None})
    >>> scorer = BundleScorer(ModelBundle.build(ModelConfig(dim=8, heads=1), events=ev, seed=0),
    ...                       blend=TextBlend())
    >>> blends = [TextBlend(), TextBlend(live=1.0)]
    >>> hits, targets = blend_hits(scorer, blends, ev.iloc[20:], ev.iloc[:20], k=2)
    >>> [round(float(h.mean()), 4) for h in hits] == [evaluate(scorer.with_blend(b), ev.iloc[20:], ev.iloc[:20],
    ...                                                ks=(2,))["recall@2"] for b in blends]
    True
    """
    first = blends[0]
    if any(replace(b, weight=0.0, live=0.0) != replace(first, weight=0.0, live=0.0) for b in blends):
        raise ValueError("blend_hits compares blends that differ in their weights only")
    takes_live = any(b.live for b in blends)
    examples, live = _examples(scorer, events, history, max_events, seed, takes_live, live_events)
    model_alone = scorer.with_blend(TextBlend())
    text = first.text_rows(scorer.model.item_text) if any(blends) else None
    hits = np.zeros((len(blends), len(examples)), dtype=bool)
    batch_size = max(1, min(512, SCORES_PER_BATCH // len(scorer.vocab.items)))
    for lo in range(0, len(examples), batch_size):
        hi = min(lo + batch_size, len(examples))
        inputs = examples.inputs.select(slice(lo, hi))
        base = model_alone.scores(inputs).float()
        terms = first.terms(inputs.items.to(base.device), text, scorer.counts,
                             None if live is None else live.before(examples.times[lo:hi]))
        targets = examples.targets[lo:hi].to(base.device)
        rows, items = examples.seen_pairs(lo, hi)
        rows, items = rows.to(base.device), items.to(base.device)
        for j, blend in enumerate(blends):
            scores = blend.apply(base, terms) if blend else base.clone()
            scores[:, :UNKNOWN + 1] = float("-inf")
            target_scores = scores.gather(1, targets[:, None])
            scores[rows, items] = float("-inf")
            scores.scatter_(1, targets[:, None], target_scores)
            hits[j, lo:hi] = (ranks(scores, targets) < k).cpu().numpy()
    return hits, examples.targets.numpy()

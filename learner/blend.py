"""New items ranked with what their text knows and what shoppers did with them since: the model's
score plus a text term and a live term, both fading with the model's evidence.

A trained model ranks an item it has seen often by what shoppers did with it, and an item
nobody has touched only by its text projection, trained for warm items; its scores are not
comparable with warm items'. The content-only baseline (the user's recent items' mean MiniLM
vector against each item's) finds new items far better. So every score gets two terms:

    score(u, i) = model(u, i) + evidence(n_i) * (weight * s + live * log(1 + c_i) * fit),
    s = profile(u) . text(i),  fit = max(s, 0) / spread(u)

``text(i)`` is the item's unit MiniLM vector (the version's tuned encoder's when text is
tuned) less ``center``, the mean of the catalog's (zero for an item without text);
``profile(u)`` the mean of ``text`` over the user's ``recent`` newest items. MiniLM's
vectors share a large common direction (two unrelated product texts have a cosine near 0.3):
centred, an unrelated new item gets no lift, or a negative one, and a related one a positive
one. ``c_i`` are the item's live interactions: those the version has not trained on, up to
the moment of the ranking (:class:`LiveCounts`; serving counts them as events arrive,
:class:`serving.history.LiveInteractions`): a new product shoppers have started to click is
likelier to be clicked next than one nobody has, by shoppers whose recent items its text fits,
and the more it fits them the likelier. ``spread(u)``, the root mean square of ``s`` over the
items with text, puts the fit in each shopper's own units (a profile of ten unrelated items
has small similarities to everything, a focused one large ones): a new item gets the live term
in proportion to how many of those units its text stands above the catalog's mean for that
shopper, and none where it goes against the shopper's recent items. On MovieLens, at the
fit's default tolerance, this found 0.1055 and 0.1078 of new-item events where lifting every
shopper whose recent items the text does not go against (``s >= 0``) found 0.0809 and 0.0824,
and lifting every shopper less still (``docs/benchmarks/backtest.md``).
``n_i`` the item's interactions the model
has trained on and ``evidence(n) = 1 / (1 + n / half_count)``: a new item gets both terms
whole, an item with ``half_count`` interactions half (by default an item's first trained
interaction takes nearly all of them away: :data:`learner.options.TEXT_BLEND_HALF_COUNT`).

``weight`` and ``live`` are fitted, not set by hand (:func:`fit_weight`): of the pairs of
:data:`GRID` x :data:`LIVE_GRID` (multiples of the spread of the model's scores) whose Recall@K
stays within ``tolerance`` of the model's alone, with a margin for noise, the one that finds new
items best, so new items gain what warm items can spare and no more. An update fits on its lineage's
:class:`Evidence`, a new model on its held-out events; in the held-out fit the items an
update's window introduced count as new (:func:`fit_counts`), as many as the next window will
bring. The gate, the backtest and drift score through :meth:`TextBlend.add_to`,
serving (:meth:`serving.rankers.Recommender.recommend`) with the same weights, centre and
profile over its indexes' rows, so what the gate judged is what shoppers get.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from learner.idmap import PAD
from learner.options import TEXT_BLEND_HALF_COUNT

GRID = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
"""Candidate text weights, in standard deviations of the model's scores over items."""

LIVE_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)
"""Candidate live weights, in standard deviations of the model's scores per ``log(1 + c)``."""

PAIRS = tuple((weight, live) for live in LIVE_GRID for weight in GRID)
"""The (text weight, live weight) pairs a fit scores, both terms off first."""


@dataclass(frozen=True)
class Terms:
    """A batch's parts of the terms (:meth:`TextBlend.terms`): ``similarity`` [B, n_items] of each
    profile to each item's text and ``fit`` ``max(s, 0) / spread(u)`` (both None without text),
    ``evidence`` [n_items], ``log_live`` [B, n_items] ``log(1 + c)`` of items' live
    interactions (None without them)."""

    similarity: torch.Tensor | None
    fit: torch.Tensor | None
    evidence: torch.Tensor
    log_live: torch.Tensor | None


@dataclass(frozen=True)
class TextBlend:
    """The text term of a version's scores (see the module docstring); ``weight`` 0 turns it off.

    Examples
    --------
    >>> blend = TextBlend(weight=2.0, half_count=5.0, recent=2, center=(0.5, 0.5))
    >>> blend.item_weights(torch.tensor([0, 5, 45])).tolist()
    [2.0, 1.0, 0.20000000298023224]
    >>> texts = blend.text_rows(torch.tensor([[0.0, 0], [0, 0], [2, 0], [0, 1]]))
    >>> texts.tolist()
    [[0.0, 0.0], [0.0, 0.0], [0.5, -0.5], [-0.5, 0.5]]
    >>> items = torch.tensor([[0, 2, 2]])
    >>> blend.add_to(torch.zeros(1, 4), items, texts, torch.tensor([0, 0, 5, 0])).tolist()
    [[0.0, 0.0, 0.5, -1.0]]

    With a live weight, items' live interactions ``[B, n_items]`` (:meth:`LiveCounts.before`)
    add ``live * evidence * log(1 + c) * fit``: row 2's similarity (0.5) is one spread of the
    user's similarities over the items with text (the root mean square of 0.5 and -0.5), so
    its fit is 1; row 3's text goes against the user's recent items, so its term is left out:

    >>> live = TextBlend(live=1.0, half_count=5.0, recent=2, center=(0.5, 0.5))
    >>> live.add_to(torch.zeros(1, 4), items, texts, torch.tensor([0, 0, 5, 0]),
    ...             live=torch.tensor([[0.0, 0, 3, 3]])).tolist()
    [[0.0, 0.0, 0.6931471824645996, 0.0]]
    """

    weight: float = 0.0
    half_count: float = TEXT_BLEND_HALF_COUNT
    recent: int = 10
    center: tuple[float, ...] = ()
    live: float = 0.0

    def __bool__(self) -> bool:
        """Whether either term is on."""
        return bool(self.weight or self.live)

    def evidence(self, counts: torch.Tensor) -> torch.Tensor:
        """``evidence(count)`` of each item: 1 for a new item, fading with the model's interactions."""
        return 1 / (1 + counts.float() / self.half_count)

    def item_weights(self, counts: torch.Tensor) -> torch.Tensor:
        """Each item's text weight: ``weight * evidence(count)``."""
        return self.weight * self.evidence(counts)

    def text_rows(self, item_text: torch.Tensor) -> torch.Tensor:
        """float32 ``text(i)`` of every item row: unit vectors less ``center``, zero without text."""
        unit = unit_rows(item_text)
        if not self.center:
            return unit
        has_text = unit.abs().sum(1, keepdim=True) > 0
        return torch.where(has_text, unit - torch.tensor(self.center, device=unit.device), 0.0)

    def add_to(self, scores: torch.Tensor, items: torch.Tensor, text: torch.Tensor | None,
               counts: torch.Tensor, live: torch.Tensor | None = None) -> torch.Tensor:
        """``scores`` [B, n_items] plus the text term, for histories ``items`` [B, L] (0 pads;
        ``text``: :meth:`text_rows`), and the live term, given items' live interactions ``live``,
        in proportion to how well the item's text fits the user's profile (module docstring)."""
        live = live if self.live else None
        return self.apply(scores, self.terms(items, text if self.weight or live is not None else None, counts, live))

    def terms(self, items: torch.Tensor, text: torch.Tensor | None, counts: torch.Tensor,
              live: torch.Tensor | None = None) -> Terms:
        """What the terms of a batch are made of, whatever their weights (:meth:`apply`): the
        profiles' similarity and fit to every item's text (when ``text`` is given), each item's
        ``evidence`` and ``log(1 + live)`` (when ``live`` is given)."""
        similarity = fit = None
        if text is not None:
            similarity = profiles(items, text, self.recent) @ text.T
            with_text = (text.abs().sum(1) > 0).sum().clamp(min=1)
            spread = (similarity.square().sum(1, keepdim=True) / with_text).sqrt()
            fit = similarity.clamp(min=0) / spread.clamp(min=1e-12)
        return Terms(similarity, fit, self.evidence(counts), None if live is None else torch.log1p(live))

    def apply(self, scores: torch.Tensor, terms: Terms) -> torch.Tensor:
        """``scores`` plus this blend's terms at its weights: several blends of one batch share
        its :meth:`terms`, and each costs a few element-wise passes."""
        evidence = terms.evidence.to(scores.device)
        if self.weight:
            scores = scores + terms.similarity * (self.weight * evidence)
        if self.live and terms.log_live is not None:
            term = terms.log_live.to(scores.device) * (self.live * evidence)
            scores = scores + (term if terms.fit is None else term * terms.fit)
        return scores

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GridScore:
    """Recall@20 at each pair of ``grid``, over all events and over the events on new items, and
    ``changed``: the share of events each pair's hit or miss differs from the model's alone on
    (what tells a real change of recall from noise, :func:`fit_weight`)."""

    recalls: dict[tuple[float, float], float]
    new_recalls: dict[tuple[float, float], float]
    events: int
    new_events: int
    changed: dict[tuple[float, float], float] = field(default_factory=dict)


@dataclass(frozen=True)
class Evidence:
    """What each pair of ``grid`` scored (Recall@20, overall and on new items) on events a lineage's
    versions had not trained on, summed over its updates, an update's events counting half after
    ``half_life`` more.

    Each update scores its window with the version it starts from before training on it (its
    new items new to it, as they are when it serves), at every pair, and adds the hits here; the
    sum travels with the lineage (``info["text_blend_evidence"]``), so the weights are chosen on
    tens of thousands of events, not on a job's held-out thousand, where a 1% change is noise.

    >>> grid = ((0.0, 0.0), (1.0, 0.0))
    >>> score = GridScore({grid[0]: 0.5, grid[1]: 0.25}, {grid[0]: 0.0, grid[1]: 0.5}, events=100, new_events=10,
    ...                   changed={grid[0]: 0.0, grid[1]: 0.25})
    >>> first = Evidence(grid=grid).add(score, half_life=100)
    >>> first.score() == score
    True
    >>> second = Evidence(**first.to_dict()).add(score, half_life=100)
    >>> second.events, second.new_events
    (150.0, 15.0)

    Evidence stored over another grid (a version fitted before the live term), or without the
    changed shares, starts afresh:

    >>> Evidence.of({"grid": [0.0, 1.0], "events": 2000.0, "hits": [300.0, 290.0]}).events
    0.0
    """

    grid: tuple[tuple[float, float], ...] = PAIRS
    events: float = 0.0
    hits: tuple[float, ...] = ()
    new_events: float = 0.0
    new_hits: tuple[float, ...] = ()
    changed: tuple[float, ...] = ()

    def __post_init__(self):  # lists when read back from a version's JSON header
        object.__setattr__(self, "grid", tuple(tuple(pair) for pair in self.grid))
        for name in ("hits", "new_hits", "changed"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @classmethod
    def of(cls, info: dict | None) -> Evidence:
        """The evidence stored in a version's ``info`` (none, when absent or over another grid)."""
        try:
            evidence = cls(**info) if info else cls()
        except TypeError:  # stored by a version of the term with other fields
            return cls()
        kept = evidence.grid == PAIRS and (not evidence.events or len(evidence.changed) == len(PAIRS))
        return evidence if kept else cls()

    def add(self, score: GridScore, half_life: float) -> Evidence:
        """This evidence, older events discounted, plus ``score``'s events."""
        keep = 0.5 ** (score.events / half_life)

        def summed(totals: tuple[float, ...], shares: dict, events: int) -> tuple[float, ...]:
            totals = totals or (0.0,) * len(self.grid)
            return tuple(t * keep + _finite(shares.get(p, math.nan)) * events for t, p in zip(totals, self.grid))

        return replace(self, events=self.events * keep + score.events,
                       hits=summed(self.hits, score.recalls, score.events),
                       new_events=self.new_events * keep + score.new_events,
                       new_hits=summed(self.new_hits, score.new_recalls, score.new_events),
                       changed=summed(self.changed, score.changed, score.events))

    def score(self) -> GridScore:
        """Recall@20 and changed shares by pair over the evidence's events."""
        def shares(totals: tuple[float, ...], events: float) -> dict:
            return {p: t / events for p, t in zip(self.grid, totals)} if events else {}

        return GridScore(shares(self.hits, self.events), shares(self.new_hits, self.new_events),
                         round(self.events), round(self.new_events), shares(self.changed, self.events))

    def to_dict(self) -> dict:
        return asdict(self)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


class LiveCounts:
    """Items' interactions before any moment among events a version has not trained on: what
    serving counts live (:class:`serving.history.LiveInteractions`), for ranking events of the past.

    >>> live = LiveCounts(np.array([2, 3, 2]), np.array([10, 20, 30]), n_items=4)
    >>> live.before(np.array([25, 5, 31, 30])).tolist()
    [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
    """

    def __init__(self, rows: np.ndarray, ts: np.ndarray, n_items: int):
        order = np.argsort(ts, kind="stable")
        self.rows = torch.from_numpy(np.asarray(rows, np.int64)[order])
        self.ts, self.n_items = np.asarray(ts, np.int64)[order], n_items

    def before(self, times: np.ndarray) -> torch.Tensor:
        """float32 [len(times), n_items]: each item's events strictly before each of ``times``."""
        ends = np.searchsorted(self.ts, times, side="left")
        order = np.argsort(ends, kind="stable")
        ends = ends[order]
        counts = torch.zeros(len(times), self.n_items)
        if not len(times) or not ends[-1]:
            return counts
        segment = torch.from_numpy(np.repeat(np.arange(len(times)), np.diff(ends, prepend=0)))
        counts.index_put_((segment, self.rows[:ends[-1]]), torch.ones(int(ends[-1])), accumulate=True)
        out = torch.empty_like(counts)
        out[torch.from_numpy(order)] = counts.cumsum(0)
        return out


def profiles(items: torch.Tensor, item_text: torch.Tensor, recent: int) -> torch.Tensor:
    """[B, text dim]: the mean text vector of each history's ``recent`` newest items (0 pads)."""
    items = items[:, -recent:]
    counts = (items != PAD).sum(1, keepdim=True).clamp(min=1)
    return item_text[items].float().sum(1) / counts.to(item_text.device)


def unit_rows(item_text: torch.Tensor) -> torch.Tensor:
    """float32 unit rows of ``item_text`` (zero rows stay zero), as serving's text index holds them."""
    return torch.nn.functional.normalize(item_text.float(), dim=1)


def center_of(item_text: torch.Tensor) -> tuple[float, ...]:
    """The mean unit text vector of the items that have text (``()`` when none has)."""
    unit = unit_rows(item_text)
    with_text = unit[unit.abs().sum(1) > 0]
    return tuple(with_text.mean(0).tolist()) if len(with_text) else ()


def fit_weight(score: GridScore, tolerance: float, confidence: float = 0.0) -> tuple[float, float]:
    """The (text, live) pair whose Recall@20 is within ``tolerance`` (relative) of the model's alone
    (the pair ``(0, 0)``) and finds new items best; of pairs that find them equally well (as all
    do when the events hold none), the one that gives them most: the larger text weight, then
    the larger live weight. New items gain what warm items can spare and no more.

    ``confidence`` asks for that with margin for noise: a pair's change of Recall@20 less
    ``confidence`` standard errors of it (paired with the model's alone over the same events:
    ``sqrt((changed - change**2) / events)``) must stay within ``tolerance``. Of many pairs
    measured on a few thousand events, the largest that lands just within ``tolerance`` mostly
    got there by luck and costs more on the next window; with margin, a pair needs evidence in
    proportion to how many hits it moves.

    >>> recalls = {(0.0, 0.0): 0.200, (1.0, 0.0): 0.199, (2.0, 0.0): 0.190, (0.0, 1.0): 0.201}
    >>> score = GridScore(recalls, {(0.0, 0.0): 0.0, (1.0, 0.0): 0.2, (2.0, 0.0): 0.4, (0.0, 1.0): 0.3},
    ...                   events=4000, new_events=80,
    ...                   changed={(0.0, 0.0): 0.0, (1.0, 0.0): 0.002, (2.0, 0.0): 0.02, (0.0, 1.0): 0.05})
    >>> fit_weight(score, tolerance=0.01), fit_weight(score, tolerance=0.01, confidence=1.0)
    ((0.0, 1.0), (1.0, 0.0))
    >>> fit_weight(GridScore(recalls, {}, events=1000, new_events=0), tolerance=0.01)
    (1.0, 0.0)
    """
    base = score.recalls[(0.0, 0.0)]

    def margin(pair: tuple[float, float]) -> float:
        change = score.recalls[pair] - base
        noise = max(score.changed.get(pair, 0.0) - change ** 2, 0.0) / max(score.events, 1)
        return change - confidence * math.sqrt(noise)

    within = [pair for pair in score.recalls if pair == (0.0, 0.0) or margin(pair) >= -tolerance * base]
    return max(within, key=lambda pair: (_finite(score.new_recalls.get(pair, math.nan)), pair))


def fit_counts(counts: torch.Tensor, held_out: np.ndarray, window: np.ndarray | None = None) -> torch.Tensor:
    """The interactions the fit counts for each item: ``counts`` less the held-out events
    (``held_out``: their item rows), as the model trained on them; and, given an update's
    ``window`` (its events' item rows, held-out ones included), none for every item whose
    interactions are all in it, as the next window's new items will have none.

    >>> fit_counts(torch.tensor([0, 0, 5, 3, 2]), np.array([2, 4])).tolist()
    [0, 0, 4, 3, 1]
    >>> fit_counts(torch.tensor([0, 0, 5, 3, 2]), np.array([2, 4]), window=np.array([3, 3, 3, 4, 4, 2])).tolist()
    [0, 0, 4, 0, 0]
    """
    trained = _less(counts, held_out)
    return trained if window is None else trained.masked_fill(_less(counts, window) == 0, 0)


def _less(counts: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """``counts`` less one per row of ``rows``."""
    seen = torch.bincount(torch.from_numpy(rows.astype(np.int64)), minlength=len(counts)).to(counts.device)
    return (counts - seen[:len(counts)]).clamp(min=0)

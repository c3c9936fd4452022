"""New items ranked with what their text knows: the model's score plus a text term that fades with evidence.

A trained model ranks an item it has seen often by what shoppers did with it, and an item
nobody has touched only by its text projection, trained for warm items; its scores are not
comparable with warm items'. The content-only baseline (the user's recent items' mean MiniLM
vector against each item's) finds new items far better. So every score gets a text term:

    score(u, i) = model(u, i) + weight * evidence(n_i) * profile(u) . text(i)

``text(i)`` is the item's unit MiniLM vector (the version's tuned encoder's when text is
tuned) less ``center``, the mean of the catalog's (zero for an item without text);
``profile(u)`` the mean of ``text`` over the user's ``recent`` newest items. MiniLM's
vectors share a large common direction (two unrelated product texts have a cosine near 0.3):
centred, an unrelated new item gets no lift, or a negative one, and a related one a positive
one. ``n_i`` the item's interactions the model has trained on and
``evidence(n) = 1 / (1 + n / half_count)``: a new item gets the whole text term, an item
with ``half_count`` interactions half of it (by default an item's first interaction takes
nearly all of it away: :data:`learner.options.TEXT_BLEND_HALF_COUNT`).

``weight`` is fitted on each job's own held-out events (:func:`fit_weight`), not set by hand:
the largest weight of a grid (multiples of the spread of the model's scores) whose Recall@K
on those events stays within ``tolerance`` of the model's alone, so new items gain what
warm items can spare and no more; in an update's fit the items its window introduced count as
new (:func:`fit_counts`), as many as the next window will bring. The gate, the backtest and early stopping score through
:meth:`TextBlend.add_to`, serving (:meth:`serving.rankers.Recommender.recommend`) with the
same weights, centre and profile over its indexes' rows, so what the gate judged is what
shoppers get.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from learner.idmap import PAD
from learner.options import TEXT_BLEND_HALF_COUNT

GRID = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
"""Candidate weights, in standard deviations of the model's scores over items."""


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
    """

    weight: float = 0.0
    half_count: float = TEXT_BLEND_HALF_COUNT
    recent: int = 10
    center: tuple[float, ...] = ()

    def item_weights(self, counts: torch.Tensor) -> torch.Tensor:
        """Each item's text weight: ``weight * evidence(count)``."""
        return self.weight / (1 + counts.float() / self.half_count)

    def text_rows(self, item_text: torch.Tensor) -> torch.Tensor:
        """float32 ``text(i)`` of every item row: unit vectors less ``center``, zero without text."""
        unit = unit_rows(item_text)
        if not self.center:
            return unit
        has_text = unit.abs().sum(1, keepdim=True) > 0
        return torch.where(has_text, unit - torch.tensor(self.center, device=unit.device), 0.0)

    def add_to(self, scores: torch.Tensor, items: torch.Tensor, text: torch.Tensor,
               counts: torch.Tensor) -> torch.Tensor:
        """``scores`` [B, n_items] plus the text term, for histories ``items`` [B, L] (0 pads);
        ``text``: :meth:`text_rows`."""
        if not self.weight:
            return scores
        return scores + (profiles(items, text, self.recent) @ text.T) * self.item_weights(counts).to(scores.device)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Evidence:
    """What each weight of ``grid`` scored (Recall@20) on events a lineage's versions had not trained
    on, summed over its updates, an update's events counting half after ``half_life`` more.

    Each update scores its window with the version it starts from before training on it (its
    new items new to it, as they are when it serves), at every weight, and adds the hits here; the
    sum travels with the lineage (``info["text_blend_evidence"]``), so the weight is chosen on
    tens of thousands of events, not on a job's held-out thousand, where a 1% change is noise.

    >>> first = Evidence(grid=(0.0, 1.0)).add({0.0: 0.5, 1.0: 0.25}, events=100, half_life=100)
    >>> first.recalls()
    {0.0: 0.5, 1.0: 0.25}
    >>> second = Evidence(**first.to_dict()).add({0.0: 0.5, 1.0: 0.5}, events=100, half_life=100)
    >>> second.events, second.recalls()[1.0]
    (150.0, 0.4166666666666667)
    """

    grid: tuple[float, ...] = GRID
    events: float = 0.0
    hits: tuple[float, ...] = ()

    def __post_init__(self):  # lists when read back from a version's JSON header
        object.__setattr__(self, "grid", tuple(self.grid))
        object.__setattr__(self, "hits", tuple(self.hits))

    @classmethod
    def of(cls, info: dict | None) -> Evidence:
        """The evidence stored in a version's ``info`` (none, when absent or over another grid)."""
        evidence = cls(**info) if info else cls()
        return evidence if evidence.grid == GRID else cls()

    def add(self, recalls: dict[float, float], events: int, half_life: float) -> Evidence:
        """This evidence, older events discounted, plus ``events`` scored with ``recalls`` by weight."""
        keep = 0.5 ** (events / half_life)
        old = self.hits or (0.0,) * len(self.grid)
        return replace(self, events=self.events * keep + events,
                       hits=tuple(hits * keep + recalls[weight] * events for hits, weight in zip(old, self.grid)))

    def recalls(self) -> dict[float, float]:
        """Recall@20 by weight over the evidence's events (empty without any)."""
        return {weight: hits / self.events for weight, hits in zip(self.grid, self.hits)} if self.events else {}

    def to_dict(self) -> dict:
        return asdict(self)


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


def fit_weight(recalls: dict[float, float], tolerance: float) -> float:
    """The largest weight whose recall is within ``tolerance`` (relative) of the recall at weight 0.

    >>> fit_weight({0.0: 0.200, 0.5: 0.201, 1.0: 0.199, 2.0: 0.190}, tolerance=0.01)
    1.0
    """
    floor = recalls[0.0] * (1 - tolerance)
    return max(weight for weight, recall in recalls.items() if recall >= floor)


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

"""Rehearsal memory: which past events to keep, within a fixed budget, for later fine-tunes.

Each storage policy is one small class with the same shape: ``update(window)`` after every
sealed window, ``events`` to read what is kept, and ``state()`` / ``restore()`` so the store
can persist it. How the kept events are mixed into training is the learner's business
(:class:`replay.sampler.RehearsalSampler` draws them).

References
----------
Mi, Lin and Faltings. "ADER: Adaptively Distilled Exemplar Replay Towards Continual
Learning for Session-based Recommendation." RecSys 2020.
Efraimidis and Spirakis. "Weighted random sampling with a reservoir." IPL 2006.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from typing import ClassVar

import numpy as np
import pyarrow as pa

from replay import codec

PRIORITY = "priority"


class RehearsalMemory(ABC):
    """A bounded set of past events, updated one sealed window at a time."""

    name: ClassVar[str]

    def __init__(self, capacity: int, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.seed = seed
        self.n_seen = 0
        self.table = self._empty()

    def _empty(self) -> pa.Table:
        return codec.empty()

    @abstractmethod
    def _select(self, candidates: pa.Table, window: pa.Table) -> pa.Table:
        """What to keep of ``candidates`` (the memory followed by the new window)."""

    def update(self, window: pa.Table) -> None:
        """Take the events of a newly sealed window into account."""
        window = window.select(codec.EVENT_SCHEMA.names)
        candidates = pa.concat_tables([self.table.select(codec.EVENT_SCHEMA.names), window])
        self.table = self._select(candidates, window)
        self.n_seen += window.num_rows

    @property
    def events(self) -> pa.Table:
        """The kept events (the event columns only)."""
        return self.table.select(codec.EVENT_SCHEMA.names)

    def __len__(self) -> int:
        return self.table.num_rows

    def state(self) -> dict:
        """What besides ``table`` must be stored to continue exactly where this left off."""
        return {"n_seen": self.n_seen}

    def restore(self, table: pa.Table, state: dict) -> None:
        self.table = table
        self.n_seen = int(state["n_seen"])


def _top(priorities: np.ndarray, k: int) -> np.ndarray:
    """Ascending indices of the ``k`` largest priorities; among equal ones the earliest are kept.

    >>> _top(np.array([0.5, 0.9, 0.5, 0.1, 0.5]), 3).tolist()
    [0, 1, 2]
    """
    if len(priorities) <= k:
        return np.arange(len(priorities))
    threshold = np.partition(priorities, len(priorities) - k)[len(priorities) - k]
    above = np.flatnonzero(priorities > threshold)
    tied = np.flatnonzero(priorities == threshold)[:k - len(above)]
    return np.sort(np.concatenate([above, tied]))


class _PrioritySample(RehearsalMemory):
    """Keep the ``capacity`` events with the highest random priority (bottom-k sampling).

    Each event draws its priority once, when its window is sealed; drawing it from a
    generator seeded by (seed, events seen so far) makes every update reproducible.
    """

    def _empty(self) -> pa.Table:
        return codec.empty().append_column(PRIORITY, pa.array([], pa.float64()))

    @abstractmethod
    def _priorities(self, window: pa.Table, rng: np.random.Generator) -> np.ndarray:
        """One priority per window event; larger is kept first."""

    def _select(self, candidates: pa.Table, window: pa.Table) -> pa.Table:
        rng = np.random.default_rng([self.seed, self.n_seen])
        priorities = np.concatenate([self.table.column(PRIORITY).to_numpy(),
                                     self._priorities(window, rng)])
        keep = _top(priorities, self.capacity)
        return candidates.take(keep).append_column(PRIORITY, pa.array(priorities[keep]))


class Reservoir(_PrioritySample):
    """A uniform sample of every event seen so far, at most ``capacity`` of them.

    Every event ever seen is in memory with the same probability, ``capacity / n_seen``.

    Examples
    --------
    >>> from replay import codec
    >>> memory = Reservoir(capacity=100, seed=7)
    >>> for w in range(5):
    ...     memory.update(codec.to_table([{"event_id": f"{w}-{i}", "type": "click", "user_id": "u",
    ...                                    "item_id": f"i{i}", "storefront": "s", "ts": w} for i in range(80)]))
    >>> len(memory), memory.n_seen
    (100, 400)
    """

    name = "reservoir"

    def _priorities(self, window: pa.Table, rng: np.random.Generator) -> np.ndarray:
        return rng.random(window.num_rows)


class RecencyWeighted(_PrioritySample):
    """A sample biased to recent events: an event's weight doubles every ``half_life_s`` of event time.

    Sampling without replacement proportional to ``2 ** (ts / half_life)`` via the Gumbel-top-k
    trick: priority = log(weight) + Gumbel noise, keep the top ``capacity``.

    Examples
    --------
    >>> from replay import codec
    >>> memory = RecencyWeighted(capacity=50, half_life_s=3600, seed=1)
    >>> hour_ms = 3_600_000
    >>> for w in range(6):  # six hourly windows of 50 events
    ...     memory.update(codec.to_table([{"event_id": f"{w}-{i}", "type": "click", "user_id": "u",
    ...                                    "item_id": "i", "storefront": "s", "ts": w * hour_ms}
    ...                                   for i in range(50)]))
    >>> newest = sum(1 for ts in memory.events.column("ts").to_pylist() if ts == 5 * hour_ms)
    >>> newest > 20  # about half the memory is from the last hour
    True
    """

    name = "recency"

    def __init__(self, capacity: int, half_life_s: float = 7 * 86_400, seed: int = 0):
        super().__init__(capacity, seed)
        self.half_life_ms = half_life_s * 1000.0

    def _priorities(self, window: pa.Table, rng: np.random.Generator) -> np.ndarray:
        ts = window.column("ts").to_numpy().astype(np.float64)
        return ts / self.half_life_ms * np.log(2.0) + rng.gumbel(size=window.num_rows)


class FrequencyExemplars(RehearsalMemory):
    """Per-item exemplars, each item's budget proportional to how often it occurred (ADER).

    The budget is water-filled: item *i* gets ``min(available_i, lambda * count_i)`` slots,
    with ``lambda`` as large as the capacity allows, so items with too few events left hand
    their share to the others. Within an item the newest events are kept. Counts cover the
    whole history (one integer per item ever seen).

    Examples
    --------
    >>> from replay import codec
    >>> memory = FrequencyExemplars(capacity=10)
    >>> memory.update(codec.to_table([{"event_id": str(i), "type": "click", "user_id": "u",
    ...                                "item_id": "hit" if i % 4 else "niche", "storefront": "s", "ts": i}
    ...                               for i in range(400)]))
    >>> sorted(Counter(memory.events.column("item_id").to_pylist()).items())
    [('hit', 8), ('niche', 2)]
    """

    name = "frequency"

    def __init__(self, capacity: int, seed: int = 0):
        super().__init__(capacity, seed)
        self.item_counts: Counter[str] = Counter()

    def _select(self, candidates: pa.Table, window: pa.Table) -> pa.Table:
        self.item_counts.update(window.column("item_id").to_pylist())
        items = candidates.column("item_id").to_numpy(zero_copy_only=False)
        order = np.lexsort((-candidates.column("ts").to_numpy(), items))  # by item, newest first
        names, starts, available = np.unique(items[order], return_index=True, return_counts=True)
        budget = water_fill(np.array([self.item_counts[n] for n in names], dtype=np.float64),
                            available, self.capacity)
        keep = np.concatenate([order[s:s + b] for s, b in zip(starts, budget) if b]) if budget.any() else []
        return candidates.take(np.sort(np.asarray(keep, dtype=np.int64)))

    def state(self) -> dict:
        return super().state() | {"item_counts": dict(self.item_counts)}

    def restore(self, table: pa.Table, state: dict) -> None:
        super().restore(table, state)
        self.item_counts = Counter(state["item_counts"])


def water_fill(weights: np.ndarray, available: np.ndarray, capacity: int) -> np.ndarray:
    """Integer budgets ``b_i <= available_i`` summing to ``min(capacity, sum(available))``,
    proportional to ``weights`` where no cap binds (largest remainder for the rounding).

    >>> water_fill(np.array([6.0, 3.0, 1.0]), np.array([100, 100, 1]), 10).tolist()
    [6, 3, 1]
    >>> water_fill(np.array([6.0, 3.0, 1.0]), np.array([2, 100, 100]), 10).tolist()
    [2, 6, 2]
    """
    total = min(capacity, int(available.sum()))
    shares = np.zeros(len(weights))
    capped = np.zeros(len(weights), dtype=bool)
    while True:  # cap items that cannot fill their share, then share the rest again
        free = total - available[capped].sum()
        shares[capped] = available[capped]
        open_weight = weights[~capped].sum()
        shares[~capped] = weights[~capped] / open_weight * free if open_weight else 0.0
        newly = ~capped & (shares > available)
        if not newly.any():
            break
        capped |= newly
    budget = np.floor(shares).astype(np.int64)
    room = (available - budget) > 0
    remainder = np.where(room, shares - budget, -1.0)
    for i in np.argsort(-remainder, kind="stable")[:total - budget.sum()]:
        budget[i] += 1
    return budget


POLICIES: dict[str, type[RehearsalMemory]] = {p.name: p for p in (Reservoir, FrequencyExemplars, RecencyWeighted)}


def make_memory(policy: str, capacity: int, seed: int = 0, half_life_s: float = 7 * 86_400) -> RehearsalMemory:
    """The policy named ``policy`` (one of :data:`POLICIES`)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown rehearsal policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if policy == RecencyWeighted.name:
        return RecencyWeighted(capacity, half_life_s, seed)
    return POLICIES[policy](capacity, seed)

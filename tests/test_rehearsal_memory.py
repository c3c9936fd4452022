"""Rehearsal memory policies and the sampler: bounds, uniformity, frequency shares, persistence."""

from __future__ import annotations

import doctest
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import replay.codec
import replay.memory
import replay.sampler
import replay.windows
from replay import codec
from replay.memory import (
    POLICIES,
    FrequencyExemplars,
    RecencyWeighted,
    Reservoir,
    make_memory,
    water_fill,
)
from replay.sampler import RehearsalSampler
from runtime.config import REHEARSAL_POLICIES


def window(ids, items=None, ts=None) -> "codec.pa.Table":
    return codec.to_table([{"event_id": str(i), "type": "click", "user_id": f"u{i % 7}",
                            "item_id": items[k] if items else f"i{i}", "storefront": "s",
                            "ts": ts if ts is not None else int(i)} for k, i in enumerate(ids)])


def split(n: int, cuts: list[int]) -> list[range]:
    bounds = sorted({0, n, *[c % n for c in cuts]})
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("module", [replay.codec, replay.memory, replay.sampler, replay.windows])
def test_docstring_examples_run(module):
    assert doctest.testmod(module).failed == 0


def test_config_names_every_policy():
    assert REHEARSAL_POLICIES == tuple(POLICIES)
    with pytest.raises(ValueError, match="choose one of reservoir, frequency, recency"):
        make_memory("fifo", 10)


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 300), sizes=st.lists(st.integers(0, 400), min_size=1, max_size=8),
       policy=st.sampled_from(sorted(POLICIES)))
def test_memory_never_exceeds_its_bound(capacity, sizes, policy):
    memory = make_memory(policy, capacity, seed=5, half_life_s=3600)
    seen = 0
    for w, size in enumerate(sizes):
        memory.update(window(range(seen, seen + size)))
        seen += size
        assert len(memory) == min(capacity, seen)
        assert len(set(memory.events.column("event_id").to_pylist())) == len(memory)
    assert memory.n_seen == seen


@settings(max_examples=5, deadline=None)
@given(cuts=st.lists(st.integers(1, 10_000), min_size=1, max_size=6))
def test_reservoir_keeps_every_event_with_the_same_probability(cuts):
    n, capacity, trials = 240, 60, 400
    windows = split(n, cuts)
    inclusions = np.zeros(n)
    for seed in range(trials):
        memory = Reservoir(capacity, seed=seed)
        for ids in windows:
            memory.update(window(ids))
        inclusions[[int(i) for i in memory.events.column("event_id").to_pylist()]] += 1
    p = capacity / n
    sigma = np.sqrt(trials * p * (1 - p))
    assert np.abs(inclusions - trials * p).max() < 5 * sigma  # every event, 5 sigma
    # no drift between early and late events: compare the halves' means (4 sigma of a mean of n/2)
    halves = inclusions[: n // 2].mean() - inclusions[n // 2:].mean()
    assert abs(halves) < 4 * sigma * np.sqrt(2 / (n // 2))


@settings(max_examples=40, deadline=None)
@given(weights=st.lists(st.integers(1, 50), min_size=2, max_size=12),
       capacity=st.integers(10, 200), n_windows=st.integers(1, 4))
def test_frequency_exemplar_budgets_follow_item_frequencies(weights, capacity, n_windows):
    rng = np.random.default_rng(len(weights) * 1000 + capacity)
    memory = FrequencyExemplars(capacity)
    counts: Counter = Counter()
    next_id = 0
    for _ in range(n_windows):  # every window draws items with the same skewed distribution
        draws = rng.choice(len(weights), size=sum(weights) * 3, p=np.array(weights) / sum(weights))
        items = [f"item{d}" for d in draws]
        counts.update(items)
        memory.update(window(range(next_id, next_id + len(items)), items))
        next_id += len(items)
    total = sum(counts.values())
    kept = Counter(memory.events.column("item_id").to_pylist())
    if total <= capacity:
        assert kept == counts
        return
    assert sum(kept.values()) == capacity
    for item, n in counts.items():
        assert abs(kept[item] - capacity * n / total) <= 2, (item, kept[item], capacity * n / total)


def test_frequency_exemplars_keep_the_newest_events_of_each_item():
    memory = FrequencyExemplars(capacity=4)
    memory.update(window(range(8), ["a"] * 4 + ["b"] * 4))
    assert sorted(memory.events.column("event_id").to_pylist()) == ["2", "3", "6", "7"]


def test_water_fill_hands_unused_budget_to_other_items():
    budget = water_fill(np.array([90.0, 5.0, 5.0]), np.array([3, 100, 100]), 50)
    assert budget.tolist() == [3, 24, 23] or budget.tolist() == [3, 23, 24]
    assert water_fill(np.array([1.0, 1.0]), np.array([2, 3]), 50).tolist() == [2, 3]


def test_recency_weighted_prefers_recent_windows():
    memory = RecencyWeighted(capacity=200, half_life_s=1.0, seed=3)
    for w in range(8):  # one event-time second per window: each window weighs twice the one before
        memory.update(window(range(w * 200, (w + 1) * 200), ts=w * 1000))
    per_window = Counter(ts // 1000 for ts in memory.events.column("ts").to_pylist())
    assert per_window[7] > per_window[6] > per_window[5] > per_window[3]
    assert 70 < per_window[7] < 130  # about half of a geometric series with ratio 1/2


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_state_round_trips_through_the_compact_form(policy):
    first = make_memory(policy, 50, seed=9, half_life_s=60)
    second = make_memory(policy, 50, seed=9, half_life_s=60)
    first.update(window(range(120)))
    second.restore(codec.decode(codec.encode(first.table)), first.state())
    for m in (first, second):
        m.update(window(range(120, 300), ts=500))
    assert first.table.equals(second.table)
    assert first.state() == second.state()


def test_sampler_draws_the_ratio_without_replacement():
    memory = window(range(500))
    batch = RehearsalSampler(ratio=2.0, seed=1).draw(memory, n_new=100)
    assert batch.num_rows == 200 and len(set(batch.column("event_id").to_pylist())) == 200
    assert RehearsalSampler(ratio=2.0).draw(memory, n_new=1000).num_rows == 500
    assert RehearsalSampler(ratio=0.0).draw(memory, n_new=1000).num_rows == 0
    assert RehearsalSampler(ratio=1.0).draw(codec.empty(), n_new=10).num_rows == 0

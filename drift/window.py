"""All drift metrics of one window, from what earlier windows left behind.

:func:`window_drift` measures input drift and the serving model's prequential quality on a
new window (before anything trains on it); :func:`model_drift` and :func:`forgetting` judge a
new model version once it exists. They take data and numbers only: the worker's training
job (:mod:`training.drift_recording`) fills a :class:`Context` from the store, and :class:`DriftTracker`
keeps one in memory for backtests, so both run the same code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from drift.detectors import REPLAY_WINDOWS, judge_series
from drift.input import input_drift
from drift.metrics import CONCEPT, MetricValue, judged
from drift.model_shift import SCORE_PSI_THRESHOLD, VECTOR_SHIFT_THRESHOLD
from drift.quality import Quality, by_storefront

BWT_RELATIVE = 0.25  # backward transfer alerts below -25% of the probe's first quality ...
BWT_Z = 3.0  # ... and below -3 standard errors of the difference

Series = Mapping[tuple[str, str], Sequence[tuple[float, int]]]  # (metric, storefront) -> [(value, n)], oldest first


@dataclass
class Context:
    """What the metrics of a new window are compared with.

    ``reference`` maps a storefront to its reference events and their label (its first
    windows); ``seen_items``/``seen_users`` hold the ids of earlier events; ``series`` the
    earlier values of every metric and storefront.
    """

    previous: pd.DataFrame | None = None
    previous_label: str = "previous window"
    reference: dict[str, tuple[pd.DataFrame, str]] = field(default_factory=dict)
    seen_items: set[str] = field(default_factory=set)
    seen_users: set[str] = field(default_factory=set)
    series: dict[tuple[str, str], list[tuple[float, int]]] = field(default_factory=dict)

    def last(self, metric: str, storefront: str) -> tuple[float, int] | None:
        values = self.series.get((metric, storefront))
        return values[-1] if values else None


def concept_drift(storefront: str, quality: Quality, series: Series, reference: str) -> list[MetricValue]:
    """The prequential metrics of one storefront, each judged by its detectors over its series.

    Examples
    --------
    >>> history = {("prequential_recall@20", "s"): [(0.15, 3000)] * 8}
    >>> [(v.metric, v.alert) for v in concept_drift("s", Quality(0.03, 0.01, 7.0, 3000), history, "version 3")]
    [('prequential_recall@20', True), ('prequential_ndcg@20', False), ('prequential_loss', False)]
    """
    out = []
    for metric, value in zip(CONCEPT, (quality.recall, quality.ndcg, quality.loss)):
        if quality.n == 0 or not math.isfinite(value):
            continue
        earlier = list(series.get((metric, storefront), ()))[-REPLAY_WINDOWS:]
        alert, detector = judge_series(metric, earlier, value, quality.n)
        baseline = float(np.mean([v for v, _ in earlier])) if earlier else None
        out.append(MetricValue(metric, storefront, float(value), baseline, reference, None, alert, detector,
                               quality.n))
    return out


def model_drift(storefront: str, vector_shift: tuple[float, int], score_shift: tuple[float, int],
                reference: str) -> list[MetricValue]:
    """``item_vector_shift`` and ``score_psi`` of one storefront ((value, items or scores compared) each).

    Examples
    --------
    >>> [(v.metric, v.alert) for v in model_drift("s", (0.8, 100), (0.1, 5000), "version 2")]
    [('item_vector_shift', True), ('score_psi', False)]
    """
    out = []
    for metric, (value, n), threshold in (("item_vector_shift", vector_shift, VECTOR_SHIFT_THRESHOLD),
                                          ("score_psi", score_shift, SCORE_PSI_THRESHOLD)):
        if n and math.isfinite(value):
            out.append(judged(metric, storefront, value, threshold=threshold, reference=reference, n_events=n))
    return out


def bwt_threshold(first: float, now: float, n: int) -> float:
    """How far below the probe's first recall the new one may fall before ``backward_transfer`` alerts."""
    if n <= 0:
        return math.inf
    p = (first + now) / 2
    return max(BWT_RELATIVE * first, BWT_Z * math.sqrt(2 * p * (1 - p) / n))


def forgetting(storefront: str, probe: Quality, first_recall: float | None, reference: str) -> list[MetricValue]:
    """Probe quality of a new version and its backward transfer against ``first_recall``, the probe
    recall of the first version judged on this probe (None: this version is the first).

    Examples
    --------
    >>> [(v.metric, round(v.value, 2), v.alert) for v in forgetting("s", Quality(0.1, 0.05, 6.0, 2000), 0.2, "p")]
    [('probe_recall@20', 0.1, False), ('probe_ndcg@20', 0.05, False), ('backward_transfer', -0.1, True)]
    """
    if probe.n == 0 or not math.isfinite(probe.recall):
        return []
    first = probe.recall if first_recall is None else first_recall
    return [MetricValue("probe_recall@20", storefront, probe.recall, None, reference, None, False, "none", probe.n),
            MetricValue("probe_ndcg@20", storefront, probe.ndcg, None, reference, None, False, "none", probe.n),
            judged("backward_transfer", storefront, probe.recall - first, baseline=0.0,
                   threshold=bwt_threshold(first, probe.recall, probe.n), reference=reference, n_events=probe.n)]


def window_drift(window: pd.DataFrame, context: Context, *, catalog: pd.DataFrame | None = None, serving=None,
                 serving_name: str = "", history: pd.DataFrame | None = None,
                 quality_events: int | None = None, seed: int = 0) -> list[MetricValue]:
    """Input drift and (with a ``serving`` scorer) prequential quality, for every storefront of ``window``.

    ``history`` is what the serving model reads as users' earlier events; ``quality_events``
    bounds the events the prequential quality of each storefront is measured on (a seeded sample).
    """
    out: list[MetricValue] = []
    storefronts = sorted(window["storefront"].unique())
    for storefront in storefronts:
        reference, reference_label = context.reference.get(storefront, (None, ""))
        shares = {m: last for m in ("new_item_share", "new_user_share")
                  if (last := context.last(m, storefront)) is not None}
        out += input_drift(storefront, window, previous=context.previous, reference=reference, catalog=catalog,
                           seen_items=context.seen_items, seen_users=context.seen_users, previous_shares=shares,
                           previous_label=context.previous_label, reference_label=reference_label)
    if serving is not None:
        for storefront, quality in by_storefront(serving, window, history, max_events=quality_events,
                                                 seed=seed).items():
            out += concept_drift(storefront, quality, context.series, serving_name)
    return out


class DriftTracker:
    """Runs :func:`window_drift` over a stream of windows, keeping the :class:`Context` in memory.

    The reference of a storefront is its first ``reference_windows`` windows (while fewer
    have passed: those before the current one).

    Examples
    --------
    >>> ev = lambda items, start: pd.DataFrame({"event_id": [f"e{start + i}" for i in range(len(items))],
    ...     "type": "click", "user_id": "u1", "item_id": items, "storefront": "s",
    ...     "ts": range(start, start + len(items)), "session_id": None})
    >>> tracker = DriftTracker(reference_windows=2)
    >>> for w, items in enumerate([["a"] * 900 + ["b"] * 100] * 3 + [["a"] * 100 + ["b"] * 900]):
    ...     alerts = [v.metric for v in tracker.observe(ev(items, w * 1000)) if v.alert]
    >>> sorted(alerts)[:2]
    ['popularity_js_previous', 'popularity_js_reference']
    """

    def __init__(self, reference_windows: int = 3, catalog: pd.DataFrame | None = None):
        self.reference_windows = reference_windows
        self.catalog = catalog
        self.context = Context()
        self.windows = 0
        self._reference: dict[str, list[pd.DataFrame]] = {}

    def observe(self, window: pd.DataFrame, serving=None, serving_name: str = "",
                history: pd.DataFrame | None = None) -> list[MetricValue]:
        """The metrics of the next window; then the window becomes part of the context."""
        self.windows += 1
        values = window_drift(window, self.context, catalog=self.catalog, serving=serving,
                              serving_name=serving_name, history=history)
        self.record(values)
        ctx = self.context
        ctx.previous, ctx.previous_label = window, f"window {self.windows}"
        ctx.seen_items.update(window["item_id"].unique())
        ctx.seen_users.update(window["user_id"].unique())
        for storefront, events in window.groupby("storefront"):
            frames = self._reference.setdefault(storefront, [])
            if len(frames) < self.reference_windows:
                frames.append(events)
                first = self.windows - len(frames) + 1
                ctx.reference[storefront] = (pd.concat(frames, ignore_index=True),
                                             f"windows {first}-{self.windows}" if len(frames) > 1 else
                                             f"window {self.windows}")
        return values

    def record(self, values: Sequence[MetricValue]) -> None:
        """Append values to their series (also for version metrics measured outside :meth:`observe`)."""
        for v in values:
            self.context.series.setdefault((v.metric, v.storefront), []).append((v.value, v.n_events))

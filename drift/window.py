"""All drift metrics of one window, from what earlier windows left behind.

:func:`window_drift` measures input drift, the serving version's score drift and its
prequential quality on a new window (before anything trains on it); :func:`model_drift` and
:func:`forgetting` judge a new model version once it exists. They take data and numbers only:
the worker's training job (:mod:`training.drift_recording`) fills a :class:`Context` from the
store, and :class:`DriftTracker` keeps one in memory for backtests, so both run the same code.
Whether a breach alerts depends on the previous value's breach (:func:`drift.metrics.confirm`),
which the :class:`Context` holds too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from drift.calibration import Calibration
from drift.detectors import REPLAY_WINDOWS, judge_series
from drift.input import categories_of, input_drift, reference_calibration
from drift.metrics import CONCEPT, MetricValue, confirm, judged
from drift.model_shift import TOPK_OVERLAP_THRESHOLD, VECTOR_SHIFT_THRESHOLD
from drift.quality import Quality, by_storefront
from drift.scores import SCORE_USERS, ScoreReference, sample_users, user_item_scores

BWT_RELATIVE = 0.25  # backward transfer alerts below -25% of the probe's first quality ...
BWT_Z = 3.0  # ... and below -3 standard errors of the difference
MIN_EVENTS = 500  # fewer events never breach (STREAMREC_DRIFT_ALERT_MIN_EVENTS in the worker)

Series = Mapping[tuple[str, str], Sequence[tuple[float, int]]]  # (metric, storefront) -> [(value, n)], oldest first


@dataclass
class Context:
    """What the metrics of a new window are compared with.

    ``reference`` maps a storefront to its reference events and their label (its first
    windows); ``seen_items``/``seen_users`` hold the ids of earlier events; ``series`` the
    earlier values of every metric and storefront; ``last_breach`` whether the newest of them
    breached; ``score_references`` the serving version's score reference per storefront (of
    the first window it served). ``calibrations`` caches the thresholds' calibration of each
    storefront's reference.
    """

    previous: pd.DataFrame | None = None
    previous_label: str = "previous window"
    reference: dict[str, tuple[pd.DataFrame, str]] = field(default_factory=dict)
    seen_items: set[str] = field(default_factory=set)
    seen_users: set[str] = field(default_factory=set)
    series: dict[tuple[str, str], list[tuple[float, int]]] = field(default_factory=dict)
    last_breach: dict[tuple[str, str], bool] = field(default_factory=dict)
    score_references: dict[str, ScoreReference] = field(default_factory=dict)
    calibrations: dict[tuple[str, str], dict[str, Calibration | None]] = field(default_factory=dict)

    def last(self, metric: str, storefront: str) -> tuple[float, int] | None:
        values = self.series.get((metric, storefront))
        return values[-1] if values else None

    def calibration(self, storefront: str, catalog: pd.DataFrame | None) -> dict[str, Calibration | None]:
        """The calibration of ``storefront``'s thresholds from its reference events (computed once per reference)."""
        if storefront not in self.reference:
            return {}
        events, label = self.reference[storefront]
        key = (storefront, f"{label}/{len(events)}")
        if key not in self.calibrations:
            self.calibrations[key] = reference_calibration(storefront, events, catalog, label)
        return self.calibrations[key]

    def remember(self, values: Sequence[MetricValue]) -> None:
        """Append values to their series and remember their breaches (for the next window's values)."""
        for v in values:
            self.series.setdefault((v.metric, v.storefront), []).append((v.value, v.n_events))
            self.last_breach[(v.metric, v.storefront)] = bool(v.breach)


def concept_drift(storefront: str, quality: Quality, series: Series, reference: str,
                  min_events: int = 0) -> list[MetricValue]:
    """The prequential metrics of one storefront, each judged by its detectors over its series
    (a detector that fires on fewer than ``min_events`` events is no breach).

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
        fired, detector = judge_series(metric, earlier, value, quality.n)
        breach = fired and quality.n >= min_events
        method = f"river change detectors over the last {len(earlier)} stored values and this one"
        if fired and not breach:
            method += f"; fewer than {min_events} events: not judged"
        baseline = float(np.mean([v for v, _ in earlier])) if earlier else None
        out.append(MetricValue(metric, storefront, float(value), baseline, reference, None, breach, detector,
                               quality.n, breach, method))
    return out


def model_drift(storefront: str, vector_shift: tuple[float, int], overlap: tuple[float, int],
                reference: str) -> list[MetricValue]:
    """``item_vector_shift`` and ``topk_overlap@20`` of one storefront ((value, items or probe users) each).

    Examples
    --------
    >>> [(v.metric, v.alert) for v in model_drift("s", (0.8, 100), (0.6, 300), "version 2")]
    [('item_vector_shift', True), ('topk_overlap@20', False)]
    """
    out = []
    for metric, (value, n), threshold, base in (("item_vector_shift", vector_shift, VECTOR_SHIFT_THRESHOLD, None),
                                                ("topk_overlap@20", overlap, TOPK_OVERLAP_THRESHOLD, 1.0)):
        if n and math.isfinite(value):
            # the overlap is judged as a fall from 1 (identical lists) by more than 1 - TOPK_OVERLAP_THRESHOLD
            out.append(judged(metric, storefront, value, baseline=base,
                              threshold=threshold if base is None else base - threshold, reference=reference,
                              n_events=n, method="fixed threshold"))
    return out


def bwt_threshold(first: float, now: float, n: int) -> float:
    """How far below the probe's first recall the new one may fall before ``backward_transfer`` alerts."""
    if n <= 0:
        return math.inf
    p = (first + now) / 2
    return max(BWT_RELATIVE * first, BWT_Z * math.sqrt(2 * p * (1 - p) / n))


def forgetting(storefront: str, probe: Quality, first_recall: float | None, reference: str,
               min_events: int = 0) -> list[MetricValue]:
    """Probe quality of a new version and its backward transfer against ``first_recall``, the probe
    recall of the first version judged on this probe (None: this version is the first).

    Examples
    --------
    >>> [(v.metric, round(v.value, 2), v.breach) for v in forgetting("s", Quality(0.1, 0.05, 6.0, 2000), 0.2, "p")]
    [('probe_recall@20', 0.1, False), ('probe_ndcg@20', 0.05, False), ('backward_transfer', -0.1, True)]
    """
    if probe.n == 0 or not math.isfinite(probe.recall):
        return []
    first = probe.recall if first_recall is None else first_recall
    return [MetricValue("probe_recall@20", storefront, probe.recall, None, reference, None, False, "none", probe.n),
            MetricValue("probe_ndcg@20", storefront, probe.ndcg, None, reference, None, False, "none", probe.n),
            judged("backward_transfer", storefront, probe.recall - first, baseline=0.0,
                   threshold=bwt_threshold(first, probe.recall, probe.n), reference=reference, n_events=probe.n,
                   method=f"max({BWT_RELATIVE:g} x the first probe recall, {BWT_Z:g} standard errors)",
                   min_events=min_events)]


def score_drift(storefront: str, window: pd.DataFrame, context: Context, serving, serving_name: str,
                window_label: str, *, catalog: pd.DataFrame | None = None, history: pd.DataFrame | None = None,
                users: int = SCORE_USERS, seed: int = 0, min_events: int = 0) -> list[MetricValue]:
    """``serving_score_psi`` of ``storefront``: the scores of ``serving`` (named ``serving_name``) for up
    to ``users`` of the window's users (state after ``history`` and the window) and the storefront's
    items, against the version's scores on the first window it served. On that first window (no
    reference of this version in ``context``) the scores become the reference."""
    mine = window[window["storefront"] == storefront]
    items = list(dict.fromkeys([*categories_of(catalog, storefront), *mine["item_id"]]))
    events = pd.concat([h for h in (history, window) if h is not None], ignore_index=True)
    _, _, scores = user_item_scores(serving, events, sample_users(mine["user_id"], users, seed), items)
    if not scores.size:
        return []
    reference = context.score_references.get(storefront)
    if reference is None or reference.version != serving_name:
        reference = context.score_references[storefront] = ScoreReference.of(scores, serving_name, window_label)
        return [reference.first_value(storefront, len(mine))]
    return [reference.judge(storefront, scores, len(mine), min_events)]


def window_drift(window: pd.DataFrame, context: Context, *, catalog: pd.DataFrame | None = None, serving=None,
                 serving_name: str = "", history: pd.DataFrame | None = None,
                 quality_events: int | None = None, seed: int = 0, min_events: int = MIN_EVENTS,
                 score_users: int = 0, window_label: str = "this window") -> list[MetricValue]:
    """Input drift and (with a ``serving`` scorer) prequential quality, for every storefront of ``window``,
    alerts confirmed against ``context.last_breach``.

    ``history`` is what the serving model reads as users' earlier events; ``quality_events``
    bounds the events the prequential quality of each storefront is measured on (a seeded sample);
    ``min_events``: fewer events never breach. With ``score_users``, also the serving version's
    score drift on that many users (:func:`score_drift`; ``window_label`` names this window).
    """
    out: list[MetricValue] = []
    storefronts = sorted(window["storefront"].unique())
    for storefront in storefronts:
        reference, reference_label = context.reference.get(storefront, (None, ""))
        shares = {m: context.series.get((m, storefront), []) for m in ("new_item_share", "new_user_share")}
        out += input_drift(storefront, window, previous=context.previous, reference=reference, catalog=catalog,
                           seen_items=context.seen_items, seen_users=context.seen_users, previous_shares=shares,
                           previous_label=context.previous_label, reference_label=reference_label,
                           calibrations=context.calibration(storefront, catalog), min_events=min_events)
        if serving is not None and score_users:
            out += score_drift(storefront, window, context, serving, serving_name, window_label, catalog=catalog,
                               history=history, users=score_users, seed=seed, min_events=min_events)
    if serving is not None:
        for storefront, quality in by_storefront(serving, window, history, max_events=quality_events,
                                                 seed=seed).items():
            out += concept_drift(storefront, quality, context.series, serving_name, min_events)
    confirm(out, context.last_breach)
    return out


class DriftTracker:
    """Runs :func:`window_drift` over a stream of windows, keeping the :class:`Context` in memory.

    The reference of a storefront is its first ``reference_windows`` windows (while fewer
    have passed: those before the current one). ``min_events`` and ``score_users`` are
    :func:`window_drift`'s; ``score_users`` measures score drift of a ``serving`` scorer
    within each ``serving_name`` (0: not measured).

    Examples
    --------
    >>> ev = lambda items, start: pd.DataFrame({"event_id": [f"e{start + i}" for i in range(len(items))],
    ...     "type": "click", "user_id": "u1", "item_id": items, "storefront": "s",
    ...     "ts": range(start, start + len(items)), "session_id": None})
    >>> tracker = DriftTracker(reference_windows=2)
    >>> for w, items in enumerate([["a", "a", "b", "a", "a", "a", "a", "a", "b", "a"] * 100] * 3
    ...                           + [["a"] * 100 + ["b"] * 900] * 2):
    ...     values = tracker.observe(ev(items, w * 1000))
    ...     print(w + 1, sorted(v.metric for v in values if v.breach and "psi" in v.metric),
    ...           sorted(v.metric for v in values if v.alert and "psi" in v.metric))
    1 [] []
    2 [] []
    3 [] []
    4 ['popularity_psi_previous', 'popularity_psi_reference'] []
    5 ['popularity_psi_reference'] ['popularity_psi_reference']
    """

    def __init__(self, reference_windows: int = 3, catalog: pd.DataFrame | None = None, min_events: int = MIN_EVENTS,
                 score_users: int = 0, seed: int = 0):
        self.reference_windows = reference_windows
        self.catalog = catalog
        self.min_events = min_events
        self.score_users = score_users
        self.seed = seed
        self.context = Context()
        self.windows = 0
        self._reference: dict[str, list[pd.DataFrame]] = {}

    def observe(self, window: pd.DataFrame, serving=None, serving_name: str = "",
                history: pd.DataFrame | None = None) -> list[MetricValue]:
        """The metrics of the next window; then the window becomes part of the context."""
        self.windows += 1
        values = window_drift(window, self.context, catalog=self.catalog, serving=serving,
                              serving_name=serving_name, history=history, min_events=self.min_events,
                              score_users=self.score_users, window_label=f"window {self.windows}", seed=self.seed)
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
        """Confirm the values' alerts and append them to their series (also for version metrics
        measured outside :meth:`observe`, e.g. :func:`forgetting`: they get their alerts here)."""
        confirm(values, self.context.last_breach)
        self.context.remember(values)

"""The drift metrics: their names, definitions and alert rules, and one measured value.

Every metric is measured per sealed window and storefront. A value is judged one of two
ways, named in its ``detector``:

* ``threshold``: the value moves away from its ``baseline`` by more than ``threshold`` in
  the metric's direction (``up``: ``value - baseline > threshold``; ``down``:
  ``value - baseline < -threshold``; ``both``: either). Divergences have baseline 0. How the
  threshold was found is in ``method`` (calibrated on the storefront's reference windows,
  :mod:`drift.calibration`, or fixed), its numbers in ``detail``.
* ``adwin`` / ``page_hinkley``: river change detectors over the metric's series
  (:mod:`drift.detectors`); ``detector`` names the detectors that watched the series, or,
  on an alert, those that fired.

Crossing the threshold (or a detector firing) on at least ``min_events`` events is a
**breach**. An **alert** needs ``Metric.confirm`` consecutive breaches of the metric in the
storefront: two for the per-window statistics (input drift, backward transfer), whose
sampling noise alone crosses any threshold now and then; one for the change detectors
(sequential tests that already weigh the evidence of many windows) and for the size of a
model update (one update is one event, with no window sampling behind it).

Metrics with ``detector`` ``none`` are informational: they never alert.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # input, concept, model, forgetting
    direction: str  # up, down, both: which way is bad
    definition: str
    confirm: int = 2  # consecutive breaches that make an alert


_DEFS = [
    # input drift: what shoppers do
    Metric("popularity_psi_previous", "input", "up",
           "PSI of the event distribution over items, previous window -> this window; items binned as the "
           "previous window's top 100 items plus one bin for all others"),
    Metric("popularity_psi_reference", "input", "up",
           "PSI of the event distribution over items, reference windows -> this window "
           "(reference's top 100 items + other)"),
    Metric("popularity_js_previous", "input", "up",
           "Jensen-Shannon divergence (bits) of the item distribution, previous window vs this window (same bins)"),
    Metric("popularity_js_reference", "input", "up",
           "Jensen-Shannon divergence (bits) of the item distribution, reference windows vs this window (same bins)"),
    Metric("category_psi_previous", "input", "up",
           "PSI of the event distribution over catalog categories, previous window -> this window "
           "(previous window's top 100 categories + other; items without a category count as '(none)')"),
    Metric("category_psi_reference", "input", "up",
           "PSI of the event distribution over catalog categories, reference windows -> this window"),
    Metric("category_js_previous", "input", "up",
           "Jensen-Shannon divergence (bits) of the category mix, previous window vs this window"),
    Metric("category_js_reference", "input", "up",
           "Jensen-Shannon divergence (bits) of the category mix, reference windows vs this window"),
    Metric("new_item_share", "input", "up",
           "share of the window's events on items not seen in earlier events (history windows and rehearsal memory); "
           "baseline: the previous window's share"),
    Metric("new_user_share", "input", "up",
           "share of the window's events by users not seen in earlier events; baseline: the previous window's share"),
    Metric("purchase_share", "input", "both",
           "share of the window's events that are purchases; baseline: the share in the reference windows"),
    Metric("serving_score_psi", "input", "up",
           "PSI of the serving version's user-item scores (up to 300 of the window's users x the storefront's items) "
           "on this window against its scores on the first window it served, binned at that window's deciles; "
           "the reference restarts whenever a new version starts serving"),
    # concept drift: how well the serving model predicts the new window, before training on it
    Metric("prequential_recall@20", "concept", "down",
           "Recall@20 of the serving model on every event of the window, before it trains on the window "
           "(full ranking, items the user saw excluded)", confirm=1),
    Metric("prequential_ndcg@20", "concept", "down",
           "NDCG@20 of the serving model on every event of the window, before it trains on the window", confirm=1),
    Metric("prequential_loss", "concept", "up",
           "mean next-item cross-entropy (nats, softmax over all known items) of the serving model on the window",
           confirm=1),
    # model drift: how much an update changes the model
    Metric("item_vector_shift", "model", "up",
           "mean cosine distance (1 - cos) between each item's vector in the new version and in the version it "
           "replaces, over items both know", confirm=1),
    Metric("topk_overlap@20", "model", "down",
           "mean share of a user's top 20 items that the new version and the version it replaces have in common, "
           "over a fixed probe of the storefront's users (items they interacted with excluded)", confirm=1),
    # forgetting: quality on old data across versions
    Metric("probe_recall@20", "forgetting", "down",
           "Recall@20 of the new version on the storefront's probe set: a seeded sample of the held-out slice of "
           "its first window"),
    Metric("probe_ndcg@20", "forgetting", "down", "NDCG@20 of the new version on the probe set"),
    Metric("backward_transfer", "forgetting", "down",
           "probe Recall@20 of the new version minus that of the first version judged on the probe "
           "(Lopez-Paz & Ranzato 2017); negative: forgotten"),
]
METRICS: dict[str, Metric] = {m.name: m for m in _DEFS}
INPUT = [m.name for m in _DEFS if m.kind == "input"]
CONCEPT = [m.name for m in _DEFS if m.kind == "concept"]
MODEL = [m.name for m in _DEFS if m.kind == "model"]
FORGETTING = [m.name for m in _DEFS if m.kind == "forgetting"]


@dataclass
class MetricValue:
    """One measured metric of one storefront (the window and version are the caller's).

    ``reference`` says in words what the value was compared against (e.g. 'window 4',
    'windows 1-3', 'version 7'); ``n_events`` is how many events it was measured on;
    ``breach`` whether it crossed its threshold (or its detectors fired) on enough events,
    ``alert`` whether that breach is confirmed (:func:`confirm`); ``method`` says how the
    threshold was found and ``detail`` holds the numbers behind it.
    """

    metric: str
    storefront: str
    value: float
    baseline: float | None = None
    reference: str = ""
    threshold: float | None = None
    alert: bool = False
    detector: str = "none"
    n_events: int = 0
    breach: bool = False
    method: str = ""
    detail: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return METRICS[self.metric].kind

    def row(self) -> dict:
        """A dict with the ``drift_metrics`` column names (window and version left to the caller)."""
        return {**asdict(self), "kind": self.kind, "threshold": _finite(self.threshold),
                "detail": _finite_json(self.detail)}


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _finite_json(value):
    """``value`` with every non-finite float replaced by None (no NaN or infinity is ever stored)."""
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {str(k): _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def exceeds(value: float, baseline: float | None, threshold: float | None, direction: str) -> bool:
    """The threshold rule of the module docstring.

    Examples
    --------
    >>> exceeds(0.3, None, 0.25, "up"), exceeds(0.1, 0.2, 0.05, "down"), exceeds(0.1, 0.2, 0.05, "up")
    (True, True, False)
    """
    if threshold is None or not math.isfinite(threshold) or not math.isfinite(value):
        return False
    delta = value - (baseline or 0.0)
    return {"up": delta > threshold, "down": delta < -threshold, "both": abs(delta) > threshold}[direction]


def judged(metric: str, storefront: str, value: float, *, baseline: float | None = None, threshold: float | None,
           reference: str = "", n_events: int = 0, method: str = "", detail: dict | None = None,
           min_events: int = 0) -> MetricValue:
    """A ``MetricValue`` judged by the threshold rule: a breach needs at least ``min_events`` events.

    A metric confirmed by one breach alerts at once; the others wait for :func:`confirm`.

    Examples
    --------
    >>> v = judged("purchase_share", "s", 0.3, baseline=0.2, threshold=0.05, n_events=400, min_events=500)
    >>> v.breach, v.alert, v.method
    (False, False, 'fixed threshold; fewer than 500 events: not judged')
    >>> v = judged("item_vector_shift", "s", 0.8, threshold=0.3, n_events=1000)
    >>> v.breach, v.alert
    (True, True)
    """
    measurable = threshold is not None and math.isfinite(threshold)
    enough = n_events >= min_events
    breach = enough and exceeds(value, baseline, threshold, METRICS[metric].direction)
    method = method or ("fixed threshold" if measurable else "")
    if measurable and not enough:
        method += f"; fewer than {min_events} events: not judged"
    return MetricValue(metric, storefront, float(value), baseline, reference, threshold,
                       breach and METRICS[metric].confirm == 1, "threshold" if measurable else "none", n_events,
                       breach, method, dict(detail or {}))


def confirm(values: Iterable[MetricValue], last_breach: Mapping[tuple[str, str], bool]) -> None:
    """Set each value's ``alert``: its breach, confirmed by ``Metric.confirm`` consecutive breaches.

    ``last_breach`` maps (metric, storefront) to whether the previous value of that metric in
    that storefront breached (missing: it did not, or there was none).

    Examples
    --------
    >>> values = [MetricValue("purchase_share", "s", 0.4, breach=True),
    ...           MetricValue("purchase_share", "t", 0.4, breach=True),
    ...           MetricValue("prequential_loss", "s", 9.0, breach=True)]
    >>> confirm(values, {("purchase_share", "s"): True})
    >>> [v.alert for v in values]
    [True, False, True]
    """
    for v in values:
        need = METRICS[v.metric].confirm
        v.alert = bool(v.breach) and (need <= 1 or bool(last_breach.get((v.metric, v.storefront), False)))

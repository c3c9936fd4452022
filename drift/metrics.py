"""The drift metrics: their names, definitions and alert rules, and one measured value.

Every metric is measured per sealed window and storefront. A value is judged one of two
ways, named in its ``detector``:

* ``threshold``: the value moves away from its ``baseline`` by more than ``threshold`` in
  the metric's direction (``up``: ``value - baseline > threshold``; ``down``:
  ``value - baseline < -threshold``; ``both``: either). Divergences have baseline 0.
* ``adwin`` / ``page_hinkley``: river change detectors over the metric's series
  (:mod:`drift.detectors`); ``detector`` names the detectors that watched the series, or,
  on an alert, those that fired.

Metrics with ``detector`` ``none`` are informational: they never alert.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # input, concept, model, forgetting
    direction: str  # up, down, both: which way is bad
    definition: str


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
    # concept drift: how well the serving model predicts the new window, before training on it
    Metric("prequential_recall@20", "concept", "down",
           "Recall@20 of the serving model on every event of the window, before it trains on the window "
           "(full ranking, items the user saw excluded)"),
    Metric("prequential_ndcg@20", "concept", "down",
           "NDCG@20 of the serving model on every event of the window, before it trains on the window"),
    Metric("prequential_loss", "concept", "up",
           "mean next-item cross-entropy (nats, softmax over all known items) of the serving model on the window"),
    # model drift: how much an update changes the model
    Metric("item_vector_shift", "model", "up",
           "mean cosine distance (1 - cos) between each item's vector in the new version and in the version it "
           "replaces, over items both know"),
    Metric("score_psi", "model", "up",
           "PSI of the distribution of user-item scores (window users x storefront items), the replaced "
           "version -> the new one, binned at the replaced version's score deciles"),
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
    'windows 1-3', 'version 7'); ``n_events`` is how many events it was measured on.
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

    @property
    def kind(self) -> str:
        return METRICS[self.metric].kind

    def row(self) -> dict:
        """A dict with the ``drift_metrics`` column names (window and version left to the caller)."""
        return {**asdict(self), "kind": self.kind, "threshold": _finite(self.threshold)}


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


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
           reference: str = "", n_events: int = 0) -> MetricValue:
    """A ``MetricValue`` judged by the threshold rule."""
    alert = exceeds(value, baseline, threshold, METRICS[metric].direction)
    return MetricValue(metric, storefront, float(value), baseline, reference, threshold, alert,
                       "threshold" if threshold is not None and math.isfinite(threshold) else "none", n_events)

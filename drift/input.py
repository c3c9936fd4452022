"""Input drift of one storefront in one window: how what shoppers do has moved.

From plain pandas frames of events (columns ``event_id, type, user_id, item_id, storefront,
ts, session_id``) and a catalog frame (``storefront, item_id, category``):

* item popularity and category mix, each compared with the previous window and with the
  reference windows, by PSI and Jensen-Shannon divergence (:mod:`drift.divergence`): the
  expected side's top ``top_items`` items (``top_categories`` categories) get a bin each and
  the rest share one; alert above ``max(PSI_THRESHOLD, noise floor)`` (JS: ``JS_THRESHOLD``),
  the noise floor being the 99.9% quantile of the divergence between two samples of these
  sizes from one distribution, so small windows do not alert on sampling noise alone;
* the share of events on items, and by users, not seen before (in the ``seen_*`` sets the
  caller passes); alert when it rises above the previous window's share by more than
  ``max(SHARE_MIN_CHANGE, 4 standard errors)``;
* the purchase share of events; alert when it moves away from the reference windows' share
  by more than ``max(SHARE_MIN_CHANGE, 4 standard errors)``, either way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from drift.divergence import bin_counts, js_divergence, noise_floor, psi, top_bins
from drift.metrics import MetricValue, judged

PSI_THRESHOLD = 0.25  # Siddiqi's "significant shift"
JS_THRESHOLD = 0.05  # bits; PSI 0.25 is JS ~0.045 bits for small shifts (JS ~ PSI / (8 ln 2))
SHARE_MIN_CHANGE = 0.05  # smallest change of a share that alerts
SHARE_Z = 4.0  # ... and it must also exceed this many standard errors
TOP_ITEMS = 100
TOP_CATEGORIES = 100
NO_CATEGORY = "(none)"


def share_threshold(p1: float, n1: int, p2: float, n2: int) -> float:
    """``max(SHARE_MIN_CHANGE, SHARE_Z * se)`` of the difference of two proportions (pooled se).

    Examples
    --------
    >>> share_threshold(0.2, 4000, 0.2, 4000)
    0.05
    >>> round(share_threshold(0.2, 200, 0.2, 200), 3)
    0.16
    """
    if n1 <= 0 or n2 <= 0:
        return math.inf
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    return max(SHARE_MIN_CHANGE, SHARE_Z * math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2)))


def categories_of(catalog: pd.DataFrame | None, storefront: str) -> dict[str, str]:
    """item_id -> category of one storefront's catalog (blank categories become ``(none)``)."""
    if catalog is None or not len(catalog):
        return {}
    rows = catalog[catalog["storefront"] == storefront]
    cats = rows["category"].fillna("").astype(str).str.strip().replace("", NO_CATEGORY)
    return dict(zip(rows["item_id"].astype(str), cats))


def _divergences(name: str, storefront: str, expected: pd.Series, actual: pd.Series, top: int,
                 label: str) -> list[MetricValue]:
    """PSI and JS of ``actual`` keys against ``expected`` keys (value counts binned on ``expected``)."""
    expected_counts, actual_counts = expected.value_counts().to_dict(), actual.value_counts().to_dict()
    bins = top_bins(expected_counts, top)
    e, a = bin_counts(expected_counts, bins), bin_counts(actual_counts, bins)
    n1, n2, k = len(expected), len(actual), len(bins) + 1
    return [judged(f"{name}_psi_{label}", storefront, psi(e, a),
                   threshold=max(PSI_THRESHOLD, noise_floor("psi", k, n1, n2)), n_events=n2),
            judged(f"{name}_js_{label}", storefront, js_divergence(e, a),
                   threshold=max(JS_THRESHOLD, noise_floor("js", k, n1, n2)), n_events=n2)]


def input_drift(storefront: str, window: pd.DataFrame, *, previous: pd.DataFrame | None = None,
                reference: pd.DataFrame | None = None, catalog: pd.DataFrame | None = None,
                seen_items: set[str] | frozenset = frozenset(), seen_users: set[str] | frozenset = frozenset(),
                previous_shares: Mapping[str, tuple[float, int]] | None = None, previous_label: str = "previous window",
                reference_label: str = "reference windows", top_items: int = TOP_ITEMS,
                top_categories: int = TOP_CATEGORIES) -> list[MetricValue]:
    """The input-drift metrics of ``storefront``'s events in ``window`` (module docstring).

    ``previous`` and ``reference`` are earlier events (any storefronts; filtered here); the
    comparisons with one that has no events of the storefront are left out.
    ``previous_shares`` maps ``new_item_share`` / ``new_user_share`` to the previous window's
    ``(value, n_events)``, their baselines.

    Examples
    --------
    >>> ev = lambda items, kind="click": pd.DataFrame({"event_id": [f"e{i}" for i in range(len(items))],
    ...     "type": kind, "user_id": [f"u{i % 7}" for i in range(len(items))], "item_id": items,
    ...     "storefront": "shop", "ts": range(len(items)), "session_id": None})
    >>> before = ev(["a"] * 600 + ["b"] * 300 + ["c"] * 100)
    >>> after = ev(["c"] * 600 + ["b"] * 300 + ["a"] * 100)
    >>> values = {v.metric: v for v in input_drift("shop", after, previous=before, reference=before,
    ...                                             seen_items={"a", "b", "c"}, seen_users={"u1"})}
    >>> values["popularity_psi_previous"].alert, round(values["popularity_psi_previous"].value, 2)
    (True, 1.78)
    >>> values["new_item_share"].value, round(values["new_user_share"].value, 3), values["purchase_share"].value
    (0.0, 0.857, 0.0)
    """
    window = window[window["storefront"] == storefront]
    n = len(window)
    categories = categories_of(catalog, storefront)

    def category(frame: pd.DataFrame) -> pd.Series:
        return frame["item_id"].map(lambda item: categories.get(item, NO_CATEGORY))

    out: list[MetricValue] = []
    for label, earlier, text in (("previous", previous, previous_label), ("reference", reference, reference_label)):
        if earlier is None:
            continue
        earlier = earlier[earlier["storefront"] == storefront]
        if not len(earlier):
            continue
        values = (_divergences("popularity", storefront, earlier["item_id"], window["item_id"], top_items, label)
                  + _divergences("category", storefront, category(earlier), category(window), top_categories, label))
        for v in values:
            v.reference = text
        out += values

    previous_shares = previous_shares or {}
    for metric, column, seen in (("new_item_share", "item_id", seen_items), ("new_user_share", "user_id", seen_users)):
        share = float((~window[column].isin(seen)).mean()) if n else 0.0
        before = previous_shares.get(metric)
        if before is None:
            out.append(judged(metric, storefront, share, threshold=None, reference="no earlier window", n_events=n))
        else:
            out.append(judged(metric, storefront, share, baseline=before[0], threshold=share_threshold(
                before[0], before[1], share, n), reference=previous_label, n_events=n))

    purchases = float((window["type"] == "purchase").mean()) if n else 0.0
    ref = reference[reference["storefront"] == storefront] if reference is not None else None
    if ref is None or not len(ref):
        out.append(judged("purchase_share", storefront, purchases, threshold=None, reference="no reference yet",
                          n_events=n))
    else:
        ref_share = float((ref["type"] == "purchase").mean())
        out.append(judged("purchase_share", storefront, purchases, baseline=ref_share,
                          threshold=share_threshold(ref_share, len(ref), purchases, n), reference=reference_label,
                          n_events=n))
    return out

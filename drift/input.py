"""Input drift of one storefront in one window: how what shoppers do has moved.

From plain pandas frames of events (columns ``event_id, type, user_id, item_id, storefront,
ts, session_id``) and a catalog frame (``storefront, item_id, category``):

* item popularity and category mix, each compared with the previous window and with the
  reference windows, by PSI and Jensen-Shannon divergence (:mod:`drift.divergence`): the
  expected side's top ``top_items`` items (``top_categories`` categories) get a bin each and
  the rest share one;
* the share of events on items, and by users, not seen before (in the ``seen_*`` sets the
  caller passes), against the median share of the previous ``SHARE_BASELINE_WINDOWS`` windows
  (a rise is bad; a median, so a rise that lasts breaches again in the next window);
* the purchase share of events against the reference windows' share (either way is bad).

Every threshold is calibrated on the storefront's reference windows (:mod:`drift.calibration`):
``mean + 3 sd`` of the metric between chunks of the reference, scaled to the sizes compared,
never below the 99.9% sampling-noise quantile. A value *breaches* when it crosses its
threshold on at least ``min_events`` events; whether a breach alerts is decided over
consecutive windows (:func:`drift.metrics.confirm`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from drift.calibration import Calibration, chunks, divergence_scale, judged_threshold, share_floor, share_scale
from drift.divergence import bin_counts, js_divergence, noise_floor, psi, top_bins
from drift.metrics import MetricValue, judged
from replay.frames import in_set

TOP_ITEMS = 100
TOP_CATEGORIES = 100
SHARE_BASELINE_WINDOWS = 3
NO_CATEGORY = "(none)"
Calibrations = Mapping[str, Calibration | None]


def categories_of(catalog: pd.DataFrame | None, storefront: str) -> dict[str, str]:
    """item_id -> category of one storefront's catalog (blank categories become ``(none)``)."""
    if catalog is None or not len(catalog):
        return {}
    rows = catalog[catalog["storefront"] == storefront]
    cats = rows["category"].fillna("").astype(str).str.strip().replace("", NO_CATEGORY)
    return dict(zip(rows["item_id"].astype(str), cats))


def _category(frame: pd.DataFrame, categories: Mapping[str, str]) -> pd.Series:
    return frame["item_id"].map(lambda item: categories.get(item, NO_CATEGORY))


def compare(expected: pd.Series, actual: pd.Series, top: int) -> tuple[float, float, int]:
    """(PSI, JS, bins) of ``actual`` against ``expected`` value counts, binned on ``expected``'s top keys.

    Examples
    --------
    >>> e, a = pd.Series({"a": 60, "b": 30, "c": 10}), pd.Series({"a": 10, "b": 30, "c": 60})
    >>> [round(x, 3) for x in compare(e, a, 2)]
    [1.725, 0.277, 3]
    """
    bins = top_bins(expected.to_dict(), top)
    e, a = bin_counts(expected.to_dict(), bins), bin_counts(actual.to_dict(), bins)
    return psi(e, a), js_divergence(e, a), len(bins) + 1


def _rest(total: pd.Series, part: pd.Series) -> pd.Series:
    rest = total.sub(part, fill_value=0)
    return rest[rest > 0]


def reference_calibration(storefront: str, reference: pd.DataFrame, catalog: pd.DataFrame | None = None,
                          label: str = "reference windows", top_items: int = TOP_ITEMS,
                          top_categories: int = TOP_CATEGORIES) -> dict[str, Calibration | None]:
    """Metric name -> the :class:`~drift.calibration.Calibration` of its threshold, from ``reference``
    (``storefront``'s reference events) cut into chunks: each chunk against the rest of the reference
    (``*_reference``, ``purchase_share``) and against the chunk before it (``*_previous``), or
    the median of the ``SHARE_BASELINE_WINDOWS`` chunks before it (``new_item_share``,
    ``new_user_share``; a chunk's new ids are those of no earlier chunk).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ref = pd.DataFrame({"storefront": "s", "ts": range(5000), "user_id": rng.integers(0, 900, 5000).astype(str),
    ...     "item_id": rng.integers(0, 50, 5000).astype(str), "type": np.where(rng.random(5000) < 0.2, "purchase",
    ...     "click")})
    >>> calibration = reference_calibration("s", ref, label="windows 1-3")
    >>> c = calibration["popularity_psi_reference"]
    >>> c.comparisons, round(c.mean), c.source  # PSI / (1/n1 + 1/n2) ~ chi-square with 50 degrees of freedom
    (10, 51, 'windows 1-3')
    """
    reference = reference[reference["storefront"] == storefront]
    parts = chunks(reference)
    stats: dict[str, list[float]] = {}
    scales: dict[str, list[float]] = {}

    def add(metric: str, value: float, scale: float) -> None:
        stats.setdefault(metric, []).append(value / scale)
        scales.setdefault(metric, []).append(scale)

    categories = categories_of(catalog, storefront)
    for name, top, keys in (("popularity", top_items, [p["item_id"] for p in parts]),
                            ("category", top_categories, [_category(p, categories) for p in parts])):
        counts = [k.value_counts() for k in keys]
        total = pd.concat(keys).value_counts() if keys else pd.Series(dtype=float)
        for c, part in enumerate(counts):
            n, rest = len(keys[c]), _rest(total, part)
            psi_value, js_value, _ = compare(rest, part, top)
            scale = divergence_scale(len(reference) - n, n)
            add(f"{name}_psi_reference", psi_value, scale)
            add(f"{name}_js_reference", js_value, scale)
            if c:
                psi_value, js_value, _ = compare(counts[c - 1], part, top)
                scale = divergence_scale(len(keys[c - 1]), n)
                add(f"{name}_psi_previous", psi_value, scale)
                add(f"{name}_js_previous", js_value, scale)

    bought = [float((p["type"] == "purchase").sum()) for p in parts]
    for c, part in enumerate(parts):
        n, n_rest = len(part), len(reference) - len(part)
        share, rest_share = bought[c] / n, (sum(bought) - bought[c]) / n_rest if n_rest else 0.0
        pooled = sum(bought) / len(reference)
        add("purchase_share", abs(share - rest_share), share_scale(pooled, n_rest, n))

    for metric, column in (("new_item_share", "item_id"), ("new_user_share", "user_id")):
        seen: set = set()
        shares = []
        for part in parts:
            shares.append((float((~in_set(part[column], seen)).mean()), len(part)) if seen else None)
            seen.update(part[column].unique())
        shares = [s for s in shares if s is not None]
        for i in range(1, len(shares)):
            share, n = shares[i]
            base, n_base = _median_share(shares[max(0, i - SHARE_BASELINE_WINDOWS):i])
            add(metric, share - base, share_scale((base * n_base + share * n) / (n_base + n), n_base, n))
    names = [f"{n}_{s}_{lab}" for n in ("popularity", "category") for s in ("psi", "js")
             for lab in ("previous", "reference")] + ["purchase_share", "new_item_share", "new_user_share"]
    return {metric: Calibration.of(stats.get(metric, []), label, scales.get(metric, [])) for metric in names}


def _median_share(values: Sequence[tuple[float, int]]) -> tuple[float, int]:
    """(median share, median events) of ``(share, events)`` pairs.

    Examples
    --------
    >>> _median_share([(0.1, 900), (0.3, 1000), (0.2, 1100)])
    (0.2, 1000)
    """
    shares, sizes = zip(*values)
    return float(np.median(shares)), int(np.median(sizes))


def _divergences(name: str, storefront: str, expected: pd.Series, actual: pd.Series, top: int, label: str,
                 calibrations: Calibrations, min_events: int) -> list[MetricValue]:
    """PSI and JS of ``actual`` keys against ``expected`` keys, judged against their calibrated thresholds."""
    psi_value, js_value, k = compare(expected.value_counts(), actual.value_counts(), top)
    value = {"psi": psi_value, "js": js_value}
    n1, n2 = len(expected), len(actual)
    scale = divergence_scale(n1, n2)
    out = []
    for statistic in ("psi", "js"):
        metric = f"{name}_{statistic}_{label}"
        threshold, method, detail = judged_threshold(calibrations.get(metric), scale,
                                                     noise_floor(statistic, k, n1, n2))
        out.append(judged(metric, storefront, value[statistic], threshold=threshold, n_events=n2, method=method,
                          detail=detail, min_events=min_events))
    return out


def input_drift(storefront: str, window: pd.DataFrame, *, previous: pd.DataFrame | None = None,
                reference: pd.DataFrame | None = None, catalog: pd.DataFrame | None = None,
                seen_items: set[str] | frozenset = frozenset(), seen_users: set[str] | frozenset = frozenset(),
                previous_shares: Mapping[str, Sequence[tuple[float, int]]] | None = None,
                previous_label: str = "previous window",
                reference_label: str = "reference windows", top_items: int = TOP_ITEMS,
                top_categories: int = TOP_CATEGORIES, calibrations: Calibrations | None = None,
                min_events: int = 0) -> list[MetricValue]:
    """The input-drift metrics of ``storefront``'s events in ``window`` (module docstring).

    ``previous`` and ``reference`` are earlier events (any storefronts; filtered here); the
    comparisons with one that has no events of the storefront are left out.
    ``previous_shares`` maps ``new_item_share`` / ``new_user_share`` to the earlier windows'
    ``(value, n_events)``, oldest first: the median of the newest ``SHARE_BASELINE_WINDOWS`` is
    the baseline. ``calibrations`` (default: computed from
    ``reference`` by :func:`reference_calibration`) give the thresholds; a value on fewer than
    ``min_events`` events never breaches.

    Examples
    --------
    >>> ev = lambda items, kind="click": pd.DataFrame({"event_id": [f"e{i}" for i in range(len(items))],
    ...     "type": kind, "user_id": [f"u{i % 7}" for i in range(len(items))], "item_id": items,
    ...     "storefront": "shop", "ts": range(len(items)), "session_id": None})
    >>> before = ev(["a", "a", "b", "a", "c", "a", "b", "a", "b", "a"] * 100)
    >>> after = ev(["c"] * 600 + ["b"] * 300 + ["a"] * 100)
    >>> values = {v.metric: v for v in input_drift("shop", after, previous=before, reference=before,
    ...                                             seen_items={"a", "b", "c"}, seen_users={"u1"})}
    >>> v = values["popularity_psi_previous"]
    >>> v.breach, round(v.value, 2), round(v.threshold, 3), v.method.split(":")[0]
    (True, 1.78, 0.033, 'noise floor')
    >>> values["new_item_share"].value, round(values["new_user_share"].value, 3), values["purchase_share"].value
    (0.0, 0.857, 0.0)
    """
    window = window[window["storefront"] == storefront]
    n = len(window)
    categories = categories_of(catalog, storefront)
    ref = reference[reference["storefront"] == storefront] if reference is not None else None
    if calibrations is None:
        calibrations = (reference_calibration(storefront, ref, catalog, reference_label, top_items, top_categories)
                        if ref is not None and len(ref) else {})

    out: list[MetricValue] = []
    for label, earlier, text in (("previous", previous, previous_label), ("reference", ref, reference_label)):
        if earlier is None:
            continue
        earlier = earlier[earlier["storefront"] == storefront]
        if not len(earlier):
            continue
        values = (_divergences("popularity", storefront, earlier["item_id"], window["item_id"], top_items, label,
                               calibrations, min_events)
                  + _divergences("category", storefront, _category(earlier, categories),
                                 _category(window, categories), top_categories, label, calibrations, min_events))
        for v in values:
            v.reference = text
        out += values

    previous_shares = previous_shares or {}
    for metric, column, seen in (("new_item_share", "item_id", seen_items), ("new_user_share", "user_id", seen_users)):
        share = float((~in_set(window[column], seen)).mean()) if n else 0.0
        earlier = list(previous_shares.get(metric, ()))[-SHARE_BASELINE_WINDOWS:]
        if not earlier:
            out.append(judged(metric, storefront, share, threshold=None, reference="no earlier window", n_events=n))
            continue
        base, n_base = _median_share(earlier)
        pooled = (base * n_base + share * n) / (n_base + n) if n_base + n else 0.0
        threshold, method, detail = judged_threshold(calibrations.get(metric), share_scale(pooled, n_base, n),
                                                     share_floor(pooled, n_base, n, two_sided=False))
        text = previous_label if len(earlier) == 1 else f"median of the previous {len(earlier)} windows"
        out.append(judged(metric, storefront, share, baseline=base, threshold=threshold, reference=text,
                          n_events=n, method=method, detail=detail, min_events=min_events))

    purchases = float((window["type"] == "purchase").mean()) if n else 0.0
    if ref is None or not len(ref):
        out.append(judged("purchase_share", storefront, purchases, threshold=None, reference="no reference yet",
                          n_events=n))
    else:
        ref_share = float((ref["type"] == "purchase").mean())
        pooled = (ref_share * len(ref) + purchases * n) / (len(ref) + n)
        threshold, method, detail = judged_threshold(calibrations.get("purchase_share"),
                                                     share_scale(pooled, len(ref), n),
                                                     share_floor(pooled, len(ref), n, two_sided=True))
        out.append(judged("purchase_share", storefront, purchases, baseline=ref_share, threshold=threshold,
                          reference=reference_label, n_events=n, method=method, detail=detail,
                          min_events=min_events))
    return out

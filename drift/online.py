"""Online metrics of served lists and the events attributed to them.

One row per served hour (UTC), surface, storefront, ranker (``source``), model version and
experiment arm. With L lists served to U distinct users, of which L_c drew at least one
attributed click (repeat clicks on one list count once), C clicks, P purchases and R order
value, and U_p users with an attributed purchase:

- ``ctr`` = L_c / L; ``clicks_per_list`` = C / L; ``purchases_per_list`` = P / L;
- ``conversion`` = U_p / U (per exposed user); ``revenue_per_1000`` = 1000 R / L;
- ``click_positions``: clicks per position (1 = first; the event's, else the item's rank in the list);
- ``coverage``: distinct items served / items of the storefront's catalog;
- ``diversity`` (intra-list): the mean over lists of 1 - mean pairwise cosine of the items' MiniLM
  text vectors (items without a cached vector are left out; lists with fewer than two skipped);
- ``novelty``: mean over served items of -log2 p(item), p the item's share of the storefront's
  decayed event counts (trending weights), smoothed by adding 0.5 to every count
  (Zhou et al., 2010, "Solving the apparent diversity-accuracy dilemma", PNAS);
- ``avg_popularity``: mean decayed event count of served items;
- ``new_item_share``: share of served slots holding an item without any event in the
  storefront's counts (a new product nobody has interacted with yet).

Coverage, diversity, novelty, popularity and the new-item share count the items that were
displayed, when a list says so (``displayed``: the storefront reported fewer positions shown
than the list held); otherwise every item of the list.

A ratio without a denominator is None, never NaN.

Examples
--------
>>> import pandas as pd
>>> lists = pd.DataFrame({"request_id": ["r1", "r2"], "served_at": [0, 1000], "surface": "recommend",
...     "storefront": "shop", "source": "model", "model_version": 3, "experiment": None, "arm": None,
...     "user_id": ["u1", "u2"], "items": [["a", "b"], ["b", "c"]]})
>>> events = pd.DataFrame({"request_id": ["r1", "r1", "r1"], "inferred": [False, False, True],
...     "type": ["click", "click", "purchase"], "user_id": "u1", "item_id": ["b", "b", "b"],
...     "position": [None, 2, None], "value": [None, None, 20.0]})
>>> (row,) = online_metrics(lists, events, catalog_sizes={"shop": 4})
>>> row["lists"], row["clicked_lists"], row["clicks"], row["purchases"], row["revenue"], row["inferred_events"]
(2, 1, 2, 1, 20.0, 1)
>>> {k: row["metrics"][k] for k in ("ctr", "conversion", "revenue_per_1000", "coverage", "click_positions")}
{'ctr': 0.5, 'conversion': 0.5, 'revenue_per_1000': 10000.0, 'coverage': 0.75, 'click_positions': {'2': 2}}
>>> (row,) = online_metrics(lists, events, popularity={"shop": {"a": 3.0, "b": 1.0}})
>>> row["metrics"]["new_item_share"]  # c, in one of the four served slots, has no events yet
0.25
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

HOUR_MS = 3_600_000
KEY = ["hour", "surface", "storefront", "source", "model_version", "experiment", "arm"]


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / denominator if denominator else None


def _diversity(lists: list[list[str]], vectors: Mapping[str, np.ndarray]) -> float | None:
    """Mean over lists of 1 - mean pairwise cosine of their items' unit vectors."""
    values = []
    for items in lists:
        rows = [vectors[i] for i in items if i in vectors]
        if len(rows) < 2:
            continue
        unit = np.asarray(rows, dtype=np.float32)
        unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
        gram = unit @ unit.T
        n = len(rows)
        values.append(1.0 - (gram.sum() - np.trace(gram)) / (n * (n - 1)))
    return float(np.mean(values)) if values else None


def _popularity(items: list[str], weights: Mapping[str, float] | None) -> tuple[float | None, ...]:
    """(novelty, average popularity, new-item share) of served ``items`` under decayed event counts ``weights``."""
    if not weights or not items:
        return None, None, None
    counts = np.array([weights.get(i, 0.0) for i in items], dtype=np.float64)
    total = sum(weights.values()) + 0.5 * len(weights)
    novelty = float(np.mean(-np.log2((counts + 0.5) / total)))
    return novelty, float(counts.mean()), float(np.mean(counts == 0))


def online_metrics(lists: pd.DataFrame, events: pd.DataFrame, catalog_sizes: Mapping[str, int] | None = None,
                   popularity: Mapping[str, Mapping[str, float]] | None = None,
                   vectors: Mapping[str, np.ndarray] | None = None) -> list[dict]:
    """Metric rows of served ``lists`` and the ``events`` attributed to them (see the module doc).

    ``lists`` has ``request_id, served_at, surface, storefront, source, model_version,
    experiment, arm, user_id, items`` (and optionally ``displayed``); ``events`` has ``request_id, inferred, type, user_id,
    item_id, position, value``. ``catalog_sizes`` (items per storefront), ``popularity``
    (item weights per storefront) and ``vectors`` (item text vectors) are optional; the
    metrics that need them are None without them.
    """
    if lists.empty:
        return []
    lists = lists.assign(hour=lists["served_at"] // HOUR_MS * HOUR_MS,
                         model_version=lists["model_version"].fillna(0).astype("int64"),
                         experiment=lists["experiment"].fillna(""), arm=lists["arm"].fillna(""))
    rank = {(r, item): position for r, items in zip(lists["request_id"], lists["items"])
            for position, item in enumerate(items, start=1)}
    events = events[events["request_id"].isin(set(lists["request_id"]))]
    rows = []
    for key, group in lists.groupby(KEY, sort=True):
        ids = set(group["request_id"])
        mine = events[events["request_id"].isin(ids)]
        clicks, purchases = mine[mine["type"] == "click"], mine[mine["type"] == "purchase"]
        users = group["user_id"].dropna().nunique()
        positions: dict[str, int] = {}
        for request_id, item, position in zip(clicks["request_id"], clicks["item_id"], clicks["position"]):
            if position is None or (isinstance(position, float) and math.isnan(position)):
                position = rank.get((request_id, item))
            label = "other" if position is None else str(int(position))
            positions[label] = positions.get(label, 0) + 1
        storefront = key[KEY.index("storefront")]
        shown = group["displayed"] if "displayed" in group else group["items"]
        served_items = [i for items in shown for i in items]
        novelty, avg_popularity, new_share = _popularity(served_items, (popularity or {}).get(storefront))
        size = (catalog_sizes or {}).get(storefront)
        revenue = float(purchases["value"].fillna(0).sum())
        n = len(group)
        rows.append(dict(zip(KEY, (int(key[0]), *key[1:4], int(key[4]), *key[5:]))) | {
            "lists": n, "users": int(users), "clicked_lists": int(clicks["request_id"].nunique()),
            "clicks": len(clicks), "purchases": len(purchases),
            "converted_users": int(purchases["user_id"].nunique()), "revenue": revenue,
            "inferred_events": int(mine["inferred"].sum()),
            "metrics": {
                "ctr": _ratio(clicks["request_id"].nunique(), n), "clicks_per_list": _ratio(len(clicks), n),
                "purchases_per_list": _ratio(len(purchases), n),
                "conversion": _ratio(purchases["user_id"].nunique(), users),
                "revenue_per_1000": _ratio(1000 * revenue, n), "click_positions": dict(sorted(positions.items())),
                "coverage": _ratio(len(set(served_items)), size) if size else None,
                "diversity": _diversity(list(shown), vectors or {}),
                "novelty": novelty, "avg_popularity": avg_popularity, "new_item_share": new_share,
            }})
    return rows

"""The quality gate: hold out the newest events of a window, and judge a candidate on them.

A candidate is refused when it was judged on too few held-out events, when its Recall@20 is
more than ``tolerance`` (relative) below the baseline's, or when its coverage@20 (the share of
known items in at least one of its top-20 lists, :func:`learner.evaluate.evaluate`) is more
than ``max_coverage_drop`` (relative) below the baseline's: a model that collapses to
recommending the same few items to everyone can keep its recall, not its coverage.

Examples
--------
>>> window = pd.DataFrame({"event_id": ["a", "b", "c", "d"], "ts": [4, 1, 3, 2]})
>>> train, held_out = split_holdout(window, 0.25)
>>> train["ts"].tolist(), held_out["ts"].tolist()
([1, 2, 3], [4])
>>> gate({"recall@20": 0.19, "examples": 500}, {"recall@20": 0.2}, 0.1, "version 3", min_events=200)
(True, 'recall@20 0.1900 >= 0.1800 (version 3 0.2000, tolerance 10%)')
>>> gate({"recall@20": 0.5, "examples": 12}, {"recall@20": 0.2}, 0.1, "popularity", min_events=200)
(False, 'too little evidence: 12 held-out events, the gate needs at least 200')
>>> gate({"recall@20": 0.21, "coverage@20": 0.04}, {"recall@20": 0.2, "coverage@20": 0.3}, 0.1, "version 3",
...      max_coverage_drop=0.5)
(False, 'recall@20 0.2100 >= 0.1800 (version 3 0.2000, tolerance 10%); coverage@20 0.0400 < 0.1500 \
(version 3 0.3000, most drop 50%)')
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

GATE_METRIC = "recall@20"
COVERAGE_METRIC = "coverage@20"


def split_holdout(window: pd.DataFrame, share: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(older part to train on, newest ``share`` of the events in time to judge on), both in time
    order. With a ``storefront`` column the share is taken of each storefront's events (at least
    one each), so every storefront of the window is judged, however its events interleave.

    Examples
    --------
    >>> window = pd.DataFrame({"event_id": list("abcdef"), "ts": [1, 2, 3, 4, 5, 6],
    ...                        "storefront": ["x", "x", "x", "x", "y", "y"]})
    >>> train, held_out = split_holdout(window, 0.25)
    >>> train["event_id"].tolist(), held_out["event_id"].tolist()
    (['a', 'b', 'c', 'e'], ['d', 'f'])
    """
    ordered = window.sort_values(["ts", "event_id"], kind="stable")
    groups = ordered.groupby("storefront", sort=False, dropna=False) if "storefront" in ordered else None
    newest = (groups.cumcount(ascending=False) if groups is not None
              else pd.Series(range(len(ordered) - 1, -1, -1), index=ordered.index))
    size = groups["ts"].transform("size") if groups is not None else len(ordered)
    held = newest < np.maximum(1, np.round(size * share))
    return ordered[~held], ordered[held]


def gate(candidate: dict, baseline: dict, tolerance: float, baseline_name: str,
         min_events: int = 1, max_coverage_drop: float | None = None) -> tuple[bool, str]:
    """Promote unless the candidate's gate metric is more than ``tolerance`` below the baseline's,
    it was judged on fewer than ``min_events`` held-out events (``candidate["examples"]``), or
    (with ``max_coverage_drop``, when both have a coverage@20 and the baseline's is above zero)
    its coverage@20 is more than ``max_coverage_drop`` below the baseline's."""
    c, b = candidate[GATE_METRIC], baseline[GATE_METRIC]
    judged_on = candidate.get("examples", 0 if math.isnan(c) else min_events)
    if judged_on < min_events or math.isnan(c):
        return False, (f"too little evidence: {judged_on} held-out events, the gate needs at least {min_events}"
                       if judged_on else "no held-out events to judge the candidate on")
    floor = b * (1 - tolerance)
    verdict = c >= floor
    reason = (f"{GATE_METRIC} {c:.4f} {'>=' if verdict else '<'} {floor:.4f} "
              f"({baseline_name} {b:.4f}, tolerance {tolerance:.0%})")
    c, b = candidate.get(COVERAGE_METRIC), baseline.get(COVERAGE_METRIC)
    if max_coverage_drop is None or not all(isinstance(v, float) and math.isfinite(v) for v in (c, b)) or b <= 0:
        return verdict, reason
    floor = b * (1 - max_coverage_drop)
    covered = c >= floor
    return verdict and covered, (f"{reason}; {COVERAGE_METRIC} {c:.4f} {'>=' if covered else '<'} {floor:.4f} "
                                 f"({baseline_name} {b:.4f}, most drop {max_coverage_drop:.0%})")

"""Concept-drift detectors over a quality metric's series: river's ADWIN and Page-Hinkley.

A series is one ``(value, n_events)`` per window, oldest first, as stored in
``drift_metrics``. Detectors keep no state of their own between windows: each judgement
replays the last ``REPLAY_WINDOWS`` stored values into fresh detectors and then feeds the
new one, so nothing but numbers is ever persisted, and the same series gives the same
verdict in the worker and in a backtest.

* :class:`AdwinHits` -- ADWIN (Bifet & Gavaldà 2007) over the per-event hit stream of
  Recall@K. ADWIN's bound assumes values in [0, 1] and needs many of them, which one
  value per window does not give; so a window of ``n`` events with recall ``r`` is replayed
  as its ``round(r n)`` hits and ``n - round(r n)`` misses, spread evenly (the sufficient
  statistics of a Bernoulli stream). A change alerts only when ADWIN cuts its window while
  the new window is fed and the new window's recall is more than ``MIN_DROP`` (relative)
  below ADWIN's mean before it: improvements are changes too, but not alerts.
* :class:`PageHinkleyLog` -- Page-Hinkley (Page 1954) over the log of the per-window value,
  one-sided in the metric's bad direction. Logs make it scale-free: for Recall and NDCG,
  ``delta`` 0.05 tolerates a drift of about 5% a window and ``threshold`` 0.5 alarms once
  the cumulative fall (net of that tolerance) passes about 40% of the running level; the
  loss varies far less from window to window, so it gets ``delta`` 0.02 and ``threshold``
  0.2 (a rise of about 20%).

References
----------
A. Bifet, R. Gavaldà. Learning from time-changing data with adaptive windowing. SDM 2007.
E. S. Page. Continuous inspection schemes. Biometrika 41(1/2), 100-115, 1954.
J. Gama, R. Sebastião, P. P. Rodrigues. On evaluating stream learning algorithms.
Machine Learning 90(3), 317-346, 2013 (prequential evaluation with drift detectors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from river.drift import ADWIN, PageHinkley

REPLAY_WINDOWS = 30
ADWIN_DELTA = 0.002
MIN_DROP = 0.1
PH_DELTA = 0.05
PH_THRESHOLD = 0.5
PH_LOSS_DELTA = 0.02
PH_LOSS_THRESHOLD = 0.2
PH_MIN_INSTANCES = 2


def spread_hits(value: float, n: int) -> list[int]:
    """``round(value * n)`` ones among ``n`` values, spread evenly.

    Examples
    --------
    >>> spread_hits(0.25, 8)
    [0, 0, 0, 1, 0, 0, 0, 1]
    """
    k = min(n, max(0, round(value * n)))
    return [(i + 1) * k // n - i * k // n for i in range(n)]


class AdwinHits:
    """ADWIN over per-event hits, fed one window at a time; alerts on a drop (module docstring).

    Examples
    --------
    >>> detector = AdwinHits()
    >>> [detector.update(r, 2000) for r in [0.15, 0.16, 0.15, 0.14, 0.15]]
    [False, False, False, False, False]
    >>> detector.update(0.05, 2000)
    True
    """

    name = "adwin"

    def __init__(self, delta: float = ADWIN_DELTA, min_drop: float = MIN_DROP):
        self.adwin = ADWIN(delta=delta)
        self.min_drop = min_drop

    def update(self, value: float, n: int) -> bool:
        """Feed one window's recall over ``n`` events; True if ADWIN detected a change while it was
        fed and the window's recall is more than ``min_drop`` below ADWIN's mean before it."""
        before = self.adwin.estimation if self.adwin.width else None
        changed = False
        for hit in spread_hits(value, n):
            self.adwin.update(hit)
            changed |= self.adwin.drift_detected
        return changed and before is not None and value < before * (1 - self.min_drop)


class PageHinkleyLog:
    """Page-Hinkley on ``log(value)``, alarming when the metric moves in its bad ``direction``.

    Examples
    --------
    >>> detector = PageHinkleyLog("down")
    >>> [detector.update(v, 2000) for v in [0.15, 0.16, 0.15, 0.14, 0.15, 0.07]]
    [False, False, False, False, False, True]
    """

    name = "page_hinkley"

    def __init__(self, direction: str, delta: float = PH_DELTA, threshold: float = PH_THRESHOLD,
                 min_instances: int = PH_MIN_INSTANCES):
        self.ph = PageHinkley(min_instances=min_instances, delta=delta, threshold=threshold, alpha=1.0,
                              mode={"down": "down", "up": "up"}[direction])

    def update(self, value: float, n: int) -> bool:
        """Feed one window's value (a zero counts as half an event, so its log is finite)."""
        floor = 0.5 / max(n, 1)
        self.ph.update(math.log(max(value, floor)))
        return self.ph.drift_detected


def detectors_for(metric: str) -> list:
    """Fresh detectors watching ``metric`` (Recall@K: ADWIN and Page-Hinkley; others: Page-Hinkley)."""
    if metric.endswith("loss"):
        return [PageHinkleyLog("up", PH_LOSS_DELTA, PH_LOSS_THRESHOLD)]
    if "recall@" in metric:
        return [AdwinHits(), PageHinkleyLog("down")]
    return [PageHinkleyLog("down")]


def judge_series(metric: str, series: Sequence[tuple[float, int]], value: float, n: int) -> tuple[bool, str]:
    """Replay ``series`` (earlier windows, oldest first) into fresh detectors, then feed ``value``.

    Returns (alert, detector names): on an alert the detectors that fired, else all that watched.

    Examples
    --------
    >>> steady = [(0.15 + 0.01 * (i % 3 - 1), 2000) for i in range(20)]
    >>> judge_series("prequential_recall@20", steady, 0.15, 2000)
    (False, 'adwin+page_hinkley')
    >>> judge_series("prequential_recall@20", steady, 0.04, 2000)
    (True, 'adwin+page_hinkley')
    >>> judge_series("prequential_loss", [(6.0, 2000)] * 10, 9.0, 2000)
    (True, 'page_hinkley')
    """
    detectors = detectors_for(metric)
    for old_value, old_n in list(series)[-REPLAY_WINDOWS:]:
        for detector in detectors:
            detector.update(old_value, old_n)
    fired = [d.name for d in detectors if d.update(value, n)]
    return bool(fired), "+".join(fired or [d.name for d in detectors])

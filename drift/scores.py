"""Score drift within one version, and top-k overlap between two: what the model's output does.

* :class:`ScoreReference` -- the serving version's user-item scores on the first window it
  serves: their deciles, how many scores fall in each, and a calibration
  (:mod:`drift.calibration`) from groups of its users, each group against the others. A later
  window scored by the *same* version is compared with it by PSI (``serving_score_psi``): it
  moves when shoppers' behaviour moves the scores, while a new version, whose scores have a
  scale of their own, starts a new reference instead of raising an alert. The calibration sees
  how much groups of one window's users differ, not how users' histories move from window to
  window, so the threshold is never below ``SCORE_PSI_STABLE``, the PSI below which a score
  distribution counts as stable in scorecard monitoring (Siddiqi 2006).
* :func:`topk_overlap` -- how many of each user's top-k items two versions share: the
  change a new version makes to what shoppers are shown, whatever the scale of its scores.
* :func:`user_item_scores` -- the scores of any :class:`learner.evaluate.Scorer` for users'
  current states (their last events) and a list of items.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from drift.calibration import CHUNKS, MIN_COMPARISONS, Calibration, divergence_scale, judged_threshold
from drift.divergence import noise_floor, psi
from drift.metrics import MetricValue, judged
from learner.evaluate import Scorer
from learner.sequences import history_batch

SCORE_USERS = 300  # users per storefront and window whose scores make the score distribution
SCORE_BINS = 10  # deciles of the reference
SCORE_PSI_STABLE = 0.1  # a score PSI below this is "no significant change" (Siddiqi 2006): never a breach
MIN_GROUP_USERS = 10  # users per calibration group
TOP_K = 20
PROBE_USERS = 300  # users in the fixed probe of top-k overlap


def sample_users(users: Sequence[str], n: int, seed: int) -> list[str]:
    """A seeded sample of at most ``n`` distinct ``users``, sorted; the same for the same users in any order.

    Examples
    --------
    >>> sample_users(["c", "a", "b", "a"], 5, seed=1)
    ['a', 'b', 'c']
    >>> sample_users(list("abcdefgh"), 3, seed=1) == sample_users(list("hgfedcba"), 3, seed=1)
    True
    """
    unique = sorted(set(users))
    if len(unique) <= n:
        return unique
    return sorted(np.random.default_rng(seed).choice(unique, n, replace=False).tolist())


def user_item_scores(scorer: Scorer, events: pd.DataFrame, users: Sequence[str], items: Sequence[str],
                     exclude_seen: bool = False) -> tuple[list[str], list[str], np.ndarray]:
    """(users, items, scores [users x items]) of ``scorer`` for each of ``users`` with events in
    ``events`` (its state after its last ``max_len`` of them) and the ``items`` the scorer knows.

    With ``exclude_seen`` an item the user interacted with in ``events`` scores ``-inf``.

    Examples
    --------
    >>> from learner.evaluate import Popularity
    >>> ev = pd.DataFrame({"event_id": ["e1", "e2", "e3"], "type": "click", "user_id": ["u1", "u1", "u2"],
    ...     "item_id": ["a", "a", "b"], "storefront": "s", "ts": [1, 2, 3], "session_id": None})
    >>> users, items, scores = user_item_scores(Popularity.of(ev), ev, ["u2", "u1", "u9"], ["a", "b", "zz"],
    ...                                        exclude_seen=True)
    >>> users, items, scores.astype(float).round(2).tolist()
    (['u1', 'u2'], ['a', 'b'], [[-inf, 0.69], [1.1, -inf]])
    """
    known = [i for i in dict.fromkeys(items) if i in scorer.vocab.items]
    mine = events[events["user_id"].isin(set(users))]
    if not known or not len(mine):
        return [], known, np.zeros((0, len(known)), dtype=np.float32)
    user_ids, batch = history_batch(mine, scorer.vocab, scorer.max_len)
    columns = torch.from_numpy(np.asarray(scorer.vocab.items.index(known), dtype=np.int64))
    with torch.no_grad():
        scores = scorer.scores(batch).float().cpu()[:, columns].numpy()
    order = np.argsort(user_ids, kind="stable")
    user_ids, scores = [user_ids[i] for i in order], scores[order]
    if exclude_seen:
        column = {item: j for j, item in enumerate(known)}
        row = {user: r for r, user in enumerate(user_ids)}
        seen = mine[mine["item_id"].isin(column)]
        scores[[row[u] for u in seen["user_id"]], [column[i] for i in seen["item_id"]]] = -np.inf
    return user_ids, known, scores


def _binned(edges: np.ndarray, scores: np.ndarray) -> np.ndarray:
    values = np.asarray(scores, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1).astype(float)


def _edges(scores: np.ndarray, bins: int = SCORE_BINS) -> np.ndarray:
    values = np.asarray(scores, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    return np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])) if len(values) else np.zeros(0)


@dataclass
class ScoreReference:
    """One version's score distribution on the first window it served, with the calibration of its PSI.

    ``version`` and ``window`` name it in words; ``edges`` are its score deciles, ``counts``
    its scores per bin, ``users`` how many users they come from.

    Examples
    --------
    >>> rng = np.random.default_rng(2)
    >>> user_level = lambda n, shift=0.0: rng.normal(shift, 1, (n, 1)) + rng.normal(0, 1, (n, 400))
    >>> ref = ScoreReference.of(user_level(300), "version 3", "window 8")
    >>> ref.calibration.comparisons, round(ref.calibration.mean, 1)  # PSI / (1/u1 + 1/u2) over 10 user groups
    (10, 0.7)
    >>> same, moved = ref.judge("s", user_level(300), 2000), ref.judge("s", user_level(300, 1.0), 2000)
    >>> round(same.threshold, 3), (same.breach, round(same.value, 3)), (moved.breach, round(moved.value, 2))
    (0.117, (False, 0.003), (True, 0.53))
    >>> same.method.split(":")[0], round(same.detail["calibrated"], 3)
    ('calibrated', 0.117)
    >>> ScoreReference.from_detail(ref.detail()).edges == ref.edges
    True
    >>> ScoreReference.of(user_level(3), "version 4", "window 9").calibration is None  # too few users
    True
    """

    version: str
    window: str
    edges: list[float]
    counts: list[float]
    users: int
    calibration: Calibration | None

    @classmethod
    def of(cls, scores: np.ndarray, version: str, window: str) -> ScoreReference:
        """The reference of ``scores`` [users x items] of ``version`` on ``window``."""
        scores = np.asarray(scores, dtype=np.float64)
        edges = _edges(scores)
        n_groups = min(CHUNKS, len(scores) // MIN_GROUP_USERS)  # none when too few users to calibrate
        groups = np.array_split(np.arange(len(scores)), n_groups) if n_groups else []
        statistics, scales = [], []
        if len(groups) > MIN_COMPARISONS:
            for group in groups:
                rest = np.delete(scores, group, axis=0)
                rest_edges = _edges(rest)
                scales.append(divergence_scale(len(rest), len(group)))
                statistics.append(psi(_binned(rest_edges, rest), _binned(rest_edges, scores[group])) / scales[-1])
        return cls(version, window, edges.tolist(), _binned(edges, scores).tolist(), len(scores),
                   Calibration.of(statistics, f"{len(scores)} users of {version} on {window}", scales))

    def detail(self) -> dict:
        """What is stored with the reference window's value, to judge later windows."""
        calibration = self.calibration
        return {"version": self.version, "window": self.window, "edges": self.edges, "counts": self.counts,
                "users": self.users, "calibration": None if calibration is None else
                {"mean": calibration.mean, "sd": calibration.sd, "comparisons": calibration.comparisons,
                 "source": calibration.source, "scale": calibration.scale}}

    @classmethod
    def from_detail(cls, detail: dict | None) -> ScoreReference | None:
        """The reference stored by :meth:`detail` (None if ``detail`` holds none)."""
        if not detail or "edges" not in detail or "counts" not in detail:
            return None
        c = detail.get("calibration")
        calibration = None if not c or c.get("mean") is None or c.get("sd") is None else Calibration(
            float(c["mean"]), float(c["sd"]), int(c["comparisons"]), str(c["source"]), float(c.get("scale") or 0.0))
        return cls(str(detail["version"]), str(detail["window"]), [float(e) for e in detail["edges"]],
                   [float(n) for n in detail["counts"]], int(detail["users"]), calibration)

    def first_value(self, storefront: str, n_events: int) -> MetricValue:
        """The value of the reference window itself: 0, never judged; its ``detail`` holds the reference."""
        return MetricValue("serving_score_psi", storefront, 0.0, None,
                           f"{self.version} on {self.window} (this window: the reference)", None, False, "none",
                           n_events, False, f"reference of {self.version}: {self.users} users' scores",
                           self.detail())

    def judge(self, storefront: str, scores: np.ndarray, n_events: int, min_events: int = 0) -> MetricValue:
        """``serving_score_psi`` of ``scores`` [users x items] of the same version on a later window."""
        scores = np.asarray(scores, dtype=np.float64)
        edges = np.asarray(self.edges)
        actual = _binned(edges, scores)
        value = psi(self.counts, actual) if actual.sum() else math.nan
        floor = max(SCORE_PSI_STABLE, noise_floor("psi", len(edges) + 1, sum(self.counts), actual.sum()))
        threshold, method, detail = judged_threshold(self.calibration, divergence_scale(self.users, len(scores)),
                                                     floor, "stable-score floor")
        return judged("serving_score_psi", storefront, value, threshold=threshold,
                      reference=f"{self.version} on {self.window}", n_events=n_events,
                      method=f"{method}; {len(scores)} users' scores", detail=detail, min_events=min_events)


def topk_overlap(old: np.ndarray, new: np.ndarray, k: int = TOP_K) -> float:
    """Mean share of each row's top ``k`` columns that ``old`` and ``new`` scores [users x items] have in common.

    Columns scored ``-inf`` in both (e.g. items a user saw) are never in a top-k; NaN without rows.

    Examples
    --------
    >>> old = np.array([[5.0, 4.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    >>> topk_overlap(old, 10 * old + 1, k=2), topk_overlap(old, -old, k=2)
    (1.0, 0.0)
    """
    old, new = np.asarray(old, dtype=np.float64), np.asarray(new, dtype=np.float64)
    if not len(old):
        return math.nan
    k = min(k, old.shape[1])
    shared = []
    for a, b in zip(old, new):
        valid = np.isfinite(a) & np.isfinite(b)
        kk = min(k, int(valid.sum()))
        if kk == 0:
            continue
        ia, ib = np.where(valid, a, -np.inf), np.where(valid, b, -np.inf)
        top_a = set(np.argpartition(-ia, kk - 1)[:kk].tolist())
        top_b = set(np.argpartition(-ib, kk - 1)[:kk].tolist())
        shared.append(len(top_a & top_b) / kk)
    return float(np.mean(shared)) if shared else math.nan

"""Model drift: how much one model version differs from the one it replaces.

* :func:`item_vector_shift` -- mean cosine distance ``1 - cos(v_old, v_new)`` of each item's
  vector in the two versions, over the items both know with a non-zero vector in both
  (0: unchanged directions; 1: unrelated; 2: reversed). Vectors are compared in place,
  which is meaningful because a fine-tune starts from the replaced version's weights.
* :func:`score_psi` -- PSI of the distribution of scores (user x item) under the new version
  against the old one, binned at the old version's deciles: the stability index of a
  scorecard's score (Siddiqi 2006), applied to recommendation scores. It moves when the
  scores' level or spread changes, even if the ranking does not.

Both alert above a fixed threshold (``VECTOR_SHIFT_THRESHOLD``, ``SCORE_PSI_THRESHOLD``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from drift.divergence import psi

VECTOR_SHIFT_THRESHOLD = 0.3  # a fine-tune on one MovieLens window moves items by ~0.01; a retrain by ~1
SCORE_PSI_THRESHOLD = 0.25
SCORE_BINS = 10


def item_vector_shift(old_ids: Sequence[str], old: np.ndarray, new_ids: Sequence[str], new: np.ndarray,
                      items: Sequence[str] | None = None) -> tuple[float, int]:
    """(mean cosine distance, number of items compared) between two versions' item vectors.

    ``old``/``new`` hold one row per id of ``old_ids``/``new_ids``; only ``items`` (default:
    every id both know) are compared. NaN when no item can be compared.

    Examples
    --------
    >>> ids = ["a", "b", "c"]
    >>> v = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> item_vector_shift(ids, v, ids, 3 * v)
    (0.0, 3)
    >>> rotated = v @ np.array([[0.0, 1.0], [-1.0, 0.0]])  # 90 degrees
    >>> item_vector_shift(ids, v, ["c", "b", "a", "new"], np.vstack([rotated[::-1], [[5.0, 5.0]]]))
    (1.0, 3)
    """
    old_index = {item: i for i, item in enumerate(old_ids)}
    new_index = {item: i for i, item in enumerate(new_ids)}
    wanted = items if items is not None else old_ids
    shared = [item for item in dict.fromkeys(wanted) if item in old_index and item in new_index]
    if not shared:
        return float("nan"), 0
    a = np.asarray(old, dtype=np.float64)[[old_index[i] for i in shared]]
    b = np.asarray(new, dtype=np.float64)[[new_index[i] for i in shared]]
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    ok = norms > 0
    if not ok.any():
        return float("nan"), 0
    cosine = np.sum(a[ok] * b[ok], axis=1) / norms[ok]
    return float(np.mean(1.0 - cosine)), int(ok.sum())


def score_psi(old_scores: np.ndarray, new_scores: np.ndarray, bins: int = SCORE_BINS) -> float:
    """PSI of ``new_scores`` against ``old_scores`` over the old scores' quantile bins (non-finite scores ignored).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> old = rng.normal(size=5000)
    >>> score_psi(old, old)
    0.0
    >>> round(score_psi(old, 1.0 * old + 0.02), 2), round(score_psi(old, 3 * old + 1), 2)
    (0.0, 1.1)
    """
    old = np.asarray(old_scores, dtype=np.float64).ravel()
    new = np.asarray(new_scores, dtype=np.float64).ravel()
    old, new = old[np.isfinite(old)], new[np.isfinite(new)]
    if not len(old) or not len(new):
        return float("nan")
    edges = np.unique(np.quantile(old, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, old, side="right"), minlength=len(edges) + 1)
    actual = np.bincount(np.searchsorted(edges, new, side="right"), minlength=len(edges) + 1)
    return psi(expected, actual)

"""Model drift: how much one model version differs from the one it replaces.

* :func:`item_vector_shift` -- mean cosine distance ``1 - cos(v_old, v_new)`` of each item's
  vector in the two versions, over the items both know with a non-zero vector in both
  (0: unchanged directions; 1: unrelated; 2: reversed). Vectors are compared in place,
  which is meaningful because a fine-tune starts from the replaced version's weights.
  Alerts above ``VECTOR_SHIFT_THRESHOLD``.
* top-k overlap of the two versions on a fixed probe of users (:func:`drift.scores.topk_overlap`):
  what an update changes in what shoppers are shown. Scores of two versions are never
  compared directly: each version has a scale of its own, so a PSI between them moves after
  every ordinary retrain. Alerts below ``TOPK_OVERLAP_THRESHOLD``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VECTOR_SHIFT_THRESHOLD = 0.3  # a fine-tune on one MovieLens window moves items by ~0.01; a retrain by ~1
TOPK_OVERLAP_THRESHOLD = 0.2  # an update that replaces over 80% of an average user's top 20


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

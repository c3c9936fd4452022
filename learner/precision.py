"""How item vectors are held at a serving precision (``float32``, ``float16``, ``int8``), shared
by the serving indexes (:mod:`serving.index`) and by evaluation, which ranks with vectors as
they read back at the serving precision (:func:`as_served`).
"""

from __future__ import annotations

import numpy as np

from learner.options import SERVING_PRECISIONS as PRECISIONS

SCORE_BLOCK = 1_024
"""Exact int8 scoring dequantises this many rows at a time: 1.5 MB of float32 at 384
dimensions stays in cache, and scoring 10,000 text rows takes half the time of one block."""


class Int8Rows:
    """A float matrix as int8 codes with one float32 scale per row (symmetric: the row's
    largest magnitude maps to 127): a quarter of float32's memory. Indexing returns float32
    rows; a product with a vector dequantises a block of rows at a time.

    >>> vectors = np.array([[0.5, -1.0], [2.0, 0.25]], dtype=np.float32)
    >>> rows = Int8Rows(vectors)
    >>> rows.codes.tolist(), rows[1].astype(float).round(3).tolist()
    ([[64, -127], [127, 16]], [2.0, 0.252])
    >>> (rows @ np.ones(2, np.float32)).astype(float).round(3).tolist()
    [-0.496, 2.252]
    """

    def __init__(self, vectors: np.ndarray):
        scales = np.abs(vectors).max(axis=1) / 127
        self.scales = scales.astype(np.float32)
        self.codes = np.round(vectors / np.maximum(scales, 1e-30)[:, None]).astype(np.int8)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, rows) -> np.ndarray:
        scales = self.scales[rows]
        return self.codes[rows].astype(np.float32) * (scales[..., None] if np.ndim(scales) else scales)

    def __matmul__(self, query: np.ndarray) -> np.ndarray:
        return np.concatenate([self.codes[start:start + SCORE_BLOCK].astype(np.float32) @ query
                               for start in range(0, len(self), SCORE_BLOCK)]) * self.scales

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes


def as_served(vectors: np.ndarray, precision: str) -> np.ndarray:
    """float32 ``vectors`` as they read back after being held at ``precision``.

    >>> as_served(np.array([[1.0, 0.3]], dtype=np.float32), "int8").astype(float).round(4).tolist()
    [[1.0, 0.2992]]
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return np.asarray(held_at(np.ascontiguousarray(vectors, dtype=np.float32), precision)[:], dtype=np.float32)


def held_at(vectors: np.ndarray, precision: str) -> np.ndarray | Int8Rows:
    """The vectors as kept, without an index, at ``precision``."""
    if precision == "int8":
        return Int8Rows(vectors)
    return vectors.astype(np.float16) if precision == "float16" else vectors

"""Top-k items for a query vector: exact below a catalog size, an HNSW index (``usearch``) above it.

:class:`ItemIndex` answers "the ``k`` rows whose vectors score highest against this query,
among the allowed rows" with one interface whatever the catalog's size:

* **exact** (small catalogs): one matrix-vector product over the allowed rows;
* **approximate** (``approximate=True``): an HNSW graph (``usearch``, half-precision vectors;
  int8 for cosine when the vectors are kept as int8),
  built and searched with the inner product itself (``metric="ip"``: recommendations; a
  similarity graph over the inner product, as in ip-NSW, Morozov and Babenko, NeurIPS 2018,
  reached 0.96-0.99 recall@20 on clustered vectors where the classic reduction of inner
  product to cosine by an extra coordinate reached 0.35) or cosine (``metric="cos"``: similar
  items, unit vectors). Filters are applied to what the graph returns: it fetches 8x what is
  asked divided by the share of rows allowed, and 4x more while too few pass; a filter that
  keeps few rows (a small storefront) is answered exactly over those rows instead. The rows
  returned are scored exactly from the item vectors.

The item vectors are kept as float32, float16 (the default beside a graph) or int8 codes with
a scale per row (:class:`Int8Rows`, ``precision="int8"``): 4, 2 or 1 byte per dimension.

Rows are the model's item rows; rows 0 and 1 (padding, unknown) are never returned.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> vectors = rng.normal(size=(1000, 16)).astype(np.float32)
>>> exact, approximate = ItemIndex(vectors), ItemIndex(vectors, approximate=True, exact_below=0)
>>> query = rng.normal(size=16).astype(np.float32)
>>> exact.search(query, 5)[0].tolist() == approximate.search(query, 5)[0].tolist()
True
>>> allowed = np.zeros(1000, dtype=bool); allowed[500:] = True
>>> bool((approximate.search(query, 5, allowed)[0] >= 500).all())
True
"""

from __future__ import annotations

import numpy as np

from learner.options import SERVING_PRECISIONS as PRECISIONS

RESERVED_ROWS = 2  # padding and unknown
EXACT_BELOW_ALLOWED = 10_000
"""By default a filter that keeps fewer rows than this is answered exactly over them (about 2 ms at most)."""


class ItemIndex:
    """Top-k search over item vectors (see the module docstring).

    Parameters
    ----------
    vectors
        float32 [n_rows, dim], one per item row (rows 0 and 1 are ignored).
    metric
        ``"ip"`` (inner product) or ``"cos"`` (cosine).
    approximate
        Build an HNSW graph; otherwise every search is exact.
    exact_below
        Searches that allow fewer rows than this are exact over them, graph or not.
    precision
        How the vectors are kept for scoring: ``"float32"``, ``"float16"`` or ``"int8"``
        (None: float16 beside a graph, else float32).
    connectivity, expansion_add, expansion_search
        HNSW's graph degree and its breadth when building and searching (at least what a
        search fetches; 0: just that). A search changes the graph's breadth: one thread searches an index.
    """

    def __init__(self, vectors: np.ndarray, metric: str = "ip", approximate: bool = False,
                 exact_below: int = EXACT_BELOW_ALLOWED, connectivity: int = 16, expansion_add: int = 256,
                 expansion_search: int = 512, precision: str | None = None):
        if metric not in ("ip", "cos"):
            raise ValueError(f"metric must be 'ip' or 'cos', got {metric!r}")
        if precision not in (None, *PRECISIONS):
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if metric == "cos":
            vectors = _unit(vectors)
        self.metric, self.exact_below, self.expansion_search = metric, exact_below, expansion_search
        self.precision = precision or ("float16" if approximate else "float32")
        self.vectors = _stored(vectors, self.precision)
        self.graph = None
        if approximate:
            from usearch.index import Index

            # unit vectors fit int8's range; inner-product vectors need float16's
            dtype = "i8" if metric == "cos" and self.precision == "int8" else "f16"
            self.graph = Index(ndim=vectors.shape[1], metric=metric, dtype=dtype, connectivity=connectivity,
                               expansion_add=expansion_add, expansion_search=max(expansion_search, 1))
            self._add_to_graph(np.arange(RESERVED_ROWS, len(vectors)), vectors)

    @property
    def approximate(self) -> bool:
        return self.graph is not None

    def __len__(self) -> int:
        return len(self.vectors)

    def _add_to_graph(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        if len(rows):
            self.graph.add(rows.astype(np.uint64), vectors[rows])

    def extended(self, vectors: np.ndarray) -> ItemIndex:
        """An index over ``vectors`` (this index's rows, possibly changed, then new rows) that
        reuses this one's graph: only new and changed rows are (re)inserted. This index is not
        changed."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.metric == "cos":
            vectors = _unit(vectors)
        stored = _stored(vectors, self.precision)
        out = object.__new__(ItemIndex)
        out.metric, out.exact_below, out.expansion_search, out.precision, out.vectors, out.graph = (
            self.metric, self.exact_below, self.expansion_search, self.precision, stored, None)
        if self.graph is None:
            return out
        old = min(len(self.vectors), len(stored))
        changed = _changed_rows(self.vectors, stored, old)
        changed = changed[changed >= RESERVED_ROWS]
        out.graph = self.graph.copy()
        if len(changed):
            out.graph.remove(changed.astype(np.uint64))
        out._add_to_graph(np.concatenate([changed, np.arange(max(old, RESERVED_ROWS), len(stored))]), vectors)
        return out

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), dim] vectors of ``rows`` as kept for scoring (unit vectors with ``cos``)."""
        return np.asarray(self.vectors[rows], dtype=np.float32)

    @property
    def nbytes(self) -> int:
        """Memory of the vectors kept for scoring (a graph's own memory not included)."""
        return self.vectors.nbytes

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the ``k`` best allowed rows, best first; ``allowed`` is a bool mask
        over rows (None: every row). Fewer than ``k`` when fewer rows are allowed."""
        query = np.ascontiguousarray(query, dtype=np.float32)
        if self.metric == "cos":
            query = _unit(query[None])[0]
        if allowed is None:
            allowed = np.ones(len(self.vectors), dtype=bool)
        allowed = allowed.copy()
        allowed[:RESERVED_ROWS] = False
        n_allowed = int(allowed.sum())
        if self.graph is None or n_allowed < self.exact_below:
            if self.graph is None and n_allowed * 4 > len(allowed):  # most rows: one product, then the mask
                scores = self.vectors @ query
                scores[~allowed] = -np.inf
                top = np.argpartition(-scores, min(k, n_allowed))[:min(k, n_allowed)] if n_allowed > k else \
                    np.flatnonzero(allowed)
                top = top[np.argsort(-scores[top], kind="stable")]
                return top, scores[top]
            return self._exact(query, k, np.flatnonzero(allowed))
        fetch = int(8 * k * len(self.vectors) / n_allowed)  # 8x what passes the filter, on average
        while True:
            # the graph's search breadth must cover what is fetched, or far fewer of them are the best
            self.graph.expansion_search = max(self.expansion_search, fetch)
            found = self.graph.search(query, min(fetch, len(self.graph))).keys.astype(np.int64)
            rows = found[allowed[found]]
            if len(rows) >= k or fetch >= len(self.graph):
                break
            fetch *= 4
        if len(rows) < min(k, n_allowed):  # the graph could not reach enough allowed rows
            return self._exact(query, k, np.flatnonzero(allowed))
        return self._exact(query, k, rows)

    def _exact(self, query: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = self.rows(rows) @ query
        top = np.argpartition(-scores, k)[:k] if len(rows) > k else np.arange(len(rows))
        top = top[np.argsort(-scores[top], kind="stable")]
        return rows[top], scores[top]


def recall_at_k(index: ItemIndex, exact: ItemIndex, queries: np.ndarray, k: int = 20) -> float:
    """Mean share of the exact top ``k`` that ``index`` returns, over ``queries`` [q, dim].

    >>> rng = np.random.default_rng(1)
    >>> vectors = rng.normal(size=(500, 8)).astype(np.float32)
    >>> graph = ItemIndex(vectors, approximate=True, exact_below=0)
    >>> recall_at_k(graph, ItemIndex(vectors), rng.normal(size=(10, 8))) >= 0.95
    True
    """
    found = [len(set(index.search(q, k)[0].tolist()) & set(exact.search(q, k)[0].tolist())) / k for q in queries]
    return float(np.mean(found))


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

    BLOCK = 65_536

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
        return np.concatenate([self.codes[start:start + self.BLOCK].astype(np.float32) @ query
                               for start in range(0, len(self), self.BLOCK)]) * self.scales

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes


def _changed_rows(before: np.ndarray | Int8Rows, after: np.ndarray | Int8Rows, n: int) -> np.ndarray:
    """Which of the first ``n`` rows differ, compared as stored (codes and scales for int8)."""
    if isinstance(before, Int8Rows):
        return np.flatnonzero((before.codes[:n] != after.codes[:n]).any(1) | (before.scales[:n] != after.scales[:n]))
    return np.flatnonzero((before[:n] != after[:n]).any(1))


def as_served(vectors: np.ndarray, precision: str) -> np.ndarray:
    """float32 ``vectors`` as they read back after being held at ``precision``.

    >>> as_served(np.array([[1.0, 0.3]], dtype=np.float32), "int8").astype(float).round(4).tolist()
    [[1.0, 0.2992]]
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return np.asarray(_stored(np.ascontiguousarray(vectors, dtype=np.float32), precision)[:], dtype=np.float32)


def _stored(vectors: np.ndarray, precision: str) -> np.ndarray | Int8Rows:
    """The vectors kept for scoring (only the few hundred rows a graph search returns are scored
    from them, so float16 beside a graph costs no recall and halves the memory)."""
    if precision == "int8":
        return Int8Rows(vectors)
    return vectors.astype(np.float16) if precision == "float16" else vectors


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(np.float32)

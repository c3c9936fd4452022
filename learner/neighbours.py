"""Top-k items for a query vector: exact below a catalog size, an HNSW index (``usearch``) above it.

:class:`ItemIndex` answers "the ``k`` rows whose vectors score highest against this query,
among the allowed rows" with one interface whatever the catalog's size:

* **exact** (small catalogs): one matrix-vector product over the allowed rows;
* **approximate** (``approximate=True``): an HNSW graph (``usearch``) built and searched with
  the inner product itself (``metric="ip"``: recommendations; a similarity graph over the
  inner product, as in ip-NSW, Morozov and Babenko, NeurIPS 2018) or cosine (``metric="cos"``:
  similar items, search). Filters are applied to what the graph returns: it fetches 8x what is
  asked divided by the share of rows allowed, and 4x more while too few pass; a filter that
  keeps few rows (a small storefront) is answered exactly over those rows instead.

Without a graph the item vectors are kept as float32, float16 or int8 codes with a scale per
row (:class:`Int8Rows`): 4, 2 or 1 byte per dimension. With a graph, the graph holds the only
copy and scores come from its own distances:

* cosine at ``precision="int8"``: each row's int8 codes (its largest magnitude maps to 127;
  cosine does not need the scale), queries coded the same way;
* inner product: float16 rows (float32 at ``precision="float32"``; at ``"int8"`` the values
  int8 codes stand for) less their mean. Every row's score against a query drops by the same
  amount, the query times the mean, so the ranking is the same, and it is added back; without
  the direction that all of a model's item vectors share, the graph's neighbourhoods are
  local and its searches find more of the true best (Recall@20 0.91 to 0.96 on 100,000
  catalog-like items).

A graph costs its vectors plus about 260 bytes an item for its links and key lookup at
connectivity 16 (320 at 24).

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
CONNECTIVITY = {"ip": 24, "cos": 16}
"""HNSW's graph degree by metric: inner-product graphs need more neighbours to be as easy to
search (Recall@20 on 300,000 catalog-like items, breadth 512: 0.90 with 16, 0.97 with 24)."""
BLOCK = 65_536
EXACT_BELOW_ALLOWED = 10_000
"""By default a filter that keeps fewer rows than this is answered exactly over them (at most about 2 ms
without a graph, 10 ms reading the rows from one)."""


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
        How the vectors are kept: ``"float32"``, ``"float16"`` or ``"int8"`` (None: float16
        with a graph, else float32).
    connectivity, expansion_add, expansion_search
        HNSW's graph degree (None: :data:`CONNECTIVITY`) and its breadth when building and searching (at least what a
        search fetches; 0: just that). A search changes the graph's breadth: one thread searches an index.
    """

    def __init__(self, vectors: np.ndarray, metric: str = "ip", approximate: bool = False,
                 exact_below: int = EXACT_BELOW_ALLOWED, connectivity: int | None = None, expansion_add: int = 128,
                 expansion_search: int = 512, precision: str | None = None):
        if metric not in ("ip", "cos"):
            raise ValueError(f"metric must be 'ip' or 'cos', got {metric!r}")
        if precision not in (None, *PRECISIONS):
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.metric, self.exact_below, self.expansion_search = metric, exact_below, expansion_search
        self.precision = precision or ("float16" if approximate else "float32")
        self.n_rows, self.graph, self.vectors = len(vectors), None, None
        if not approximate:
            self.vectors = _stored(self._scored(vectors, metric), self.precision)
            return
        from usearch.index import Index

        self.offset = np.zeros(vectors.shape[1], dtype=np.float32)
        if metric == "ip" and len(vectors) > RESERVED_ROWS:
            self.offset = vectors[RESERVED_ROWS:].mean(axis=0, dtype=np.float64).astype(np.float32)
        self.reserved = as_served(self._scored(vectors[:RESERVED_ROWS], metric), self.precision)  # never in the graph
        self.graph = Index(ndim=vectors.shape[1], metric=metric, dtype=self._graph_dtype(),
                           connectivity=connectivity or CONNECTIVITY[metric], expansion_add=expansion_add,
                           expansion_search=max(expansion_search, 1))
        for block in _blocks(RESERVED_ROWS, len(vectors)):  # a block at a time: no float32 copy of all rows
            self.graph.add(block.astype(np.uint64), self._for_graph(self._scored(vectors[block], metric)))

    @staticmethod
    def _scored(vectors: np.ndarray, metric: str) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        return _unit(vectors) if metric == "cos" else vectors

    @property
    def approximate(self) -> bool:
        return self.graph is not None

    def __len__(self) -> int:
        return self.n_rows

    def _graph_dtype(self) -> str:
        if self.precision == "float32":
            return "f32"
        return "i8" if self.precision == "int8" and self.metric == "cos" else "f16"

    def _for_graph(self, vectors: np.ndarray) -> np.ndarray:
        """What the graph holds for float32 ``vectors`` (unit vectors with ``cos``), as it stores it."""
        if self.metric == "cos":
            return Int8Rows(vectors).codes if self.precision == "int8" else vectors.astype(self._numpy_dtype())
        return (as_served(vectors, self.precision) - self.offset).astype(self._numpy_dtype())

    def _numpy_dtype(self) -> type:
        return {"f32": np.float32, "f16": np.float16, "i8": np.int8}[self._graph_dtype()]

    def _held(self, rows: np.ndarray) -> np.ndarray:
        """The graph's own copy of ``rows`` (all in the graph), in its dtype."""
        if not len(rows):
            return np.zeros((0, self.graph.ndim), dtype=self._numpy_dtype())
        return np.stack(self.graph.get(np.asarray(rows, dtype=np.uint64)))

    def extended(self, vectors: np.ndarray) -> ItemIndex:
        """An index over ``vectors`` (this index's rows, possibly changed, then new rows) that
        reuses this one's graph: only new and changed rows are (re)inserted. This index is not
        changed."""
        out = object.__new__(ItemIndex)
        out.__dict__.update(self.__dict__)
        out.n_rows = len(vectors)
        if self.graph is None:
            out.vectors = _stored(self._scored(vectors, self.metric), self.precision)
            return out
        out.reserved = as_served(self._scored(vectors[:RESERVED_ROWS], self.metric), self.precision)
        out.graph = self.graph.copy()
        for block in _blocks(RESERVED_ROWS, len(vectors)):
            held = out._for_graph(self._scored(vectors[block], self.metric))  # with this index's offset
            known = block[block < self.n_rows]
            changed = (self._held(known) != held[:len(known)]).any(axis=1)
            if changed.any():
                out.graph.remove(known[changed].astype(np.uint64))
            insert = np.concatenate([changed, np.ones(len(block) - len(known), dtype=bool)])
            if insert.any():
                out.graph.add(block[insert].astype(np.uint64), held[insert])
        return out

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), dim] vectors of ``rows`` as kept (unit vectors with ``cos``)."""
        if self.graph is None:
            return np.asarray(self.vectors[rows], dtype=np.float32)
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.graph.ndim), dtype=np.float32)
        reserved = rows < RESERVED_ROWS
        out[reserved] = self.reserved[rows[reserved]]
        held = self._held(rows[~reserved]).astype(np.float32)
        out[~reserved] = _unit(held) if self.metric == "cos" else held + self.offset
        return out

    @property
    def nbytes(self) -> int:
        """Memory of the vectors (with a graph, as the graph holds them; its links not included)."""
        if self.graph is None:
            return self.vectors.nbytes
        return len(self.graph) * self.graph.ndim * np.dtype(self._numpy_dtype()).itemsize

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the ``k`` best allowed rows, best first; ``allowed`` is a bool mask
        over rows (None: every row). Fewer than ``k`` when fewer rows are allowed."""
        query = self._scored(query[None], self.metric)[0]
        if allowed is None:
            allowed = np.ones(self.n_rows, dtype=bool)
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
        held = Int8Rows(query[None]).codes[0] if self._graph_dtype() == "i8" else query  # coded as the rows are
        shift = 1.0 + (float(query @ self.offset) if self.metric == "ip" else 0.0)  # usearch's distance is 1 - score
        fetch = int(8 * k * self.n_rows / n_allowed)  # 8x what passes the filter, on average
        while True:
            # the graph's search breadth must cover what is fetched, or far fewer of them are the best
            self.graph.expansion_search = max(self.expansion_search, fetch)
            found = self.graph.search(held, min(fetch, len(self.graph)))
            keys = found.keys.astype(np.int64)
            passed = allowed[keys]
            if passed.sum() >= k or fetch >= len(self.graph):
                break
            fetch *= 4
        if passed.sum() < min(k, n_allowed):  # the graph could not reach enough allowed rows
            return self._exact(query, k, np.flatnonzero(allowed))
        return keys[passed][:k], (shift - found.distances[passed][:k]).astype(np.float32)

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
        return np.concatenate([self.codes[start:start + BLOCK].astype(np.float32) @ query
                               for start in range(0, len(self), BLOCK)]) * self.scales

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
    return np.asarray(_stored(np.ascontiguousarray(vectors, dtype=np.float32), precision)[:], dtype=np.float32)


def _stored(vectors: np.ndarray, precision: str) -> np.ndarray | Int8Rows:
    """The vectors as kept without a graph."""
    if precision == "int8":
        return Int8Rows(vectors)
    return vectors.astype(np.float16) if precision == "float16" else vectors


def _blocks(start: int, stop: int):
    """Row numbers from ``start`` to ``stop`` in blocks of :data:`BLOCK`."""
    return (np.arange(first, min(first + BLOCK, stop)) for first in range(start, stop, BLOCK))


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(np.float32)

"""Top-k items for a query vector: exact below a catalog size, an inverted-file index (``faiss``) above it.

:class:`ItemIndex` answers "the ``k`` rows whose vectors score highest against this query,
among the allowed rows" with one interface whatever the catalog's size:

* **exact** (small catalogs): one matrix-vector product over the allowed rows;
* **approximate** (``approximate=True``): an inverted-file index (IVF, ``faiss``). k-means
  splits the rows into about 4 sqrt(n) lists; a search scores the rows of the lists whose
  centres score highest against the query. The scores are the inner product (``metric="ip"``:
  recommendations) or the cosine (``metric="cos"``: similar items, search).

How many lists a search scans is tuned when the index is built: the fewest that find
``recall`` (0.95 by default) of the exact top 20 for queries like those it will answer (given,
or 200 of the index's own rows), against exact float32 search (:attr:`ItemIndex.probes`,
:attr:`ItemIndex.tuned_recall`).
So an index over well-clustered vectors scans few lists and one over vectors without
structure scans many, and both find what they are asked to.

Filters are applied while scanning (rows not allowed are skipped, not scored), unless they
leave out only a few rows (a user's purchases), which are dropped from an unfiltered scan's
answer instead (checking every row against a filter costs a fifth of the scan). A search that
allows a share ``s`` of the rows scans ``1 / s`` times as many lists, so it scores about as
many allowed rows; when that finds fewer than ``k``, it scans every list, which is exact over
the allowed rows.

Vectors are kept as float32, float16 or int8 codes: without an index, int8 has a scale per row
(:class:`learner.precision.Int8Rows`); in an index, each dimension has its own range (``faiss``' scalar
quantiser, over each row's offset from its list's centre). An inner-product index asked for
int8 keeps float16: int8 codes of a model's 64 dimensions reorder the top of an
inner-product ranking (scanning every list, they found 0.95 of the exact top 20 of a
million items, float16 0.998). An index adds 16 bytes a row (its id and where it is) to the
vectors.

Rows are the model's item rows; rows 0 and 1 (padding, unknown) are never returned.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> vectors = rng.normal(size=(1000, 16)).astype(np.float32)
>>> exact, approximate = ItemIndex(vectors), ItemIndex(vectors, approximate=True, recall=1.0)
>>> query = rng.normal(size=16).astype(np.float32)
>>> exact.search(query, 5)[0].tolist() == approximate.search(query, 5)[0].tolist()
True
>>> allowed = np.zeros(1000, dtype=bool); allowed[500:] = True
>>> bool((approximate.search(query, 5, allowed)[0] >= 500).all())
True
"""

from __future__ import annotations

import math

import numpy as np

from learner.options import SERVING_PRECISIONS as PRECISIONS
from learner.precision import held_at

RESERVED_ROWS = 2  # padding and unknown
LISTS_PER_ROOT = 4
"""An index over ``n`` rows has about ``LISTS_PER_ROOT * sqrt(n)`` lists (faiss' guideline is 4 to 16)."""
MIN_ROWS_PER_LIST, TRAIN_ROWS_PER_LIST = 39, 64
"""k-means wants at least 39 rows a list to place its centres (fewer lists on small catalogs); it
learns them from a sample of 64 rows a list."""
POST_FILTER_MAX = 256
"""A search that leaves out at most this many rows (bought items) scans unfiltered and drops them."""
REBUILD_GROWTH = 1.5
"""An extended index is rebuilt (lists and tuning) once it holds 1.5 times the rows it was built with."""
TUNING_QUERIES, TUNING_K, PROBE_STEP = 200, 20, 1.5
"""Tuning measures Recall@20 for 200 rows taken as queries, at 1, 2, 3, 5, ... lists scanned
(each 1.5 times the last)."""
RANGE_MARGIN = 0.1
"""int8 codes: each dimension's range is the sample's, widened by 10% on each side, so rows
added later code without clipping unless they lie well outside it."""
BLOCK = 65_536
TUNING_BLOCK = 8_192
"""Tuning ranks rows exactly this many at a time: its scores and row numbers for 200 queries
stay under 50 MB, where a block of 65,536 rows held 300 MB for a moment."""


class ItemIndex:
    """Top-k search over item vectors (see the module docstring).

    Parameters
    ----------
    vectors
        [n_rows, dim] (float32 or float16), one per item row (rows 0 and 1 are never returned).
    metric
        ``"ip"`` (inner product) or ``"cos"`` (cosine).
    approximate
        Build an inverted-file index; otherwise every search is exact.
    precision
        How the vectors are kept: ``"float32"``, ``"float16"`` or ``"int8"`` (None: float16
        in an index, else float32; an inner-product index keeps float16 for int8).
    recall
        With an index: the share of the exact top 20 its searches should find, which decides
        how many lists they scan.
    seed
        For k-means and the tuning queries.
    queries
        [q, dim] queries like those the index will answer, to tune it with (None: 200 of its
        own rows, each left out of its answers). Inner-product queries (users' states) can
        point where no row does, so an index of rows tuned with rows can scan too few lists.
    """

    def __init__(self, vectors: np.ndarray, metric: str = "ip", approximate: bool = False,
                 precision: str | None = None, recall: float = 0.95, seed: int = 0, queries: np.ndarray | None = None):
        if metric not in ("ip", "cos"):
            raise ValueError(f"metric must be 'ip' or 'cos', got {metric!r}")
        if precision not in (None, *PRECISIONS):
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if not 0 < recall <= 1:
            raise ValueError(f"recall must be in (0, 1], got {recall}")
        self.metric, self.precision = metric, precision or ("float16" if approximate else "float32")
        self.n_rows, self.index, self.vectors = len(vectors), None, None
        self.built_rows, self.target, self.seed, self.queries = len(vectors), recall, seed, queries
        if not approximate or len(vectors) <= RESERVED_ROWS:
            self.vectors = held_at(self._scored(vectors, metric), self.precision)
            return
        import faiss

        n, dim = vectors.shape
        rng = np.random.default_rng(seed)
        lists = max(1, min(round(LISTS_PER_ROOT * math.sqrt(n)), (n - RESERVED_ROWS) // MIN_ROWS_PER_LIST))
        quantiser = faiss.IndexFlatIP(dim)
        self.codes = "float16" if (metric, self.precision) == ("ip", "int8") else self.precision
        if self.codes == "float32":
            self.index = faiss.IndexIVFFlat(quantiser, dim, lists, faiss.METRIC_INNER_PRODUCT)
        else:
            codes = faiss.ScalarQuantizer.QT_8bit if self.codes == "int8" else faiss.ScalarQuantizer.QT_fp16
            self.index = faiss.IndexIVFScalarQuantizer(quantiser, dim, lists, codes, faiss.METRIC_INNER_PRODUCT)
            self.index.sq.rangestat_arg = RANGE_MARGIN
        self.index.cp.seed, self.index.cp.max_points_per_centroid = seed, TRAIN_ROWS_PER_LIST
        sample = rng.choice(np.arange(RESERVED_ROWS, n), min(n - RESERVED_ROWS, TRAIN_ROWS_PER_LIST * lists),
                            replace=False)
        self.index.train(self._scored(vectors[np.sort(sample)], metric))
        for block in _blocks(0, n):  # a block at a time: no float32 copy of all rows
            self.index.add(self._scored(vectors[block], metric))
        self.index.make_direct_map()  # rows() reads rows back by number
        self.fingerprints = _fingerprints(vectors)
        self.probes, self.tuned_recall = self._tuned(vectors, recall, rng, queries)

    @staticmethod
    def _scored(vectors: np.ndarray, metric: str) -> np.ndarray:
        """float32 rows as the index scores them (unit rows for ``cos``: always a new array)."""
        return _unit(vectors) if metric == "cos" else np.ascontiguousarray(vectors, dtype=np.float32)

    @property
    def approximate(self) -> bool:
        return self.index is not None

    @property
    def lists(self) -> int:
        """How many lists the index has (0 without one)."""
        return self.index.nlist if self.index is not None else 0

    def __len__(self) -> int:
        return self.n_rows

    def describe(self) -> dict:
        """How searches run: ``{"search": "exact"}``, or the index's lists, how many a search
        scans and the Recall@20 measured when it was built.

        >>> ItemIndex(np.ones((5, 2), dtype=np.float32)).describe()
        {'search': 'exact', 'rows': 5, 'precision': 'float32'}
        """
        out = {"search": "exact" if self.index is None else "inverted file", "rows": self.n_rows,
               "precision": self.precision}
        if self.index is not None:
            out |= {"codes": self.codes, "lists": self.lists, "lists_scanned": self.probes,
                    "recall_at_20": round(self.tuned_recall, 4)}
        return out

    def _tuned(self, vectors: np.ndarray, target: float, rng: np.random.Generator,
               queries: np.ndarray | None) -> tuple[int, float]:
        """(lists to scan, Recall@20 it measured): the fewest lists that reach ``target`` for
        ``queries`` (or sampled rows), against exact float32 search over the other rows, with
        95% confidence (the mean less 1.645 standard errors); all lists if none does."""
        allowed = np.ones(self.n_rows, dtype=bool)
        allowed[:RESERVED_ROWS] = False
        if queries is None:
            rows = rng.choice(np.arange(RESERVED_ROWS, self.n_rows), min(TUNING_QUERIES, self.n_rows // 2),
                              replace=False)
            queries, allowed[rows] = vectors[rows], False  # a query's own row would be found for free
        queries = self._scored(queries, self.metric)
        k = min(TUNING_K, int(allowed.sum()))
        scores = np.empty((len(queries), 0), dtype=np.float32)
        exact = np.empty((len(queries), 0), dtype=np.int64)
        for block in _blocks(RESERVED_ROWS, self.n_rows, TUNING_BLOCK):
            block = block[allowed[block]]
            scores = np.concatenate([scores, queries @ self._scored(vectors[block], self.metric).T], axis=1)
            exact = np.concatenate([exact, np.broadcast_to(block, (len(queries), len(block)))], axis=1)
            best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            scores, exact = np.take_along_axis(scores, best, axis=1), np.take_along_axis(exact, best, axis=1)
        probes = 1
        while True:
            found = self._scan(queries, k, probes, allowed)[0]
            recalls = np.array([len(np.intersect1d(a, b)) / k for a, b in zip(found, exact)])
            if recalls.mean() - 1.645 * recalls.std() / np.sqrt(len(recalls)) >= target or probes == self.lists:
                return probes, float(recalls.mean())
            probes = min(self.lists, math.ceil(probes * PROBE_STEP))

    def _scan(self, queries: np.ndarray, k: int, probes: int,
              allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) [len(queries), k] of the best (``allowed``) rows in the ``probes``
        lists nearest each query; row -1 where fewer were found."""
        import faiss

        params = faiss.SearchParametersIVF(nprobe=probes)
        if allowed is not None:
            bits = np.packbits(allowed, bitorder="little")  # the selector reads it: keep it until the search ends
            params.sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
        scores, rows = self.index.search(queries, k, params=params)
        return rows, scores

    def extended(self, vectors: np.ndarray) -> ItemIndex:
        """An index over ``vectors`` (this index's rows, possibly changed, then new rows) that
        reuses this one's lists: only changed and new rows are (re)coded, until the index has
        grown :data:`REBUILD_GROWTH` times since it was built. This index is not changed."""
        if self.index is not None and len(vectors) > REBUILD_GROWTH * self.built_rows:
            return ItemIndex(vectors, self.metric, True, self.precision, self.target, self.seed, self.queries)
        out = object.__new__(ItemIndex)
        out.__dict__.update(self.__dict__)
        out.n_rows = len(vectors)
        if self.index is None:
            out.vectors = held_at(self._scored(vectors, self.metric), self.precision)
            return out
        import faiss

        out.index, out.fingerprints = faiss.clone_index(self.index), _fingerprints(vectors)
        changed = np.flatnonzero(out.fingerprints[:self.n_rows] != self.fingerprints)
        for start in range(0, len(changed), BLOCK):
            rows = changed[start:start + BLOCK]
            out.index.update_vectors(rows, self._scored(vectors[rows], self.metric))
        for block in _blocks(self.n_rows, len(vectors)):
            out.index.add(self._scored(vectors[block], self.metric))
        return out

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), dim] vectors of ``rows`` as kept (unit vectors with ``cos``)."""
        if self.index is None:
            return np.asarray(self.vectors[rows], dtype=np.float32)
        return self.index.reconstruct_batch(np.asarray(rows, dtype=np.int64))

    def dot(self, query: np.ndarray) -> np.ndarray:
        """float32 [n_rows]: every row as kept times ``query`` (not normalised); exact indexes only."""
        if self.index is not None:
            raise ValueError("an inverted-file index scores only the rows it searches")
        return np.asarray(self.vectors @ np.asarray(query, dtype=np.float32), dtype=np.float32)

    @property
    def nbytes(self) -> int:
        """Memory of the vectors (in an index: their codes, without the 16 bytes a row of ids)."""
        return self.vectors.nbytes if self.index is None else self.n_rows * self.index.code_size

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the ``k`` best allowed rows, best first; ``allowed`` is a bool mask
        over rows (None: every row). Fewer than ``k`` when fewer rows are allowed."""
        query = self._scored(query[None], self.metric)
        allowed = np.ones(self.n_rows, dtype=bool) if allowed is None else allowed.copy()
        allowed[:RESERVED_ROWS] = False
        n_allowed = int(np.count_nonzero(allowed))
        k = min(k, n_allowed)
        if k == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if self.index is None:
            scores = self.vectors @ query[0]
            scores[~allowed] = -np.inf
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top], kind="stable")]
            return top, scores[top]
        left_out = self.n_rows - n_allowed
        if left_out <= POST_FILTER_MAX:  # a few rows left out: skip them after an unfiltered scan, which is faster
            rows, scores = self._scan(query, k + left_out, self.probes)
            found = rows[0] >= 0
            found[found] = allowed[rows[0][found]]
            if found.sum() >= k:
                return rows[0][found][:k], scores[0][found][:k]
        probes = min(self.lists, math.ceil(self.probes * (self.n_rows - RESERVED_ROWS) / n_allowed))
        rows, scores = self._scan(query, k, probes, allowed)
        if rows[0, -1] < 0 and probes < self.lists:  # too few allowed rows in those lists: all of them, exact
            rows, scores = self._scan(query, k, self.lists, allowed)
        found = rows[0] >= 0
        return rows[0][found], scores[0][found]


def recall_at_k(index: ItemIndex, exact: ItemIndex, queries: np.ndarray, k: int = 20) -> float:
    """Mean share of the exact top ``k`` that ``index`` returns, over ``queries`` [q, dim].

    >>> rng = np.random.default_rng(1)
    >>> vectors = rng.normal(size=(500, 8)).astype(np.float32)
    >>> index = ItemIndex(vectors, approximate=True)
    >>> recall_at_k(index, ItemIndex(vectors), rng.normal(size=(10, 8))) >= 0.95
    True
    """
    found = [len(set(index.search(q, k)[0].tolist()) & set(exact.search(q, k)[0].tolist())) / k for q in queries]
    return float(np.mean(found))


def _blocks(start: int, stop: int, size: int = BLOCK):
    """Row numbers from ``start`` to ``stop`` in blocks of ``size``."""
    return (np.arange(first, min(first + size, stop)) for first in range(start, stop, size))


def _fingerprints(vectors: np.ndarray) -> np.ndarray:
    """uint64 [n]: a hash of each row's float32 values (a changed row changes its hash)."""
    multipliers = np.random.default_rng(vectors.shape[1]).integers(1, 2 ** 63, vectors.shape[1], dtype=np.uint64)
    return np.concatenate([(np.ascontiguousarray(vectors[start:start + 8192], dtype=np.float32).view(np.uint32)
                            * multipliers).sum(axis=1, dtype=np.uint64) for start in range(0, len(vectors), 8192)])


def _unit(vectors: np.ndarray) -> np.ndarray:
    """float32 copy of ``vectors`` with each row scaled to length 1 (zero rows stay zero), made
    in place: one copy of the rows at a time in memory, not three.

    >>> _unit(np.array([[3, 4], [0, 0]], dtype=np.float16)).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    out = np.array(vectors, dtype=np.float32, order="C")
    out /= np.maximum(np.sqrt(np.einsum("ij,ij->i", out, out)), 1e-12)[:, None]
    return out

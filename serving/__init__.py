"""Answering shoppers: what a worker holds to answer ``/recommend``, ``/similar`` and ``/search``.

Building a snapshot is separate from answering from it:

* :mod:`serving.snapshot`: :func:`~serving.snapshot.build_snapshot` makes one model version
  ready to answer (extends it with the catalog, computes item vectors, builds or reuses the
  indexes, frees what answering never reads);
* :mod:`serving.rankers`: :class:`~serving.rankers.Recommender` answers from a snapshot
  (recommend, similar, search); :class:`~serving.rankers.TextRanker` answers by catalog text
  while no version serves;
* :mod:`serving.index`: top-k search over item vectors, exact or inverted-file (``faiss``);
* :mod:`serving.compiled`: ONNX Runtime exports of users' states and of the query encoder;
* :mod:`serving.history`: what the worker remembers of shoppers (recent histories, trending items);
* :mod:`serving.queries`: search queries to text vectors, cached and batched;
* :mod:`serving.service`: the worker's serving stage, which keeps the newest promoted
  version, histories and trends ready and swaps snapshots in.

The worker's HTTP views (:mod:`streams.web`) read from it; it reads versions through
:mod:`training.versions` and the store.
"""

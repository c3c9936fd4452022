"""Learner: the recommender and how it learns continually (the training jobs that run it are in
:mod:`training`; this package knows no store, Kafka or settings).

Map of the package (one job per module):

* ``device``     -- CUDA (bf16 autocast, pinned batches) when present, else CPU.
* ``idmap``      -- append-only ``IdMap`` (0 padding, 1 unknown) and the ``Vocabulary`` of
  items, users and storefronts; JSON-serialisable.
* ``text``       -- ``item_text``, frozen MiniLM ``TextEncoder``, ``TextEmbeddingCache`` keyed
  by sha256, ``embed_texts`` (encodes only what the cache lacks).
* ``sequences``  -- events frames to padded tensors: training sequences, next-item examples,
  user histories.
* ``model``      -- ``SASRec``: causal transformer; item vector = id embedding + projected text.
* ``bundle``     -- ``ModelBundle``: model + vocabulary + text hashes; build, extend for new ids,
  item and user vectors for serving.
* ``trainer``    -- ``Trainer`` loop (next-item loss, full or sampled softmax with the log-Q
  correction, purchases weighted) and the ``Plugin`` hooks.
* ``options``    -- the choices settings offer: softmax (``full``, ``sampled``, ``auto``), rehearsal unit.
* ``plugins``    -- ``Rehearsal``, ``Distillation`` (ADER-style KL), ``EarlyStopping``.
* ``finetune``   -- ``fine_tune``: extend a copy of a bundle and train it on one sealed window.
* ``evaluate``   -- full-ranking Recall@K / NDCG@K (and loss): the one ranking routine;
  ``BundleScorer`` and the ``Popularity`` baseline.
* ``gate``       -- the gate's held-out split and verdict.
* ``checkpoint`` -- ``dump_bundle`` / ``load_bundle``: safetensors + JSON header, sha256-checked.
* ``recommend``  -- ``Recommender``: the serving snapshot (top-k, similar items, search re-ranking).
* ``eventlog``   -- EVENTS.csv / ITEMS.csv loaders; errors name the line and column.
* ``backtest``   -- offline continual-learning backtest of an event log: strategies, R matrix,
  forgetting and backward transfer (``streamrec backtest``).
"""

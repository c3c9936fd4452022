"""Learner stage: continual fine-tuning of the recommender, published behind a quality gate.

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
* ``trainer``    -- ``Trainer`` loop (full-softmax next-item loss, purchases weighted) and the
  ``Plugin`` hooks.
* ``plugins``    -- ``Rehearsal``, ``Distillation`` (ADER-style KL), ``EarlyStopping``.
* ``finetune``   -- ``fine_tune``: extend a copy of a bundle and train it on one sealed window.
* ``evaluate``   -- full-ranking Recall@K / NDCG@K; ``BundleScorer`` and ``Popularity``.
* ``checkpoint`` -- ``dump_bundle`` / ``load_bundle``: safetensors + JSON header, sha256-checked.
* ``serving``    -- ``load_serving``: the newest promoted version from the store, checksum verified.
* ``job``        -- one training job: read a sealed window, fine-tune, gate, publish a version.
* ``drift``      -- a training job's drift metrics: what :mod:`drift` compares with, read from the store.
* ``service``    -- the worker's training service: queued jobs in a child process, off the event loop.
* ``eventlog``   -- EVENTS.csv / ITEMS.csv loaders; errors name the line and column.
* ``backtest``   -- offline continual-learning backtest of an event log: strategies, R matrix,
  forgetting and backward transfer (``streamrec backtest``).
"""

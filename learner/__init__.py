"""Learner: the recommender and how it learns continually (the training jobs that run it are in
:mod:`training`, the offline backtest that compares it in :mod:`backtest`; this package knows no
store, Kafka or settings).

Map of the package (one job per module):

* ``device``     -- CUDA (bf16 autocast, pinned batches) when present, else CPU.
* ``idmap``      -- append-only ``IdMap`` (0 padding, 1 unknown) and the ``Vocabulary`` of
  items, users and storefronts; JSON-serialisable.
* ``text``       -- ``item_text``, frozen MiniLM ``TextEncoder``, ``TextEmbeddingCache`` keyed
  by sha256, ``embed_texts`` (encodes only what the cache lacks).
* ``sequences``  -- events frames to padded tensors: training sequences, next-item examples,
  user histories.
* ``options``    -- the choices settings offer: softmax (``full``, ``sampled``, ``auto``), rehearsal unit,
  text tuning, serving precision.
* ``model``      -- ``SASRec``: causal transformer; item vector = id embedding + projected text;
  growing id tables, admitting and retiring id rows, placing new items among text look-alikes.
* ``admission``  -- ``IdPolicy`` and ``update_ids``: which ids get a trainable row, which expire.
* ``bundle``     -- ``ModelBundle``: model + vocabulary + text hashes; build, extend for new ids,
  item and user vectors for serving.
* ``trainer``    -- ``Trainer`` loop (next-item loss, full or sampled softmax with the log-Q
  correction, purchases weighted) and the ``Plugin`` hooks.
* ``plugins``    -- ``Rehearsal``, ``SequenceRehearsal``, ``Distillation`` (ADER-style KL), ``EarlyStopping``.
* ``text_tuning`` -- ``TextTuning`` plugin: tune MiniLM (top layers or LoRA) on behaviour, then re-embed.
* ``finetune``   -- ``fine_tune``: extend a copy of a bundle and train it on sealed windows (fewer
  epochs for an update of a trained bundle when asked).
* ``evaluate``   -- full-ranking Recall@K / NDCG@K (and loss, new items' share of slots, coverage,
  diversity, novelty, popularity): the one ranking routine; ``BundleScorer`` and the ``Popularity`` baseline.
* ``blend``      -- ``TextBlend``: the text term that ranks new items by what their text knows.
* ``gate``       -- the gate's held-out split and verdict (Recall@20, coverage@20).
* ``checkpoint`` -- ``dump_bundle`` / ``load_bundle``: safetensors + JSON header, sha256-checked.
* ``recommend``  -- ``Recommender``: the serving snapshot (top-k, similar items, search re-ranking);
  ``TextRanker``: similar items and search by pretrained text while no version serves.
* ``neighbours`` -- ``ItemIndex``: exact or inverted-file (faiss) top-k over item vectors, int8/float16 rows.
* ``compiled``   -- ``CompiledModule``: ONNX Runtime exports (made in a child process), checked against torch.
"""

"""Drift metrics: how shoppers' behaviour, the model's quality and the model itself move, window by window.

Plain functions and small classes that take data (pandas frames, numbers, scorers), never
Kafka or the store, so the worker's training job (:mod:`training.drift_recording`) and a backtest run
the same code. One concept per module:

* ``divergence`` -- PSI and Jensen-Shannon divergence of binned counts, additive smoothing,
  the sampling-noise floor of both.
* ``calibration`` -- thresholds learnt from a storefront's reference windows: chunks of them
  compared with each other, mean + 3 sd, never below the sampling-noise floor.
* ``input``      -- input drift of one storefront's window: item popularity and category mix
  against the previous and the reference windows, new-item, new-user and purchase shares.
* ``scores``     -- score drift of the serving version within itself (its first window is the
  reference) and the top-k overlap of two versions.
* ``quality``    -- Recall@20, NDCG@20 and loss of any scorer on a batch of events; the
  popularity model; seeded probe samples.
* ``detectors``  -- river's ADWIN (per-event hits) and Page-Hinkley (log of per-window values),
  rebuilt for every judgement by replaying the stored series.
* ``model_shift`` -- cosine shift of item vectors between versions.
* ``metrics``    -- every metric's name, kind, bad direction, definition and how many consecutive
  breaches make an alert; ``MetricValue``.
* ``window``     -- all metrics of one window from a ``Context`` of earlier windows;
  ``DriftTracker`` keeps that context in memory for backtests.
* ``report``     -- the self-contained HTML report (inline SVG plots).
"""

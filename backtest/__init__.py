"""Backtest: replay an event log offline, window by window, and compare ways of keeping a
recommender current (``streamrec backtest``, ``python -m bench.backtest``).

It sits above the algorithms (:mod:`learner`, :mod:`replay`) and knows no store, Kafka, Faust,
training jobs or settings: the command line maps the settings to the learner's configurations
(:func:`runtime.learner_configs.config_for`) and hands them in.

Map of the package:

* ``protocol``   -- ``run_backtest``: windows, evaluate-then-train, the forgetting matrix
  ``R[i][j]``; ``split_windows``; ``BacktestError``.
* ``settings``   -- ``BacktestSettings``: how the stream is cut and scored, every strategy's settings.
* ``metrics``    -- forgetting and backward transfer of ``R``, means over windows, JSON without NaN.
* ``strategies`` -- one module per strategy (``rehearsal``, ``naive``, ``joint``, ``popularity``,
  ``river-mf``, ``id-only``, ``text-knn``), ``STRATEGIES`` and ``make_strategy``.
* ``eventlog``   -- EVENTS.csv / ITEMS.csv loaders; errors name the line and column.
"""

"""The backtest protocol: replay an event log window by window, offline, with the worker's learner.

Protocol (``run_backtest``):

1. the events, ordered by time, are split into ``N`` windows: equal event counts (``split=
   "events"``; events sharing a timestamp stay together) or equal time spans (``"time"``);
2. for each window, the current model ranks every known item for every event of the window
   (:func:`learner.evaluate.evaluate`: next-item, full ranking, items the user interacted
   with before excluded; earlier events of the window are history, the weights stay as they
   are; earlier events of the window are items' live interactions, as serving counts them),
   then the strategy trains on the window. Events whose item was first seen in this window
   (no earlier event names it) are also scored on their own: ``cold_recall@k``;
3. after training through window i, a fixed sample of at most ``eval_sample`` events of every
   window j <= i (drawn once per window) is ranked again: ``R[i][j]``, Recall@k. With ``T``
   the last window, forgetting is the mean over j < T of ``max(R[j..T-1][j]) - R[T][j]`` and
   backward transfer (BWT) the mean over j < T of ``R[T][j] - R[j][j]`` (Lopez-Paz and
   Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017; Chaudhry et al.,
   ECCV 2018);
4. the means are over windows 1..N-1: window 0 is ranked before any training
   (:func:`backtest.metrics.transfer`, :func:`backtest.metrics.mean`).

Known items: ``ITEMS.csv`` has no times, so each catalog item joins the catalog at the start of
the window of its first event (a store learns of a product before anyone clicks it), and
catalog items that no event names join before window 0. Strategies learn of joining items
before the window is ranked (the learned models extend their id maps as serving does: a new
item with text starts among its MiniLM look-alikes), so the candidates of an event are the
items known at its window. An item missing from the catalog is known from its first
training window on; until then it is a miss for every strategy.

Strategies: :mod:`backtest.strategies` (one module each). Every window also reports the
beyond-accuracy metrics of :func:`learner.evaluate.evaluate` (``coverage@k``, ``diversity@k``,
``novelty@k``, ``avg_popularity@k``) of the lists it ranked, the training data being the events
before the window; with a catalog, diversity is measured with the items' pretrained MiniLM text
vectors for every strategy (``diversity_vectors: "text"``), so that strategies compare; without
one, with each model's own item vectors (``"model"``; none for popularity).

Examples
--------
>>> events = pd.DataFrame({"event_id": [f"e{i:02d}" for i in range(40)], "type": "click",
...     "user_id": [f"u{i % 4}" for i in range(40)], "item_id": [f"i{i % 5}" for i in range(40)],
...     "storefront": "s", "ts": range(40), "session_id": None, "price": None, "quantity": None})
>>> result = run_backtest(events, None, "popularity", BacktestSettings(windows=4))
>>> [w["events"] for w in result["windows"]], result["mean"]["recall@20"]
([10, 10, 10, 10], 1.0)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from backtest.metrics import mean, nan_to_none, transfer, window_metrics
from backtest.settings import SPLITS, BacktestSettings
from backtest.strategies import TEXT_STRATEGIES, make_strategy
from backtest.strategies.base import Context
from learner.device import Device, pick_device
from learner.evaluate import BEYOND_ACCURACY, ItemVectors, evaluate
from learner.text import TextEmbeddingCache, TextEncoder, catalog_texts, embed_texts
from replay.frames import in_set


class BacktestError(ValueError):
    """The event log cannot be backtested as asked (e.g. too few events for the windows)."""


def split_windows(ts: np.ndarray, n: int, by: str = "events") -> list[tuple[int, int]]:
    """(start, end) row ranges of ``n`` consecutive windows of the time-sorted ``ts``.

    ``by="events"``: about equal event counts, events sharing a timestamp kept together;
    ``by="time"``: equal spans of time. Raises BacktestError when a window would be empty.

    >>> split_windows(np.array([1, 2, 2, 2, 5, 6, 7, 9]), 2)
    [(0, 4), (4, 8)]
    >>> split_windows(np.array([1, 1, 1, 1, 1, 1, 2, 3, 4, 5]), 2)
    [(0, 6), (6, 10)]
    >>> split_windows(np.array([1, 2, 2, 2, 5, 6, 7, 9]), 2, by="time")
    [(0, 4), (4, 8)]
    """
    if by not in SPLITS:
        raise BacktestError(f"unknown split {by!r}; choose one of {', '.join(SPLITS)}")
    ts = np.asarray(ts)
    if n < 1 or n > len(ts):
        raise BacktestError(f"cannot split {len(ts):,} events into {n} windows")
    if by == "events":  # the nearer edge of the run of equal timestamps at each even cut
        cuts, previous = [], 0
        for target in np.round(np.arange(1, n) * len(ts) / n).astype(np.int64).tolist():
            left, right = (int(np.searchsorted(ts, ts[target], side=side)) for side in ("left", "right"))
            cut = left if target - left <= right - target and left > previous else right
            cuts.append(cut)
            previous = cut
    else:
        cuts = np.searchsorted(ts, ts[0] + (ts[-1] - ts[0]) * np.arange(1, n) / n, side="left").tolist()
    bounds = list(zip([0, *cuts], [*cuts, len(ts)]))
    for w, (start, end) in enumerate(bounds):
        if end <= start:
            hint = ("too many events share a timestamp" if by == "events" else
                    "no events fall into its span of time; use fewer windows or --split events")
            raise BacktestError(f"cannot split {len(ts):,} events into {n} windows by {by}: window {w} would be "
                                f"empty ({hint})")
    return bounds


def run_backtest(events: pd.DataFrame, catalog: pd.DataFrame | None, strategy: str, settings: BacktestSettings,
                 *, cache: TextEmbeddingCache | None = None, device: Device | None = None,
                 progress: Callable[[str], None] = lambda line: None) -> dict:
    """Backtest ``strategy`` on ``events`` (a time-sorted learner events frame, e.g. from
    :func:`backtest.eventlog.load_events`) with ``catalog`` (or None); see the module docstring.

    ``cache`` holds item text embeddings (filled here with the catalog's); ``progress``
    receives one line per window. Returns the JSON-able result.
    """
    device = device or pick_device()
    events = events.sort_values("ts", kind="stable").reset_index(drop=True)
    cache = {} if cache is None else cache
    k, metric = settings.k, f"recall@{settings.k}"
    bounds = split_windows(events["ts"].to_numpy(), settings.windows, settings.split)
    windows = [events.iloc[start:end] for start, end in bounds]
    rng = np.random.default_rng([settings.seed, 7])
    samples = [w.iloc[np.sort(rng.choice(len(w), size=min(len(w), settings.eval_sample), replace=False))]
               for w in windows]

    n = len(windows)
    embed_seconds, encoder, text_vectors = 0.0, None, None
    if catalog is not None:
        first_window: dict[str, int] = {}
        for j, window in enumerate(windows):
            for item in window["item_id"].unique():
                first_window.setdefault(item, j)
        joins = catalog["item_id"].map(first_window).fillna(0).astype(int).to_numpy()
        texts = catalog_texts(catalog)
        if texts:  # every strategy's lists are measured with the same text vectors (diversity)
            encoder = TextEncoder(device)
            started = time.perf_counter()
            text_vectors = ItemVectors.of(dict(zip(texts, embed_texts(list(texts.values()), encoder, cache))))
            embed_seconds = time.perf_counter() - started
    context = Context(catalog[joins == 0] if catalog is not None else None, cache,
                      encoder if strategy in TEXT_STRATEGIES else None, device)
    model = make_strategy(strategy, settings, context)

    R: list[list[float | None]] = [[None] * n for _ in range(n)]
    rows, seen_items = [], set()
    scorer = model.scorer()
    beyond = [name for name in window_metrics(k) if name.startswith(tuple(BEYOND_ACCURACY))]
    diversity_vectors = ("text" if text_vectors is not None else
                         "model" if getattr(scorer, "item_vectors", None) is not None else None)
    for j, window in enumerate(windows):
        start, end = bounds[j]
        if catalog is not None and j and (joins == j).any():
            context.catalog = catalog[joins <= j]
            model.add_items(catalog[joins == j])
            scorer = model.scorer()
        unseen = set(context.catalog["item_id"].astype(str)) - seen_items if context.catalog is not None else set()
        prequential = evaluate(scorer, window, events.iloc[:start], ks=(k,), new_items=unseen,
                               beyond_accuracy=True, item_vectors=text_vectors)
        is_cold = ~in_set(window["item_id"], seen_items)
        cold = (evaluate(scorer, window[is_cold], events.iloc[:end], ks=(k,), live_events=window) if is_cold.any()
                else {metric: math.nan})
        seen_items.update(window["item_id"])
        started = time.perf_counter()
        facts = model.fit_window(window, windows[:j])
        train_seconds = time.perf_counter() - started
        scorer = model.scorer()
        started = time.perf_counter()
        for i in range(j + 1):
            R[j][i] = evaluate(scorer, samples[i], events.iloc[:bounds[i][1]], ks=(k,))[metric]
        rows.append({"window": j, "events": len(window), "ts_from": int(window["ts"].iloc[0]),
                     "ts_to": int(window["ts"].iloc[-1]), metric: prequential[metric],
                     f"ndcg@{k}": prequential[f"ndcg@{k}"], f"cold_recall@{k}": cold[metric],
                     "cold_events": int(is_cold.sum()), f"new_item_share@{k}": prequential[f"new_item_share@{k}"],
                     **{name: prequential[name] for name in beyond},
                     "train_seconds": round(train_seconds, 3),
                     "eval_seconds": round(time.perf_counter() - started, 3), **facts})
        progress(f"{strategy} window {j + 1}/{n}: {len(window):,} events, {metric} {prequential[metric]:.4f}, "
                 f"cold {cold[metric]:.4f} ({int(is_cold.sum()):,} events), coverage {prequential[beyond[0]]:.4f}, "
                 f"trained in {train_seconds:.1f}s")

    scored = rows[1:]
    forgetting, bwt = transfer(R)
    means = {name: mean([r[name] for r in scored]) for name in window_metrics(k)}
    known = set(catalog["item_id"]) if catalog is not None else set()
    result = {
        "strategy": strategy, "k": k, "windows": rows, "mean": means, "diversity_vectors": diversity_vectors,
        "mean_over": f"windows 1..{n - 1} (window 0 is ranked before any training)",
        "bwt": bwt, "forgetting": forgetting, "R": R,
        "R_events": [len(s) for s in samples],
        "total_train_seconds": round(sum(r["train_seconds"] for r in rows), 3),
        "embed_seconds": round(embed_seconds, 3),
        "device": str(device.torch_device), "torch_threads": torch.get_num_threads(),
        "events": len(events), "users": int(events["user_id"].nunique()),
        "items": int(len(known | set(events["item_id"]))),
        "items_without_text": len(set(events["item_id"]) - set(catalog_texts(catalog) if catalog is not None else ())),
        "split": settings.split, "settings": settings.describe(),
    }
    return nan_to_none(result)

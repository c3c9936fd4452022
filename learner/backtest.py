"""Continual-learning backtest: replay an event log window by window, offline, with the worker's learner.

Protocol (``run_backtest``):

1. the events, ordered by time, are split into ``N`` windows: equal event counts (``split=
   "events"``; events sharing a timestamp stay together) or equal time spans (``"time"``);
2. for each window, the current model ranks every known item for every event of the window
   (:func:`learner.evaluate.evaluate`: next-item, full ranking, items the user interacted
   with before excluded; earlier events of the window are history, the weights stay as they
   are), then the strategy trains on the window. Events whose item was first seen in this
   window (no earlier event names it) are also scored on their own: ``cold_recall@k``;
3. after training through window i, a fixed sample of at most ``eval_sample`` events of every
   window j <= i (drawn once per window) is ranked again: ``R[i][j]``, Recall@k. With ``T``
   the last window, forgetting is the mean over j < T of ``max(R[j..T-1][j]) - R[T][j]`` and
   backward transfer (BWT) the mean over j < T of ``R[T][j] - R[j][j]`` (Lopez-Paz and
   Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017; Chaudhry et al.,
   ECCV 2018);
4. the means are over windows 1..N-1: window 0 is ranked before any training.

Known items: ``ITEMS.csv`` has no times, so each catalog item joins the catalog at the start of
the window of its first event (a store learns of a product before anyone clicks it), and
catalog items that no event names join before window 0. Strategies learn of joining items
before the window is ranked (the learned models extend their id maps as serving does: a new
item with text starts among its MiniLM look-alikes), so the candidates of an event are the
items known at its window. An item missing from the catalog is known from its first
training window on; until then it is a miss for every strategy.

Strategies (``STRATEGIES``), each a small class with ``fit_window(window, past)`` and
``scorer()``:

========== ===================================================================================
rehearsal  the worker's fine-tune (:func:`learner.finetune.fine_tune`): the previous model,
           extended with new ids, trained on the window with the rehearsal memory
           (:func:`replay.memory.make_memory`, updated with each window as sealing does) mixed
           in, distillation from the previous model and early stopping; earlier windows are
           users' history (the last ``history_windows``)
naive      the same fine-tune without rehearsal and distillation (the new window only)
joint      a fresh model trained from scratch on every event so far, at every window
popularity counts of the last ``popularity_windows`` windows (the recent past)
river-mf   ``river.reco.BiasedMF`` learned online, one event at a time in time order (target 1),
           each followed by ``mf_negatives`` uniformly drawn known items (target 0)
id-only    ``rehearsal`` with ``ModelConfig(use_text=False)``: no text tower
text-knn   content only, no training: an item's score is the MiniLM cosine between its text and
           the mean text vector of the user's ``knn_recent`` most recent items
========== ===================================================================================

The learned strategies tune the text encoder as the worker's settings say
(``FineTuneConfig.text``: frozen, top layers or LoRA).

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

import dataclasses
import json
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from learner.bundle import ModelBundle
from learner.device import Device, pick_device
from learner.evaluate import BundleScorer, Popularity, Scorer, evaluate
from learner.finetune import FineTuneConfig, fine_tune
from learner.idmap import Vocabulary
from learner.model import ModelConfig
from learner.sequences import SequenceBatch, events_frame
from learner.text import (
    TEXT_DIM,
    TextEmbeddingCache,
    TextEncoder,
    catalog_texts,
    embed_texts,
)
from replay import codec
from replay.memory import RehearsalMemory, make_memory

STRATEGIES = ("rehearsal", "naive", "joint", "popularity", "river-mf", "id-only", "text-knn")
TEXT_STRATEGIES = frozenset({"rehearsal", "naive", "joint", "text-knn"})
SPLITS = ("events", "time")


class BacktestError(ValueError):
    """The event log cannot be backtested as asked (e.g. too few events for the windows)."""


@dataclass(frozen=True)
class BacktestSettings:
    """How the stream is cut and scored, and every strategy's settings.

    ``model`` and ``finetune`` are the worker's (the CLI maps its settings as training jobs do); the strategies
    derive their variants from them (no text for id-only, no rehearsal or distillation for
    naive and joint). The baselines' defaults are the best found on MovieLens-100k (10
    windows): popularity over 1, 2 or 3 windows, and river-mf over learning rates 0.002-0.1,
    1-8 negatives, 16-64 factors and L2 0-0.01. ``serving_precision`` ranks with the item
    vectors held as a worker holds them (:class:`learner.evaluate.BundleScorer`).
    """

    windows: int = 10
    k: int = 20
    split: str = "events"
    eval_sample: int = 2000
    model: ModelConfig = field(default_factory=ModelConfig)
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)
    rehearsal_policy: str = "reservoir"
    rehearsal_capacity: int = 20_000
    rehearsal_half_life_s: float = 7 * 86_400
    history_windows: int = 20
    popularity_windows: int = 2
    mf_factors: int = 32
    mf_negatives: int = 4
    mf_lr: float = 0.005
    mf_l2: float = 0.0
    knn_recent: int = 10
    serving_precision: str = "float32"
    seed: int = 1

    def describe(self) -> dict:
        """The settings as JSON-able values."""
        out = dataclasses.asdict(self)
        out["model"] = self.model.to_dict()
        return out


@dataclass
class Context:
    """What every strategy may use: the catalog (or None), the text embeddings, the device."""

    catalog: pd.DataFrame | None
    cache: TextEmbeddingCache
    encoder: TextEncoder | None
    device: Device


class Strategy(ABC):
    """One way of keeping a recommender current as windows arrive."""

    name: ClassVar[str]

    def __init__(self, settings: BacktestSettings, context: Context):
        self.settings = settings
        self.context = context

    def add_items(self, items: pd.DataFrame) -> None:
        """Catalog rows of items that just joined the catalog (``context.catalog`` has them too)."""

    @abstractmethod
    def fit_window(self, window: pd.DataFrame, past: list[pd.DataFrame]) -> dict:
        """Train on ``window`` (``past``: the earlier windows, oldest first); return extra facts
        about the step for the result (e.g. ``epochs``)."""

    @abstractmethod
    def scorer(self) -> Scorer:
        """The current model as a frozen :class:`learner.evaluate.Scorer`."""


def _frames(frames: list[pd.DataFrame]) -> pd.DataFrame | None:
    return pd.concat(frames, ignore_index=True) if frames else None


class FineTuned(Strategy):
    """The worker's continual fine-tune (``rehearsal``), and its ablations ``naive`` and ``id-only``.

    Before the first window the model is a fresh bundle knowing the catalog; each window
    extends and fine-tunes it with :func:`learner.finetune.fine_tune`, as a training job does.
    """

    name = "rehearsal"
    use_text = True
    rehearse = True

    def __init__(self, settings: BacktestSettings, context: Context):
        super().__init__(settings, context)
        s = settings
        self.model_config = dataclasses.replace(s.model, use_text=self.use_text)
        self.config = s.finetune if self.rehearse else dataclasses.replace(
            s.finetune, rehearsal_ratio=0.0, distillation_weight=0.0)
        self.memory: RehearsalMemory | None = make_memory(
            s.rehearsal_policy, s.rehearsal_capacity, s.seed, s.rehearsal_half_life_s) if self.rehearse else None
        self.bundle = self._fresh(None)
        self.trained = False

    def _fresh(self, events: pd.DataFrame | None) -> ModelBundle:
        c = self.context
        return ModelBundle.build(self.model_config, catalog=c.catalog, events=events,
                                 encoder=c.encoder if self.use_text else None, cache=c.cache, seed=self.settings.seed)

    def add_items(self, items: pd.DataFrame) -> None:
        c = self.context
        self.bundle.extend(catalog=items, encoder=c.encoder if self.use_text else None, cache=c.cache)

    def fit_window(self, window: pd.DataFrame, past: list[pd.DataFrame]) -> dict:
        rehearsal = None
        if self.memory is not None:
            self.memory.update(to_table(window))  # what sealing does, before the training job reads it
            kept = codec.to_frame(self.memory.events)
            rehearsal = kept[~kept["event_id"].isin(set(window["event_id"]))]
        c = self.context
        self.bundle, epochs = fine_tune(
            self.bundle, window, history=_frames(past[-self.settings.history_windows:]), rehearsal=rehearsal,
            previous=self.bundle if self.trained else None, catalog=c.catalog,
            encoder=c.encoder if self.use_text else None, cache=c.cache, config=self.config, device=c.device)
        self.trained = True
        facts = {"epochs": len(epochs), "rehearsal_events": 0 if rehearsal is None else len(rehearsal)}
        if self.bundle.info.get("text_tuned_jobs_ago") == 0:
            facts["text_tuning"] = self.bundle.info["text_tuning"]
        return facts

    def scorer(self) -> Scorer:
        return BundleScorer(self.bundle, self.context.device, self.settings.serving_precision)


class Naive(FineTuned):
    name = "naive"
    rehearse = False


class IdOnly(FineTuned):
    name = "id-only"
    use_text = False


class Joint(FineTuned):
    """A fresh model trained on every event so far, at every window (the upper-bound baseline)."""

    name = "joint"
    rehearse = False

    def fit_window(self, window: pd.DataFrame, past: list[pd.DataFrame]) -> dict:
        everything = _frames([*past, window])
        c = self.context
        self.bundle, epochs = fine_tune(self._fresh(everything), everything, catalog=c.catalog, encoder=c.encoder,
                                        cache=c.cache, config=self.config, device=c.device)
        return {"epochs": len(epochs), "trained_events": len(everything)}


class _KnownIds(Strategy):
    """Baselines keep their own vocabulary: the catalog's items, then every id of the events seen."""

    def __init__(self, settings: BacktestSettings, context: Context):
        super().__init__(settings, context)
        self.vocab = Vocabulary()
        if context.catalog is not None:
            self.vocab.items.add(context.catalog["item_id"].astype(str))

    def add_items(self, items: pd.DataFrame) -> None:
        self.vocab.items.add(items["item_id"].astype(str))

    def _add(self, window: pd.DataFrame) -> None:
        self.vocab.add_events(window["user_id"], window["item_id"], window["storefront"])


class RecentPopularity(_KnownIds):
    """Everyone gets the items most frequent in the last ``popularity_windows`` windows."""

    name = "popularity"

    def __init__(self, settings: BacktestSettings, context: Context):
        super().__init__(settings, context)
        self.recent = events_frame(None)

    def fit_window(self, window: pd.DataFrame, past: list[pd.DataFrame]) -> dict:
        self._add(window)
        self.recent = _frames([*past, window][-self.settings.popularity_windows:])
        return {}

    def scorer(self) -> Scorer:
        return Popularity(self.vocab, self.recent, self.settings.model.max_len)


class MatrixScorer:
    """Biased matrix factorisation as a scorer: ``mean + user bias + item bias + user . item``.

    Rows of ``user_*`` follow ``vocab.users`` and rows of ``item_*`` follow ``vocab.items``;
    unknown users score as the zero user.

    >>> vocab = Vocabulary()
    >>> vocab.add_events(["u"], ["a", "b"], ["s"])
    >>> scorer = MatrixScorer(vocab, 0.5, np.zeros(3), np.array([0, 0, 0.0, 1.0]),
    ...                       np.ones((3, 1)), np.array([[0.0], [0.0], [2.0], [0.0]]))
    >>> batch = SequenceBatch(*(torch.zeros(1, 1, dtype=torch.long),) * 3, users=torch.tensor([2]))
    >>> scorer.scores(batch)[0, 2:].tolist()
    [2.5, 1.5]
    """

    def __init__(self, vocab: Vocabulary, mean: float, user_bias: np.ndarray, item_bias: np.ndarray,
                 user_latent: np.ndarray, item_latent: np.ndarray, max_len: int = 50):
        self.vocab = vocab
        self.max_len = max_len
        self.mean = float(mean)
        self.user_bias = torch.as_tensor(user_bias, dtype=torch.float32)
        self.item_bias = torch.as_tensor(item_bias, dtype=torch.float32)
        self.user_latent = torch.as_tensor(user_latent, dtype=torch.float32)
        self.item_latent = torch.as_tensor(item_latent, dtype=torch.float32)

    def scores(self, inputs: SequenceBatch) -> torch.Tensor:
        users = inputs.users
        return (self.mean + self.user_bias[users, None] + self.item_bias[None, :]
                + self.user_latent[users] @ self.item_latent.T)


class RiverMF(_KnownIds):
    """``river.reco.BiasedMF`` (squared loss, SGD) learned online on implicit feedback.

    Every event, in time order, is one ``learn_one(user, item, 1)`` followed by
    ``mf_negatives`` calls ``learn_one(user, other, 0)`` with items drawn uniformly from the
    known ones (seeded).
    """

    name = "river-mf"

    def __init__(self, settings: BacktestSettings, context: Context):
        super().__init__(settings, context)
        from river import optim, reco

        s = settings
        self.model = reco.BiasedMF(
            n_factors=s.mf_factors, bias_optimizer=optim.SGD(s.mf_lr), latent_optimizer=optim.SGD(s.mf_lr),
            l2_bias=s.mf_l2, l2_latent=s.mf_l2, seed=s.seed,
            latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=s.seed))
        self.rng = np.random.default_rng(s.seed)

    def fit_window(self, window: pd.DataFrame, past: list[pd.DataFrame]) -> dict:
        self._add(window)
        items = self.vocab.items.keys()
        negatives = self.rng.integers(0, len(items), size=(len(window), self.settings.mf_negatives))
        learn = self.model.learn_one
        ordered = window.sort_values(["ts", "event_id"], kind="stable")
        for (user, item), others in zip(ordered[["user_id", "item_id"]].itertuples(index=False), negatives):
            learn(user, item, 1.0)
            for other in others:
                if items[other] != item:
                    learn(user, items[other], 0.0)
        return {}

    def scorer(self) -> Scorer:
        m, k = self.model, self.settings.mf_factors

        def table(keys: list[str], biases: dict, latents: dict) -> tuple[np.ndarray, np.ndarray]:
            bias, latent = np.zeros(len(keys) + 2), np.zeros((len(keys) + 2, k))
            for row, key in enumerate(keys, start=2):
                bias[row] = biases.get(key, 0.0)
                if key in latents:
                    latent[row] = latents[key]
            return bias, latent

        user_bias, user_latent = table(self.vocab.users.keys(), m.u_biases, m.u_latents)
        item_bias, item_latent = table(self.vocab.items.keys(), m.i_biases, m.i_latents)
        return MatrixScorer(self.vocab, m.global_mean.get(), user_bias, item_bias, user_latent, item_latent,
                            self.settings.model.max_len)


class TextScorer:
    """Content only: scores are cosines between items' text vectors and the mean text vector of
    each history's ``recent`` newest items (items without text have a zero vector).

    >>> vocab = Vocabulary()
    >>> vocab.add_events(["u"], ["a", "b", "c"], ["s"])
    >>> texts = torch.tensor([[0.0, 0], [0, 0], [1, 0], [0.6, 0.8], [0, 1]])
    >>> batch = SequenceBatch(torch.tensor([[0, 2]]), torch.ones(1, 2, dtype=torch.long),
    ...                       torch.ones(1, 2, dtype=torch.long), users=torch.tensor([2]))
    >>> TextScorer(vocab, texts, recent=10).scores(batch)[0, 2:].tolist()
    [1.0, 0.6000000238418579, 0.0]
    """

    def __init__(self, vocab: Vocabulary, item_text: torch.Tensor, recent: int = 10, max_len: int = 50):
        self.vocab, self.item_text, self.recent, self.max_len = vocab, item_text, recent, max_len

    def scores(self, inputs: SequenceBatch) -> torch.Tensor:
        items = inputs.items[:, -self.recent:]
        counts = (items > 0).sum(1, keepdim=True).clamp(min=1)
        profile = self.item_text[items].sum(1) / counts
        return profile @ self.item_text.T


class TextKnn(_KnownIds):
    """Content-only peer baseline for cold items: :class:`TextScorer` over MiniLM vectors."""

    name = "text-knn"

    def fit_window(self, window: pd.DataFrame, past: list[pd.DataFrame]) -> dict:
        self._add(window)
        return {}

    def scorer(self) -> Scorer:
        c = self.context
        item_text = torch.zeros(len(self.vocab.items), TEXT_DIM)
        texts = catalog_texts(c.catalog) if c.catalog is not None else {}
        if texts:
            vectors = embed_texts(list(texts.values()), c.encoder, c.cache)
            item_text[torch.from_numpy(self.vocab.items.index(texts))] = torch.from_numpy(vectors)
        return TextScorer(self.vocab, item_text, self.settings.knn_recent, self.settings.model.max_len)


_CLASSES: dict[str, type[Strategy]] = {c.name: c for c in (FineTuned, Naive, Joint, RecentPopularity, RiverMF, IdOnly,
                                                           TextKnn)}


def make_strategy(name: str, settings: BacktestSettings, context: Context) -> Strategy:
    """The strategy called ``name`` (one of :data:`STRATEGIES`)."""
    if name not in _CLASSES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return _CLASSES[name](settings, context)


def to_table(events: pd.DataFrame) -> pa.Table:
    """A learner events frame as the replay stage's Arrow table (:data:`replay.codec.EVENT_SCHEMA`)."""
    frame = events.reindex(columns=codec.EVENT_SCHEMA.names)
    return pa.Table.from_pandas(frame, schema=codec.EVENT_SCHEMA, preserve_index=False)


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


def _nan_to_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


def transfer(R: list[list[float | None]]) -> tuple[float, float]:
    """(forgetting, backward transfer) of a lower-triangular matrix ``R[i][j]`` (metric on
    window j after training through window i); NaN with fewer than two windows.

    >>> transfer([[0.5, None], [0.3, 0.6]])
    (0.2, -0.2)
    >>> transfer([[0.5, None, None], [0.4, 0.6, None], [0.45, 0.3, 0.7]])
    (0.175, -0.175)
    """
    last = len(R) - 1
    if last < 1:
        return math.nan, math.nan
    forgetting = [max(R[i][j] for i in range(j, last)) - R[last][j] for j in range(last)]
    bwt = [R[last][j] - R[j][j] for j in range(last)]
    return round(float(np.mean(forgetting)), 12), round(float(np.mean(bwt)), 12)


def run_backtest(events: pd.DataFrame, catalog: pd.DataFrame | None, strategy: str, settings: BacktestSettings,
                 *, cache: TextEmbeddingCache | None = None, device: Device | None = None,
                 progress: Callable[[str], None] = lambda line: None) -> dict:
    """Backtest ``strategy`` on ``events`` (a time-sorted learner events frame, e.g. from
    :func:`learner.eventlog.load_events`) with ``catalog`` (or None); see the module docstring.

    ``cache`` holds item text embeddings (filled here for text strategies); ``progress``
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
    embed_seconds, encoder = 0.0, None
    if catalog is not None:
        first_window: dict[str, int] = {}
        for j, window in enumerate(windows):
            for item in window["item_id"].unique():
                first_window.setdefault(item, j)
        joins = catalog["item_id"].map(first_window).fillna(0).astype(int).to_numpy()
        if strategy in TEXT_STRATEGIES and len(catalog):
            encoder = TextEncoder(device)
            started = time.perf_counter()
            embed_texts(list(catalog_texts(catalog).values()), encoder, cache)
            embed_seconds = time.perf_counter() - started
    context = Context(catalog[joins == 0] if catalog is not None else None, cache, encoder, device)
    model = make_strategy(strategy, settings, context)

    R: list[list[float | None]] = [[None] * n for _ in range(n)]
    rows, seen_items = [], set()
    scorer = model.scorer()
    for j, window in enumerate(windows):
        start, end = bounds[j]
        if catalog is not None and j and (joins == j).any():
            context.catalog = catalog[joins <= j]
            model.add_items(catalog[joins == j])
            scorer = model.scorer()
        unseen = set(context.catalog["item_id"].astype(str)) - seen_items if context.catalog is not None else set()
        prequential = evaluate(scorer, window, events.iloc[:start], ks=(k,), new_items=unseen)
        is_cold = ~window["item_id"].isin(seen_items).to_numpy()
        cold = (evaluate(scorer, window[is_cold], events.iloc[:end], ks=(k,)) if is_cold.any()
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
                     "train_seconds": round(train_seconds, 3),
                     "eval_seconds": round(time.perf_counter() - started, 3), **facts})
        progress(f"{strategy} window {j + 1}/{n}: {len(window):,} events, {metric} {prequential[metric]:.4f}, "
                 f"cold {cold[metric]:.4f} ({int(is_cold.sum()):,} events), trained in {train_seconds:.1f}s")

    scored = rows[1:]
    forgetting, bwt = transfer(R)
    mean = {name: _mean([r[name] for r in scored])
            for name in (metric, f"ndcg@{k}", f"cold_recall@{k}", f"new_item_share@{k}", "train_seconds")}
    known = set(catalog["item_id"]) if catalog is not None else set()
    result = {
        "strategy": strategy, "k": k, "windows": rows, "mean": mean,
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
    return _nan_to_none(result)


class FileTextCache(dict):
    """A text embedding cache kept in a safetensors file between runs (no pickle).

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "texts.safetensors"
    >>> cache = FileTextCache(path)
    >>> cache["ab" * 32] = np.ones(TEXT_DIM, np.float32)
    >>> cache.save()
    >>> len(FileTextCache(path)), float(FileTextCache(path)["ab" * 32].sum())
    (1, 384.0)
    """

    def __init__(self, path: str | Path):
        super().__init__()
        from safetensors.numpy import load_file

        self.path = Path(path)
        if self.path.exists():
            from safetensors import safe_open

            with safe_open(str(self.path), framework="numpy") as f:
                keys = json.loads(f.metadata()["keys"])
            vectors = load_file(str(self.path))["vectors"]
            self.update(zip(keys, vectors))
        self._saved = len(self)

    def save(self) -> None:
        """Write the file if anything was added since it was read (a whole file at once: runs
        sharing it never read half of one)."""
        if len(self) == self._saved:
            return
        from safetensors.numpy import save_file

        keys = list(self)
        vectors = np.stack([np.asarray(self[k], np.float32) for k in keys]) if keys else np.zeros((0, TEXT_DIM),
                                                                                                   np.float32)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        save_file({"vectors": vectors}, str(partial), metadata={"keys": json.dumps(keys)})
        os.replace(partial, self.path)
        self._saved = len(self)

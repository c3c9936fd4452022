"""The drift metrics of one training job: reads what :mod:`drift` compares with from the store.

* :meth:`WindowDrift.before_training` -- input drift of the window against the previous
  window and each storefront's first ``STREAMREC_DRIFT_REFERENCE_WINDOWS`` windows, and the
  prequential quality of the serving version (popularity before the first) on the whole
  window, judged by the detectors over the stored series;
* :meth:`WindowDrift.after_judging` -- model drift of the candidate against the serving
  version it would replace, and the candidate's quality on each storefront's probe (a
  ``STREAMREC_SEED``-seeded sample of at most ``STREAMREC_DRIFT_PROBE_EVENTS`` events of the
  held-out slice of the storefront's first window: fixed by reference, re-drawn identically
  from the stored window whenever it is needed);
* :meth:`WindowDrift.write` -- stores them in the transaction that stores the version.

Measuring drift never fails a training job: an error is logged and the window keeps the
metrics measured before it.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import torch
from sqlalchemy import Connection, Engine

from drift.detectors import REPLAY_WINDOWS
from drift.metrics import CONCEPT, MetricValue
from drift.model_shift import item_vector_shift, score_psi
from drift.quality import quality, sample_events
from drift.window import Context, forgetting, model_drift, window_drift
from learner.bundle import ModelBundle
from learner.evaluate import BundleScorer, Popularity
from learner.gate import split_holdout
from replay import codec
from runtime.config import Config
from store import drift_metrics as stored
from store.replay import ReplayStore

log = logging.getLogger(__name__)

SCORE_USERS = 300  # users per storefront whose scores make the score distribution
SERIES_METRICS = [*CONCEPT, "new_item_share", "new_user_share"]  # the metrics judged against their own past
SERIES_WINDOWS = 4 * REPLAY_WINDOWS  # stored values read back: those of the newest windows (detectors replay 30)


class WindowDrift:
    """Collects the drift metrics of window ``window_id`` during its training job."""

    def __init__(self, engine: Engine, config: Config, window_id: int):
        self.engine = engine
        self.config = config
        self.window_id = window_id
        self.values: list[MetricValue] = []
        self._frames: dict[int, pd.DataFrame] = {}
        self._windows: list[dict] | None = None

    def before_training(self, data, device) -> None:
        """Input drift and prequential quality; ``data`` is the job's ``training.job.WindowData``."""
        self._measure("input and concept drift", self._before, data, device)

    def after_judging(self, data, candidate: ModelBundle, device) -> None:
        """Model drift and probe quality of the judged ``candidate``."""
        self._measure("model drift and forgetting", self._after, data, candidate, device)

    def _measure(self, what: str, step, *args) -> None:
        started = time.perf_counter()
        try:
            values = step(*args)
        except Exception:
            log.exception("window %d: %s could not be measured", self.window_id, what)
            return
        self.values += values
        alerts = sorted({f"{v.metric}[{v.storefront}]" for v in values if v.alert})
        log.info("window %d: %s, %d values in %.1fs; alerts: %s", self.window_id, what, len(values),
                 time.perf_counter() - started, ", ".join(alerts) or "none")

    def write(self, conn: Connection, version_id: int | None) -> None:
        """Store the metrics (``store.registry.finish_run`` calls this in its transaction)."""
        stored.write_metrics(conn, self.window_id, version_id, [v.row() for v in self.values])

    # -- what earlier windows left behind

    def _earlier(self) -> list[dict]:
        """Sealed windows before this one (without events), oldest first."""
        if self._windows is None:
            self._windows = sorted((w for w in ReplayStore(self.engine).list_windows() if w["id"] < self.window_id),
                                   key=lambda w: w["id"])
        return self._windows

    def _frame(self, window_id: int) -> pd.DataFrame:
        if window_id not in self._frames:
            self._frames[window_id] = codec.to_frame(ReplayStore(self.engine).load_window(window_id))
        return self._frames[window_id]

    def _context(self, data, storefronts: list[str]) -> Context:
        earlier = self._earlier()
        since = earlier[-SERIES_WINDOWS]["id"] if len(earlier) >= SERIES_WINDOWS else 0
        context = Context(series=stored.series(self.engine, storefronts, self.window_id, SERIES_METRICS, since))
        if earlier:
            context.previous, context.previous_label = self._frame(earlier[-1]["id"]), f"window {earlier[-1]['id']}"
        for storefront in storefronts:
            ids = [w["id"] for w in earlier if storefront in w["counts"]][:self.config.drift_reference_windows]
            if ids:
                context.reference[storefront] = (pd.concat([self._frame(i) for i in ids], ignore_index=True),
                                                 _label(ids))
        for frame in (data.history, data.rehearsal):
            context.seen_items.update(frame["item_id"].unique())
            context.seen_users.update(frame["user_id"].unique())
        return context

    # -- the two steps

    def _before(self, data, device) -> list[MetricValue]:
        window = pd.concat([data.train_part, data.held_out], ignore_index=True)
        storefronts = sorted(window["storefront"].unique())
        context = self._context(data, storefronts)
        if data.serving is not None:
            serving, name = BundleScorer(data.serving[1], device), f"version {data.serving[0]['id']}"
        elif len(data.history):
            serving, name = Popularity.of(data.history, also=window), "popularity"
        else:
            serving, name = None, ""
        return window_drift(window, context, catalog=data.catalog, serving=serving, serving_name=name,
                            history=data.history, quality_events=self.config.drift_quality_events,
                            seed=self.config.seed)

    def _after(self, data, candidate: ModelBundle, device) -> list[MetricValue]:
        window = pd.concat([data.train_part, data.held_out], ignore_index=True)
        values: list[MetricValue] = []
        for storefront in sorted(window["storefront"].unique()):
            mine = window[window["storefront"] == storefront]
            if data.serving is not None:
                items = list(dict.fromkeys([*data.catalog.loc[data.catalog["storefront"] == storefront, "item_id"],
                                            *mine["item_id"]]))
                old = data.serving[1]
                values += model_drift(storefront, vector_shift(old, candidate, items),
                                      self._score_shift(data, old, candidate, mine, items, device),
                                      f"version {data.serving[0]['id']}")
            first = next((w["id"] for w in self._earlier() if storefront in w["counts"]), self.window_id)
            if first == self.window_id:
                trained, held_out = data.train_part, data.held_out
            else:
                trained, held_out = split_holdout(self._frame(first), self.config.gate_holdout)
            probe = sample_events(held_out[held_out["storefront"] == storefront], self.config.drift_probe_events,
                                  self.config.seed)
            measured = quality(BundleScorer(candidate, device), probe, trained)
            earliest = stored.first_row(self.engine, "probe_recall@20", storefront)
            reference = f"probe: {len(probe)} held-out events of window {first}, seed {self.config.seed}"
            for value in forgetting(storefront, measured, earliest["value"] if earliest else None, reference):
                if value.metric == "backward_transfer":
                    value.reference = (f"probe recall at window {earliest['window_id']}" if earliest
                                       else "first measurement of the probe")
                values.append(value)
        return values

    def _score_shift(self, data, old: ModelBundle, new: ModelBundle, mine: pd.DataFrame, items: list[str],
                     device) -> tuple[float, int]:
        events = pd.concat([data.history, data.train_part, data.held_out], ignore_index=True)
        return score_shift(old, new, events, sorted(mine["user_id"].unique()), items, self.config.seed, device)


def vector_shift(old: ModelBundle, new: ModelBundle, items: list[str]) -> tuple[float, int]:
    """:func:`drift.model_shift.item_vector_shift` of two versions over ``items``."""
    return item_vector_shift(old.vocab.items.keys(), old.item_vectors()[2:].detach().numpy(),
                             new.vocab.items.keys(), new.item_vectors()[2:].detach().numpy(), items)


def score_shift(old: ModelBundle, new: ModelBundle, events: pd.DataFrame, users: list[str], items: list[str],
                seed: int, device=None) -> tuple[float, int]:
    """(:func:`drift.model_shift.score_psi`, scores compared) of two versions: the scores of up to
    ``SCORE_USERS`` of ``users`` (seeded sample; their state after ``events``) for the ``items``
    both versions know."""
    if len(users) > SCORE_USERS:
        users = sorted(np.random.default_rng(seed).choice(users, SCORE_USERS, replace=False))
    events = events[events["user_id"].isin(set(users))]
    shared = [i for i in items if i in old.vocab.items and i in new.vocab.items]
    if not len(events) or not shared:
        return float("nan"), 0
    scores = []
    for bundle in (old, new):
        _, states = bundle.user_vectors(events, device)
        vectors = bundle.item_vectors()[torch.from_numpy(bundle.vocab.items.index(shared))]
        scores.append((states @ vectors.T).detach().numpy())
    return score_psi(scores[0], scores[1]), int(scores[0].size)


def _label(window_ids: list[int]) -> str:
    if len(window_ids) == 1:
        return f"window {window_ids[0]}"
    contiguous = window_ids == list(range(window_ids[0], window_ids[-1] + 1))
    return f"windows {window_ids[0]}-{window_ids[-1]}" if contiguous else "windows " + ",".join(map(str, window_ids))

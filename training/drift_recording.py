"""The drift metrics of one training job: reads what :mod:`drift` compares with from the store.

* :meth:`WindowDrift.before_training` -- input drift of the window against the previous
  window and each storefront's first ``STREAMREC_DRIFT_REFERENCE_WINDOWS`` windows (which also
  calibrate the thresholds), the serving version's score drift against its scores on the first
  window it served, and its prequential quality (popularity before the first version) on the
  whole window, judged by the detectors over the stored series;
* :meth:`WindowDrift.after_judging` -- model drift of the candidate against the serving
  version it would replace (item vectors; top-20 overlap on a fixed probe of each storefront's
  users: a seeded sample of the users of its first window), and the candidate's quality on
  each storefront's probe (a ``STREAMREC_SEED``-seeded sample of at most
  ``STREAMREC_DRIFT_PROBE_EVENTS`` events of the held-out slice of the storefront's first
  window: fixed by reference, re-drawn identically from the stored window whenever it is
  needed);
* :meth:`WindowDrift.write` -- stores them in the transaction that stores the version.

A breach alerts only when the previous value of its metric breached too (for per-window
statistics, :func:`drift.metrics.confirm`): the previous values are the stored ones, or those of
an earlier window of the same job (:meth:`WindowDrift.for_job`), which are not stored yet.
Values on fewer than ``STREAMREC_DRIFT_ALERT_MIN_EVENTS`` events never breach.

A job's windows share the stored windows they read and the calibration of each reference (the
first windows of a storefront, the same for every window of a job once they are sealed), so
a coalesced job calibrates each reference once.

Measuring drift never fails a training job: an error is logged and the window keeps the
metrics measured before it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import pandas as pd
from sqlalchemy import Connection, Engine

from drift.detectors import REPLAY_WINDOWS
from drift.metrics import CONCEPT, MetricValue, confirm
from drift.model_shift import item_vector_shift
from drift.quality import quality, sample_events
from drift.scores import PROBE_USERS, SCORE_USERS, ScoreReference, sample_users, topk_overlap, user_item_scores
from drift.window import Context, forgetting, model_drift, window_drift
from learner.bundle import ModelBundle
from learner.evaluate import BundleScorer, Popularity
from learner.gate import split_holdout
from replay import codec
from runtime.config import Config
from store import drift_metrics as stored
from store.replay import ReplayStore

log = logging.getLogger(__name__)

SERIES_METRICS = [*CONCEPT, "new_item_share", "new_user_share"]  # the metrics judged against their own past
SERIES_WINDOWS = 4 * REPLAY_WINDOWS  # stored values read back: those of the newest windows (detectors replay 30)
SCORE_METRIC = "serving_score_psi"


class WindowDrift:
    """Collects the drift metrics of window ``window_id`` during its training job; ``earlier``: the
    :class:`WindowDrift` of the job's windows before it."""

    def __init__(self, engine: Engine, config: Config, window_id: int, earlier: Sequence[WindowDrift] = ()):
        self.engine = engine
        self.config = config
        self.window_id = window_id
        self.earlier = list(earlier)
        self.values: list[MetricValue] = []
        self.context: Context | None = None
        # shared by a job's windows (module docstring)
        self._frames: dict[int, pd.DataFrame] = self.earlier[0]._frames if self.earlier else {}
        self._calibrations: dict = self.earlier[0]._calibrations if self.earlier else {}
        self._windows: list[dict] | None = None

    @classmethod
    def for_job(cls, engine: Engine, config: Config, window_ids: Sequence[int]) -> dict[int, WindowDrift]:
        """One per window of a job (oldest first), each knowing the values of the windows before it."""
        drifts: dict[int, WindowDrift] = {}
        for window_id in window_ids:
            drifts[window_id] = cls(engine, config, window_id, list(drifts.values()))
        return drifts

    def before_training(self, data, device) -> None:
        """Input drift, score drift and prequential quality; ``data`` is the job's ``training.job.WindowData``."""
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
        breaches = sorted({f"{v.metric}[{v.storefront}]" for v in values if v.breach and not v.alert})
        alerts = sorted({f"{v.metric}[{v.storefront}]" for v in values if v.alert})
        log.info("window %d: %s, %d values in %.1fs; alerts: %s; first breaches: %s", self.window_id, what,
                 len(values), time.perf_counter() - started, ", ".join(alerts) or "none",
                 ", ".join(breaches) or "none")

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

    def _first_window(self, storefront: str) -> int:
        return next((w["id"] for w in self._earlier() if storefront in w["counts"]), self.window_id)

    def _context(self, data, storefronts: list[str]) -> Context:
        earlier = self._earlier()
        since = earlier[-SERIES_WINDOWS]["id"] if len(earlier) >= SERIES_WINDOWS else 0
        context = Context(series=stored.series(self.engine, storefronts, self.window_id, SERIES_METRICS, since),
                          last_breach=stored.last_breaches(self.engine, storefronts, self.window_id, since),
                          calibrations=self._calibrations)
        for sibling in self.earlier:  # the job's earlier windows: measured, not stored yet
            context.remember([v for v in sibling.values if v.storefront in storefronts])
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
        if data.serving is not None:
            for storefront in storefronts:
                reference = self._score_reference(data.serving[0], storefront)
                if reference is not None:
                    context.score_references[storefront] = reference
        return context

    def _score_reference(self, version: dict, storefront: str) -> ScoreReference | None:
        """The serving version's score reference in ``storefront``: kept by the value of the first window it
        served (stored, or measured earlier in this job)."""
        name = f"version {version['id']}"
        for sibling in self.earlier:
            for v in sibling.values:
                if v.metric == SCORE_METRIC and v.storefront == storefront and v.detail.get("version") == name:
                    return ScoreReference.from_detail(v.detail)
        trained_on = max(version.get("windows") or [0])
        for row in stored.details(self.engine, SCORE_METRIC, storefront, trained_on, self.window_id):
            if (row["detail"] or {}).get("version") == name and "edges" in row["detail"]:
                return ScoreReference.from_detail(row["detail"])
        return None

    # -- the two steps

    def _before(self, data, device) -> list[MetricValue]:
        window = pd.concat([data.train_part, data.held_out], ignore_index=True)
        storefronts = sorted(window["storefront"].unique())
        self.context = context = self._context(data, storefronts)
        score_users = 0
        if data.serving is not None:
            serving, name = BundleScorer(data.serving[1], device), f"version {data.serving[0]['id']}"
            score_users = SCORE_USERS
        elif len(data.history):
            serving, name = Popularity.of(data.history, also=window), "popularity"
        else:
            serving, name = None, ""
        return window_drift(window, context, catalog=data.catalog, serving=serving, serving_name=name,
                            history=data.history, quality_events=self.config.drift_quality_events,
                            seed=self.config.seed, min_events=self.config.drift_alert_min_events,
                            score_users=score_users, window_label=f"window {self.window_id}")

    def _after(self, data, candidate: ModelBundle, device) -> list[MetricValue]:
        window = pd.concat([data.train_part, data.held_out], ignore_index=True)
        storefronts = sorted(window["storefront"].unique())
        context = self.context or self._context(data, storefronts)
        values: list[MetricValue] = []
        for storefront in storefronts:
            mine = window[window["storefront"] == storefront]
            first = self._first_window(storefront)
            first_events = window if first == self.window_id else self._frame(first)
            if data.serving is not None:
                items = list(dict.fromkeys([*data.catalog.loc[data.catalog["storefront"] == storefront, "item_id"],
                                            *mine["item_id"]]))
                old = data.serving[1]
                probe_users = sample_users(first_events.loc[first_events["storefront"] == storefront, "user_id"],
                                           PROBE_USERS, self.config.seed)
                events = pd.concat([first_events, data.history, window], ignore_index=True).drop_duplicates(
                    "event_id")
                values += model_drift(storefront, vector_shift(old, candidate, items),
                                      topk_shift(old, candidate, events, probe_users, items, device),
                                      f"version {data.serving[0]['id']}")
            if first == self.window_id:
                trained, held_out = data.train_part, data.held_out
            else:
                trained, held_out = split_holdout(self._frame(first), self.config.gate_holdout)
            probe = sample_events(held_out[held_out["storefront"] == storefront], self.config.drift_probe_events,
                                  self.config.seed)
            measured = quality(BundleScorer(candidate, device), probe, trained)
            earliest = stored.first_row(self.engine, "probe_recall@20", storefront)
            reference = f"probe: {len(probe)} held-out events of window {first}, seed {self.config.seed}"
            for value in forgetting(storefront, measured, earliest["value"] if earliest else None, reference,
                                    self.config.drift_alert_min_events):
                if value.metric == "backward_transfer":
                    value.reference = (f"probe recall at window {earliest['window_id']}" if earliest
                                       else "first measurement of the probe")
                values.append(value)
        confirm(values, context.last_breach)
        return values


def vector_shift(old: ModelBundle, new: ModelBundle, items: list[str]) -> tuple[float, int]:
    """:func:`drift.model_shift.item_vector_shift` of two versions over ``items``."""
    return item_vector_shift(old.vocab.items.keys(), old.item_vectors()[2:].detach().numpy(),
                             new.vocab.items.keys(), new.item_vectors()[2:].detach().numpy(), items)


def topk_shift(old: ModelBundle, new: ModelBundle, events: pd.DataFrame, users: list[str], items: list[str],
               device=None) -> tuple[float, int]:
    """(:func:`drift.scores.topk_overlap` of two versions, users compared): the top 20 of each of ``users``
    (state after ``events``; items they interacted with excluded) among the ``items`` both versions know."""
    shared = [i for i in items if i in old.vocab.items and i in new.vocab.items]
    rows = []
    for bundle in (old, new):
        ids, _, scores = user_item_scores(BundleScorer(bundle, device), events, users, shared, exclude_seen=True)
        rows.append((ids, scores))
    (old_ids, old_scores), (new_ids, new_scores) = rows
    if not len(old_ids) or old_ids != new_ids:
        return float("nan"), 0
    return topk_overlap(old_scores, new_scores), len(old_ids)


def _label(window_ids: list[int]) -> str:
    if len(window_ids) == 1:
        return f"window {window_ids[0]}"
    contiguous = window_ids == list(range(window_ids[0], window_ids[-1] + 1))
    return f"windows {window_ids[0]}-{window_ids[-1]}" if contiguous else "windows " + ",".join(map(str, window_ids))

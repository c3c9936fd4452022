"""One training job: fine-tune the serving version on sealed windows, gate it, publish it.

A job is one or more consecutive sealed windows leased together (:mod:`training.loop`), so
that however fast windows seal, what waits is at most one job. It runs in a training
process, never in the worker's event loop. The steps, each reading from or writing to the store:

1. the windows' events, the ``STREAMREC_HISTORY_WINDOWS`` windows before them (users'
   history, context only), the rehearsal memory (minus the job's own events) and the catalog;
2. the newest ``STREAMREC_GATE_HOLDOUT`` share of the job's events is held out for the gate;
3. the serving version (checksum verified), or a fresh model when there is none, is
   extended with new ids and fine-tuned with rehearsal, distillation and early stopping for
   at most ``STREAMREC_TRAIN_EPOCHS`` (work bounded by its events, never by the clock);
4. the gate: candidate and baseline (the serving version, or popularity for the first model)
   are ranked on the held-out events with full ranking; the candidate is promoted unless it
   was judged on fewer than ``STREAMREC_GATE_MIN_EVENTS`` events, its Recall@20 is more
   than ``STREAMREC_GATE_TOLERANCE`` (relative) below the baseline's, or its coverage@20 more
   than ``STREAMREC_GATE_MAX_COVERAGE_DROP`` below the baseline's (:mod:`learner.gate`). Both
   are also measured beyond accuracy (coverage, diversity by the candidate's MiniLM text
   vectors, novelty and popularity against the events they are ranked with), all kept in the
   version's ``metrics``;
5. the version (safetensors weights, sha256, lineage, metrics), every window's drift metrics
   (:mod:`training.drift_recording`), the windows' training state (fenced by the lease) and
   the run's outcome are written in one transaction. With ``STREAMREC_ROLLOUT=canary`` a
   candidate the gate passed is not promoted there: it starts its canary against the serving
   version, or waits while another canary runs (:func:`store.experiments.place_candidate`),
   and the next job fine-tunes the newest such candidate instead of the serving version.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from learner.bundle import ModelBundle
from learner.checkpoint import dump_bundle
from learner.device import Device, pick_device
from learner.evaluate import BundleScorer, ItemVectors, Popularity, evaluate
from learner.finetune import fine_tune
from learner.gate import gate, split_holdout
from learner.text import TextEncoder
from replay import codec
from replay.frames import in_set
from runtime.config import Config
from runtime.learner_configs import config_for
from store.catalog import load_catalog
from store.db import make_engine
from store.experiments import place_candidate
from store.registry import StoredTextEmbeddings, finish_run, now_ms, start_run
from store.replay import ReplayStore
from store.training_queue import complete_job
from training.drift_recording import WindowDrift
from training.versions import load_candidate, load_newest, load_serving

log = logging.getLogger(__name__)

_encoder: TextEncoder | None = None  # loaded once per training process


def text_encoder() -> TextEncoder:
    global _encoder
    if _encoder is None:
        _encoder = TextEncoder(pick_device())
    return _encoder


@dataclass
class WindowData:
    """What a training job reads from the store for its windows."""

    window_ids: list[int]
    train_part: pd.DataFrame
    held_out: pd.DataFrame
    history: pd.DataFrame
    rehearsal: pd.DataFrame
    catalog: pd.DataFrame
    serving: tuple[dict, ModelBundle] | None
    base: tuple[dict, ModelBundle] | None  # the newest candidate (canary rollout), the serving version, the newest
    frames: dict[int, pd.DataFrame]  # each window's events

    @property
    def window_id(self) -> int:
        """The newest window of the job."""
        return self.window_ids[-1]

    @property
    def judged_with(self) -> pd.DataFrame:
        """History the held-out events are ranked with: earlier windows and the trained part."""
        return pd.concat([self.history, self.train_part], ignore_index=True)

    def one_window(self, window_id: int, share: float) -> WindowData:
        """The view of one window of the job that its drift metrics judge: the job's earlier
        windows join the history, and the window is split as the gate splits."""
        earlier = [self.frames[w] for w in self.window_ids if w < window_id]
        train_part, held_out = split_holdout(self.frames[window_id], share)
        return WindowData([window_id], train_part, held_out, pd.concat([self.history, *earlier], ignore_index=True),
                          self.rehearsal, self.catalog, self.serving, self.base, {window_id: self.frames[window_id]})


def read_job(engine: Engine, config: Config, window_ids: list[int]) -> WindowData:
    """The windows ``window_ids`` (oldest first) and everything their training job reads with them."""
    replay = ReplayStore(engine, new_memory=config.new_rehearsal_memory)
    frames = {w: codec.to_frame(replay.load_window(w)) for w in window_ids}
    job = pd.concat(list(frames.values()), ignore_index=True)
    earlier = sorted(w["id"] for w in replay.list_windows() if w["id"] < window_ids[0])[-config.history_windows:]
    memory = codec.to_frame(replay.memory().events)
    train_part, held_out = split_holdout(job, config.gate_holdout)
    serving = load_serving(engine)
    return WindowData(
        list(window_ids), train_part, held_out,
        history=codec.to_frame(codec.concat([replay.load_window(w) for w in earlier])),
        rehearsal=memory[~in_set(memory["event_id"], set(job["event_id"]))],
        catalog=load_catalog(engine), serving=serving, frames=frames,
        base=(config.rollout == "canary" and load_candidate(engine)) or serving or load_newest(engine))


def read_window(engine: Engine, config: Config, window_id: int) -> WindowData:
    """:func:`read_job` of one window."""
    return read_job(engine, config, [window_id])


def judge(data: WindowData, candidate: ModelBundle, config: Config, device) -> tuple[bool, str, dict]:
    """The gate's verdict on ``candidate`` for the held-out events of ``data``: (promote, reason, metrics)."""
    texts = ItemVectors.text_of(candidate)  # both lists' diversity by the same vectors

    def judged(scorer) -> dict:  # both on the same sample of at most STREAMREC_GATE_MAX_EVENTS events
        return evaluate(scorer, data.held_out, data.judged_with, max_events=config.gate_max_events, seed=config.seed,
                        beyond_accuracy=True, item_vectors=texts)

    candidate_metrics = judged(BundleScorer(candidate, device, config.serving_precision))
    if data.serving is not None:
        baseline_name = f"version {data.serving[0]['id']}"
        baseline_metrics = judged(BundleScorer(data.serving[1], device, config.serving_precision))
    else:
        baseline_name = "popularity"
        baseline_metrics = judged(Popularity(candidate.vocab, data.judged_with, candidate.model.config.max_len))
    promoted, reason = gate(candidate_metrics, baseline_metrics, config.gate_tolerance, baseline_name,
                            min_events=config.gate_min_events, max_coverage_drop=config.gate_max_coverage_drop)
    metrics = {"candidate": candidate_metrics, "baseline": baseline_metrics, "baseline_name": baseline_name,
               "held_out_events": len(data.held_out), "trained_events": len(data.train_part),
               "diversity_vectors": "text" if texts is not None else "model"}
    if "ids" in candidate.info:
        metrics["ids"] = candidate.info["ids"]
    if candidate.info.get("text_tuned_jobs_ago") == 0:  # this job tuned the text encoder: its timings
        metrics["text_tuning"] = candidate.info["text_tuning"]
    return promoted, reason, metrics


class PhaseClock:
    """Seconds spent in each phase of a job, added up by name.

    >>> clock = PhaseClock()
    >>> clock.lap("read"); clock.lap("drift"); clock.lap("drift")
    >>> sorted(clock.seconds)
    ['drift', 'read']
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + now - self._last, 3)
        self._last = now


def version_row(data: WindowData, candidate: ModelBundle, verdict: tuple[bool, str, dict], started: float,
                device) -> dict:
    """The ``model_versions`` row of a judged candidate, weights included."""
    promoted, reason, metrics = verdict
    weights, checksum = dump_bundle(candidate)
    created = now_ms()
    return {
        "parent_id": data.base[0]["id"] if data.base else None, "status": "promoted" if promoted else "rejected",
        "reason": reason, "windows": data.window_ids, "rehearsal_size": len(data.rehearsal), "metrics": metrics,
        "duration_s": round(time.perf_counter() - started, 3), "device": str(device.torch_device),
        "n_items": len(candidate.vocab.items), "n_users": len(candidate.vocab.users),
        "created_at": created, "promoted_at": created if promoted else None,
        "weights": weights, "sha256": checksum, "text_encoder": candidate.text_encoder_name,
    }


def train_job(engine: Engine, config: Config, window_ids: list[int],
              drifts: dict[int, WindowDrift] | None = None, device: Device | None = None) -> tuple[dict, list[dict]]:
    """Fine-tune, judge and describe a candidate for the windows: (model_versions row, epoch log).

    ``drifts`` (one per window) measure each window's input and concept drift before training,
    and the newest window's model drift and forgetting once the candidate is judged. ``device``:
    where it trains (default: CUDA when present).
    """
    started = time.perf_counter()
    device = device or pick_device()
    clock = PhaseClock()
    data = read_job(engine, config, window_ids)
    clock.lap("read")
    for window_id, drift in (drifts or {}).items():
        drift.before_training(data.one_window(window_id, config.gate_holdout), device)
    clock.lap("drift")
    model_config, finetune_config = config_for(config)
    cache = StoredTextEmbeddings(engine)
    base = data.base[1] if data.base else ModelBundle.build(
        model_config, catalog=data.catalog, events=data.train_part, encoder=text_encoder(), cache=cache,
        seed=config.seed)
    candidate, epoch_log = fine_tune(
        base, data.train_part, history=data.history, rehearsal=data.rehearsal,
        previous=data.serving[1] if data.serving else None, catalog=data.catalog, encoder=text_encoder(),
        cache=cache, config=finetune_config, device=device)
    try:
        cache.save()
    except (OperationalError, InterfaceError) as exc:  # a cache: the next job embeds these texts again
        log.warning("text embeddings not cached: %s", exc.orig or exc)
    clock.lap("train")
    verdict = judge(data, candidate, config, device)
    clock.lap("judge")
    log.info("windows %s: %s %s", _span(window_ids), "promoted" if verdict[0] else "rejected", verdict[1])
    if drifts:
        drifts[data.window_id].after_judging(data, candidate, device)
    clock.lap("drift")
    verdict[2]["job_seconds"] = clock.seconds
    return version_row(data, candidate, verdict, started, device), epoch_log


PUBLISH_RETRY_S = 900.0
"""How long a finished training job keeps retrying to publish while the store is unreachable."""


def retry_store(write, what: str, give_up_after_s: float = PUBLISH_RETRY_S):
    """``write()``, retried with backoff while the store is unreachable; each try is one transaction,
    so a failed one leaves nothing behind."""
    deadline, delay = time.monotonic() + give_up_after_s, 0.5
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: store unreachable, retrying in %.1fs (%s)", what, delay, exc.orig or exc)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


def run_job(engine: Engine, config: Config, window_ids: list[int], trainer_id: str,
            lease_holder: str | None = None, device: Device | None = None) -> dict:
    """Train and publish one job, recorded in ``training_runs`` whatever happens; returns its outcome.

    ``lease_holder`` fences the publication: it lands only if that trainer still holds the
    windows' lease (:class:`store.training_queue.LeaseLost` otherwise, and nothing is written).
    ``device``: where it trains (default: CUDA when present).
    """
    run_id = start_run(engine, window_ids, trainer_id)
    try:  # from the run's first moment: a trainer stopped while it reads still closes its run
        drifts = WindowDrift.for_job(engine, config, window_ids)
        version, epoch_log = train_job(engine, config, window_ids, drifts, device)
    except (KeyboardInterrupt, SystemExit):
        finish_run(engine, run_id, error="the trainer was stopped before it finished")
        raise
    except Exception as exc:
        log.exception("training on windows %s failed", _span(window_ids))
        error = f"{type(exc).__name__}: {exc}"
        retry_store(lambda: finish_run(engine, run_id, error=error),
                    f"recording the failed run of windows {_span(window_ids)}")
        raise

    canary = config.rollout == "canary" and version["status"] == "promoted"
    if canary:  # the gate passed it: a canary decides (store.experiments.place_candidate)
        version = {**version, "status": "canary", "promoted_at": None}

    def publish(conn, version_id):
        complete_job(conn, lease_holder, window_ids, version_id)
        if canary:
            version["status"] = place_candidate(conn, version_id, config.canary_share, trainer_id)
        for drift in drifts.values():
            drift.write(conn, version_id)

    version_id = retry_store(lambda: finish_run(engine, run_id, version, epoch_log, also=publish),
                             f"publishing the version of windows {_span(window_ids)}")
    return {"run_id": run_id, "version_id": version_id, "windows": window_ids, "status": version["status"],
            "reason": version["reason"], "duration_s": version["duration_s"],
            "trained_events": version["metrics"]["trained_events"]}


def run_training_job(database_url: str, env: dict[str, str], window_ids: int | list[int], worker: str) -> dict:
    """Train windows outside the lease queue (tests, benchmarks): one run as ``<worker>/train:<pid>``."""
    engine = make_engine(database_url)
    try:
        ids = [window_ids] if isinstance(window_ids, int) else list(window_ids)
        return run_job(engine, Config.from_env(env), ids, f"{worker}/train:{os.getpid()}")
    finally:
        engine.dispose()


def _span(window_ids: list[int]) -> str:
    return str(window_ids[0]) if len(window_ids) == 1 else f"{window_ids[0]}-{window_ids[-1]}"

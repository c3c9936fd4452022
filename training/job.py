"""One training job: fine-tune the serving version on a sealed window, gate it, publish it.

Runs in the training process (:mod:`learner.process`), never in the worker's event loop.
The steps, each reading from or writing to the store:

1. the window's events, the ``STREAMREC_HISTORY_WINDOWS`` windows before it (users' history,
   context only), the rehearsal memory (minus the window's own events) and the catalog;
2. the newest ``STREAMREC_GATE_HOLDOUT`` share of the window is held out for the gate;
3. the serving version (checksum verified), or a fresh model when there is none, is
   extended with new ids and fine-tuned with rehearsal, distillation and early stopping;
4. the gate: candidate and baseline (the serving version, or popularity for the first model)
   are ranked on the held-out events with full ranking; the candidate is promoted unless its
   Recall@20 is more than ``STREAMREC_GATE_TOLERANCE`` (relative) below the baseline's;
5. the version (safetensors weights, sha256, lineage, metrics), the window's drift metrics
   (:mod:`training.drift_recording`) and the run's outcome are written in one transaction.
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
from learner.device import pick_device
from learner.evaluate import BundleScorer, Popularity, evaluate
from learner.finetune import FineTuneConfig, fine_tune
from learner.gate import gate, split_holdout
from learner.model import ModelConfig
from learner.text import TextEncoder
from learner.trainer import TrainConfig
from replay import codec
from replay.memory import make_memory
from runtime.config import Config
from store.catalog import load_catalog
from store.registry import StoredTextEmbeddings, finish_run, now_ms, start_run
from store.replay import ReplayStore
from training.drift_recording import WindowDrift
from training.versions import load_newest, load_serving

log = logging.getLogger(__name__)

_encoder: TextEncoder | None = None  # loaded once per training process


def text_encoder() -> TextEncoder:
    global _encoder
    if _encoder is None:
        _encoder = TextEncoder(pick_device())
    return _encoder


def config_for(config: Config) -> tuple[ModelConfig, FineTuneConfig]:
    model = ModelConfig(dim=config.model_dim, max_len=config.max_history)
    train = TrainConfig(epochs=config.train_epochs, batch_size=config.train_batch_size, lr=config.learning_rate,
                        purchase_weight=config.purchase_weight, seed=config.seed)
    return model, FineTuneConfig(train=train, rehearsal_ratio=config.rehearsal_ratio,
                                 distillation_weight=config.distill_weight)


@dataclass
class WindowData:
    """What a training job reads from the store for one window."""

    window_id: int
    train_part: pd.DataFrame
    held_out: pd.DataFrame
    history: pd.DataFrame
    rehearsal: pd.DataFrame
    catalog: pd.DataFrame
    serving: tuple[dict, ModelBundle] | None
    base: tuple[dict, ModelBundle] | None  # the serving version, else the newest one trained

    @property
    def judged_with(self) -> pd.DataFrame:
        """History the held-out events are ranked with: earlier windows and the trained part."""
        return pd.concat([self.history, self.train_part], ignore_index=True)


def read_window(engine: Engine, config: Config, window_id: int) -> WindowData:
    replay = ReplayStore(engine, new_memory=lambda: make_memory(
        config.rehearsal_policy, config.rehearsal_capacity, config.seed, config.rehearsal_half_life_s))
    window = codec.to_frame(replay.load_window(window_id))
    earlier = sorted(w["id"] for w in replay.list_windows() if w["id"] < window_id)[-config.history_windows:]
    memory = codec.to_frame(replay.memory().events)
    train_part, held_out = split_holdout(window, config.gate_holdout)
    serving = load_serving(engine)
    return WindowData(
        window_id, train_part, held_out,
        history=codec.to_frame(codec.concat([replay.load_window(w) for w in earlier])),
        rehearsal=memory[~memory["event_id"].isin(set(window["event_id"]))],
        catalog=load_catalog(engine), serving=serving, base=serving or load_newest(engine))


def judge(data: WindowData, candidate: ModelBundle, config: Config, device) -> tuple[bool, str, dict]:
    """The gate's verdict on ``candidate`` for the held-out events of ``data``: (promote, reason, metrics)."""
    candidate_metrics = evaluate(BundleScorer(candidate, device), data.held_out, data.judged_with)
    if data.serving is not None:
        baseline_name = f"version {data.serving[0]['id']}"
        baseline_metrics = evaluate(BundleScorer(data.serving[1], device), data.held_out, data.judged_with)
    else:
        baseline_name = "popularity"
        baseline_metrics = evaluate(Popularity(candidate.vocab, data.judged_with, candidate.model.config.max_len),
                                    data.held_out, data.judged_with)
    promoted, reason = gate(candidate_metrics, baseline_metrics, config.gate_tolerance, baseline_name)
    return promoted, reason, {"candidate": candidate_metrics, "baseline": baseline_metrics,
                              "baseline_name": baseline_name, "held_out_events": len(data.held_out),
                              "trained_events": len(data.train_part)}


def version_row(data: WindowData, candidate: ModelBundle, verdict: tuple[bool, str, dict], started: float,
                device) -> dict:
    """The ``model_versions`` row of a judged candidate, weights included."""
    promoted, reason, metrics = verdict
    weights, checksum = dump_bundle(candidate)
    created = now_ms()
    return {
        "parent_id": data.base[0]["id"] if data.base else None, "status": "promoted" if promoted else "rejected",
        "reason": reason, "windows": [data.window_id], "rehearsal_size": len(data.rehearsal), "metrics": metrics,
        "duration_s": round(time.perf_counter() - started, 3), "device": str(device.torch_device),
        "n_items": len(candidate.vocab.items), "n_users": len(candidate.vocab.users),
        "created_at": created, "promoted_at": created if promoted else None,
        "weights": weights, "sha256": checksum,
    }


def train_window(engine: Engine, config: Config, window_id: int,
                 drift: WindowDrift | None = None) -> tuple[dict, list[dict]]:
    """Fine-tune, judge and describe a candidate for ``window_id``: (model_versions row, epoch log).

    ``drift`` measures the window's drift metrics before training and once the candidate is judged.
    """
    started = time.perf_counter()
    device = pick_device()
    data = read_window(engine, config, window_id)
    if drift is not None:
        drift.before_training(data, device)
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
    verdict = judge(data, candidate, config, device)
    log.info("window %d: %s %s", window_id, "promoted" if verdict[0] else "rejected", verdict[1])
    if drift is not None:
        drift.after_judging(data, candidate, device)
    return version_row(data, candidate, verdict, started, device), epoch_log


worker_pid: int | None = None
"""Set in the training process: the worker it serves (a job whose worker is gone stops retrying)."""

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
            if time.monotonic() + delay > deadline or worker_pid not in (None, os.getppid()):
                raise  # out of time, or the worker is gone and will fail this run
            log.warning("%s: store unreachable, retrying in %.1fs (%s)", what, delay, exc.orig or exc)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


def run_training_job(database_url: str, env: dict[str, str], window_id: int, worker: str) -> dict:
    """The training process's entry point: one run, recorded in ``training_runs`` whatever happens."""
    from store.db import make_engine

    config = Config.from_env(env)
    engine = make_engine(database_url)
    run_id = start_run(engine, window_id, f"{worker}/train:{os.getpid()}")
    drift = WindowDrift(engine, config, window_id)
    try:
        version, epoch_log = train_window(engine, config, window_id, drift)
    except Exception as exc:
        log.exception("training on window %d failed", window_id)
        finish_run(engine, run_id, error=f"{type(exc).__name__}: {exc}")
        engine.dispose()
        raise
    version_id = retry_store(lambda: finish_run(engine, run_id, version, epoch_log, also=drift.write),
                             f"publishing the version of window {window_id}")
    engine.dispose()
    return {"run_id": run_id, "version_id": version_id, "status": version["status"], "reason": version["reason"],
            "duration_s": version["duration_s"]}

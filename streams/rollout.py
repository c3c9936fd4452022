"""Experiment reports and the worker's canary decision loop.

:func:`experiment_status` reads an experiment's served lists and the events attributed to
them and computes its report (:func:`drift.experiments.experiment_report`: users, lists, CTR
and conversion per arm, confidence sequences, sample-ratio test, guardrails) with the
settings ``STREAMREC_EXPERIMENT_ALPHA`` and ``STREAMREC_EXPERIMENT_TUNING_USERS``.

Every ``STREAMREC_CANARY_CHECK_S`` each worker's :class:`RolloutService` looks at the running
experiment; when it is a canary, it takes the decision of :func:`drift.experiments.canary_decision`
(``STREAMREC_CANARY_MARGIN``, ``STREAMREC_CANARY_MIN_USERS``). A promotion or rollback is
written by :func:`store.experiments.decide`, which only one worker's call can carry out; the
others find the experiment ended and do nothing. Every worker then swaps on its next look at
the store: a promoted candidate's snapshot, held as an arm, serves everyone; a rolled-back
one is dropped. Requests in flight keep the snapshot they started with, so none fails.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import mode
import pandas as pd
from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError

from drift.experiments import canary_decision, experiment_report, interleaving_report
from runtime.blocking import StoreThread
from runtime.config import Config
from store.experiments import decide, experiment_lists, running_experiment
from store.models import attributed_events, served_lists

log = logging.getLogger(__name__)

LIST_COLUMNS = ["request_id", "user_id", "arm", "served_at", "status", "items", "n_items", "teams", "latency_ms"]
EVENT_COLUMNS = ["request_id", "type", "item_id", "position"]


def experiment_events(engine: Engine, name: str) -> pd.DataFrame:
    """``request_id, type, item_id, position`` of the events attributed to lists of experiment ``name``."""
    a, s = attributed_events, served_lists
    with engine.connect() as conn:
        rows = conn.execute(select(*(a.c[c] for c in EVENT_COLUMNS)).join(s, s.c.request_id == a.c.request_id)
                            .where(s.c.experiment == name)).all()
    return pd.DataFrame([tuple(r) for r in rows], columns=EVENT_COLUMNS)


def experiment_status(engine: Engine, config: Config, experiment: dict) -> dict:
    """The report of ``experiment`` (an ``experiments`` row) from what the store holds now."""
    lists = pd.DataFrame(experiment_lists(engine, experiment["name"]), columns=LIST_COLUMNS)
    lists["latency_ms"] = pd.to_numeric(lists["latency_ms"], errors="coerce")
    events = experiment_events(engine, experiment["name"])
    if experiment["kind"] == "interleave":
        answered = lists[(lists["arm"] == "interleaved") & (lists["status"] < 500)]
        report = interleaving_report(answered, events, config.experiment_alpha)
    else:
        report = experiment_report(lists, events, experiment["share"], config.experiment_alpha,
                                   config.experiment_tuning_users)
    report["versions"] = {"control": experiment["control_version"], "treatment": experiment["treatment_version"]}
    return report


def decide_canary(engine: Engine, config: Config, by: str) -> dict | None:
    """Look at the running canary once; promote or roll it back when the evidence says so.

    Returns what was looked at (``experiment``, ``decision``, ``reason``, ``decided``: whether
    this call wrote the decision), or None while no canary runs.
    """
    experiment = running_experiment(engine)
    if experiment is None or experiment["kind"] != "canary":
        return None
    report = experiment_status(engine, config, experiment)
    decision, reason = canary_decision(report, config.canary_margin, config.canary_min_users)
    decided = False
    if decision != "wait":
        outcome = "promoted" if decision == "promote" else "rolled_back"
        decided = decide(engine, experiment["name"], experiment["treatment_version"], outcome, reason, report, by,
                         config.canary_share)
        if decided:
            log.info("Canary %r: version %d %s: %s", experiment["name"], experiment["treatment_version"],
                     outcome.replace("_", " "), reason)
    return {"experiment": experiment["name"], "decision": decision, "reason": reason, "decided": decided}


class RolloutService(mode.Service):
    """Takes canary decisions (see the module doc); also runs the experiment reports the API asks for."""

    def __init__(self, config: Config, engine_of, **kwargs):
        """``engine_of()`` gives the store's engine once there is one (None before)."""
        super().__init__(**kwargs)
        self.config, self.engine_of = config, engine_of
        self.store_thread = StoreThread("streamrec-rollout")
        self.worker_id = f"worker@{socket.gethostname()}:{os.getpid()}"
        self.last: dict | None = None

    def run_once(self) -> dict | None:
        engine = self.engine_of()
        if engine is None:
            return None
        self.last = decide_canary(engine, self.config, self.worker_id)
        return self.last

    @mode.Service.task
    async def _decision_loop(self) -> None:
        while not self.should_stop:
            started = time.monotonic()
            try:
                await self.store_thread.run(self.run_once)
            except DBAPIError as exc:
                log.error("Canary not checked (store unreachable), retrying: %s", exc.orig or exc)
            except Exception:
                log.exception("Canary not checked, retrying")
            await self.sleep(max(0.0, self.config.canary_check_s - (time.monotonic() - started)))

    async def on_stop(self) -> None:
        self.store_thread.shutdown()

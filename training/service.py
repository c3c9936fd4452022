"""The worker's learner stage: one training job per triggered window, in a child process.

Training never runs on the worker's event loop: jobs queue here and run one at a time in a
spawned process (:func:`training.job.run_training_job`), which dies with the worker. If that
process dies mid-job, the run is marked failed, no version was written (a version is
written in the transaction that closes its run), and the next window trains normally in a
fresh process.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import mode

from runtime.config import SETTINGS, Config
from runtime.processes import die_with_parent
from store.db import make_engine, migrate
from store.registry import fail_running, list_runs, now_ms
from store.replay import ReplayStore
from training import job
from training.job import run_training_job

log = logging.getLogger(__name__)

MAX_TRIES = 5
"""A window whose training died with its worker is tried again until it has failed this many times."""
TRAINING_NICENESS = 10
"""The training process runs at this lower CPU priority (``nice``) than the worker."""


def _init_training_process() -> None:
    """In the training process: die with the worker, log like it, and yield the CPU to ingest
    and serving (a fine-tune can wait; falling behind the event stream cannot)."""
    die_with_parent()
    os.nice(TRAINING_NICENESS)
    job.worker_pid = os.getppid()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")


def _training_process(run_worker: str) -> str:
    """``host:pid`` of a run's training process, from ``host:workerpid/train:pid``."""
    return f"{run_worker.split(':')[0]}:{run_worker.rsplit(':', 1)[-1]}"


class TrainingService(mode.Service):
    """Queues training triggers and runs them, one at a time, in a training process."""

    def __init__(self, config: Config, worker_name: str, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.worker_name = worker_name
        self.env = {s.env: str(getattr(config, name)) for name, s in SETTINGS.items()}
        self.queue: asyncio.Queue[int] = asyncio.Queue()
        self.totals = {"runs": 0, "promoted": 0, "rejected": 0, "failed": 0}
        self.running_window: int | None = None
        self.last: dict | None = None
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, window_id: int) -> None:
        self.queue.put_nowait(window_id)

    async def on_start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._recover)

    def _recover(self) -> None:
        """Fail the runs left 'running' by training processes that died with an earlier worker on this
        host, and train again the windows such a worker had taken (one worker wins each back)."""
        engine = make_engine(self.config.database_url)
        try:
            migrate(engine)
            self._mark_died()
            trained = {r["window_id"] for r in list_runs(engine, status="succeeded")}
            failures = Counter(r["window_id"] for r in list_runs(engine, status="failed"))
            replay = ReplayStore(engine)
            for window in sorted(replay.list_windows(), key=lambda w: w["id"]):
                holder = window["trigger_claimed_by"]
                if window["id"] in trained or holder is None or not self._is_gone(holder):
                    continue
                if failures[window["id"]] >= MAX_TRIES:
                    log.error("Window %d: not trained again, its training died %d times", window["id"],
                              failures[window["id"]])
                elif replay.reclaim_trigger(window["id"], holder, self.worker_name, now_ms()):
                    log.info("Window %d: training again (its worker %s died)", window["id"], holder)
                    self.submit(window["id"])
        finally:
            engine.dispose()

    def _is_gone(self, process: str) -> bool:
        """Whether ``host:pid`` names a process of this host that no longer runs."""
        host, _, pid = process.rpartition(":")
        return host == self.worker_name.split(":")[0] and not os.path.exists(f"/proc/{pid}")

    async def on_stop(self) -> None:
        """Stop the training process too: its run is failed and retrained by the next worker."""
        if self._pool is not None:
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.terminate()
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _process(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_training_process)
        return self._pool

    @mode.Service.task
    async def _run_jobs(self) -> None:
        while not self.should_stop:
            window_id = await self.queue.get()
            await self.train(window_id)

    async def train(self, window_id: int) -> dict | None:
        """Run one job; returns its outcome, or None if it failed."""
        self.running_window = window_id
        self.totals["runs"] += 1
        try:
            outcome = await asyncio.wrap_future(self._process().submit(
                run_training_job, self.config.database_url, self.env, window_id, self.worker_name))
        except BrokenProcessPool:
            log.error("Window %d: the training process died; the run is marked failed", window_id)
            self._pool = None
            await asyncio.get_running_loop().run_in_executor(None, self._mark_died, window_id)
            outcome = None
        except Exception as exc:  # recorded in training_runs by the job itself
            log.error("Window %d: training failed: %s", window_id, exc)
            outcome = None
        finally:
            self.running_window = None
        if outcome is None:
            self.totals["failed"] += 1
        else:
            self.totals[outcome["status"]] += 1
            log.info("Window %d: version %d %s in %.1fs: %s", window_id, outcome["version_id"], outcome["status"],
                     outcome["duration_s"], outcome["reason"])
        self.last = outcome
        return outcome

    def _mark_died(self, window_id: int | None = None) -> None:
        """Fail the runs of training processes on this host that are gone (``window_id``: only its)."""
        engine = make_engine(self.config.database_url)
        try:
            dead = [r for r in list_runs(engine, status="running")
                    if window_id in (None, r["window_id"]) and self._is_gone(_training_process(r["worker"]))]
            if dead:
                fail_running(engine, [r["id"] for r in dead], "the training process died before finishing")
        finally:
            engine.dispose()

    def describe(self) -> dict:
        return {**self.totals, "queued": self.queue.qsize(), "running_window": self.running_window,
                "last": self.last, "pid": os.getpid()}

"""The worker's training stage: its own trainer process, and what the trainers have to do.

While ``STREAMREC_WORKER_TRAINS`` is true the worker runs one trainer (:mod:`training.loop`)
as a child process at a lower CPU priority (``nice`` 10: when cores are short a fine-tune
waits, not ingest or serving), restarted with backoff if it exits and killed with the worker
(even by ``kill -9``). With it false, the worker only ingests, seals and serves, and
``streamrec trainer`` processes elsewhere (on a GPU host) do the training.

Either way the service reads the training backlog from the store every few seconds, for
``/health`` and ``/metrics``: windows and events waiting, the oldest wait, failed windows,
and the runs and versions the trainers produced.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

import mode

from runtime.blocking import StoreThread
from runtime.config import Config
from runtime.processes import die_with_parent
from store.db import make_engine
from store.registry import now_ms, run_totals
from store.training_queue import backlog

log = logging.getLogger(__name__)

TRAINING_NICENESS = 10
"""The training process runs at this lower CPU priority (``nice``) than the worker."""
RESTART_DELAY_MAX_S = 30.0
BACKLOG_POLL_S = 2.0


def _init_training_process() -> None:
    """In the training process: die with the worker and yield the CPU to ingest and serving."""
    die_with_parent()
    os.nice(TRAINING_NICENESS)


class TrainingService(mode.Service):
    """Supervises this worker's trainer process (if it trains) and keeps the training backlog current."""

    def __init__(self, config: Config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.store_thread = StoreThread("streamrec-training")
        self.engine = None
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.backlog: dict = {}
        self.runs: dict = {}

    async def on_start(self) -> None:
        self.engine = make_engine(self.config.database_url)  # migrated by the sealing stage

    async def on_stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()  # a job in flight is not published; its lease runs out
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()
        self.store_thread.shutdown(wait=False)
        if self.engine is not None:
            self.engine.dispose()

    @mode.Service.task
    async def _supervise(self) -> None:
        """Run the trainer process; start another whenever it exits while the worker runs."""
        if not self.config.worker_trains:
            return
        delay = 1.0
        while not self.should_stop:
            started = time.monotonic()
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "training.loop", stdin=asyncio.subprocess.DEVNULL,
                preexec_fn=_init_training_process)
            code = await self.process.wait()
            if self.should_stop:
                return
            delay = 1.0 if time.monotonic() - started > 60 else min(delay * 2, RESTART_DELAY_MAX_S)
            self.restarts += 1
            log.error("Training process (pid %d) exited with code %s; starting another in %.0fs",
                      self.process.pid, code, delay)
            await self.sleep(delay)

    @mode.Service.task
    async def _watch_backlog(self) -> None:
        while not self.should_stop:
            try:
                self.backlog, self.runs = await self.store_thread.run(self._read)
            except Exception as exc:  # store unreachable or not migrated yet: keep the last reading
                log.debug("training backlog not read: %s", exc)
            await self.sleep(BACKLOG_POLL_S)

    def _read(self) -> tuple[dict, dict]:
        return backlog(self.engine, now_ms()), run_totals(self.engine)

    def describe(self) -> dict:
        """For ``/health``: this worker's trainer process, the backlog, and runs and versions so far."""
        trains = self.config.worker_trains
        return {"worker_trains": trains,
                "pid": self.process.pid if trains and self.process and self.process.returncode is None else None,
                "restarts": self.restarts, "backlog": self.backlog, **self.runs}

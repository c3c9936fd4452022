"""The trainer: lease the oldest untrained windows, train them as one job, publish, repeat.

``streamrec trainer`` runs it alone (any number of trainers, on any host; CUDA with bf16
when present); a worker runs one as its training process while ``STREAMREC_WORKER_TRAINS``
is true. Trainers share nothing but the store: each claims work under a lease it renews while
it trains (:mod:`store.training_queue`), so work whose trainer died is taken over by another
once the lease expires, whatever host either runs on. Before it looks for a job, a trainer
embeds the catalog texts the store's text cache lacks (:mod:`training.catalog_text`), so jobs
find them cached.

``python -m training.loop`` is the process entry point. SIGTERM or SIGINT stops it at once:
the job in flight publishes nothing, its run is closed as failed, and its windows go back to
the queue uncounted, so another trainer (or this one restarted) trains them right away. A
trainer killed outright leaves its lease to expire instead.

One job trains at a time across all trainers (the lineage lease of
:mod:`store.training_queue`); a trainer sizes its jobs with a :class:`JobSizer`, so that a job
takes about ``STREAMREC_TRAIN_JOB_SECONDS`` on this machine however busy it is.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid

from runtime.config import Config
from store.db import make_engine, migrate
from store.registry import now_ms
from store.training_queue import Job, LeaseLost, claim_job, release_job, renew_lease, return_job
from training.catalog_text import CatalogEmbedder
from training.job import run_job, text_encoder

log = logging.getLogger(__name__)


def new_trainer_id() -> str:
    """A trainer's identity in leases and runs: random, so a restarted process never passes for
    the one it replaces (``trainer-<random>@<host>:<pid>``; host and pid are for people only)."""
    return f"trainer-{uuid.uuid4().hex[:8]}@{socket.gethostname()}:{os.getpid()}"


class JobSizer:
    """How many events a trainer's next job takes: what it absorbed in ``job_seconds`` lately.

    The absorption rate is window events per second of a whole job (reading, training,
    judging, drift and publishing), smoothed over jobs (half from the newest). The first job
    takes ``first`` events; the size stays within [1, ``most``] (a job always takes at least one
    window). A slower or busier machine takes fewer windows per job, each trained as fully.

    >>> sizer = JobSizer(job_seconds=30, most=200_000, first=2_000)
    >>> sizer.max_events
    2000
    >>> sizer.observe(events=4_000, seconds=20.0)
    >>> sizer.max_events, round(sizer.rate)
    (6000, 200)
    >>> sizer.observe(events=6_000, seconds=60.0)
    >>> sizer.max_events
    4500
    """

    def __init__(self, job_seconds: float, most: int, first: int):
        self.job_seconds, self.most, self.first = job_seconds, most, first
        self.rate: float | None = None

    def observe(self, events: int, seconds: float) -> None:
        """A finished job: ``events`` window events trained in ``seconds``."""
        if events <= 0 or seconds <= 0:
            return
        rate = events / seconds
        self.rate = rate if self.rate is None else (self.rate + rate) / 2

    @property
    def max_events(self) -> int:
        if self.rate is None:
            return max(1, min(self.first, self.most))
        return max(1, min(self.most, round(self.rate * self.job_seconds)))


class LeaseKeeper:
    """Renews a job's lease every third of its length, in a thread, until the job ends."""

    def __init__(self, engine, trainer_id: str, job: Job, lease_s: float):
        self.engine, self.trainer_id, self.job, self.lease_s = engine, trainer_id, job, lease_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _renew(self) -> None:
        while not self._done.wait(self.lease_s / 3):
            try:
                if not renew_lease(self.engine, self.trainer_id, self.job, now_ms(), self.lease_s):
                    return  # taken over, or just published: the publication is fenced either way
            except Exception as exc:  # store unreachable: keep trying while the lease lasts
                log.warning("could not renew the lease on windows %s: %s", self.job.window_ids, exc)


def train_next(engine, config: Config, trainer_id: str, sizer: JobSizer | None = None) -> dict | None:
    """Claim one job (of up to ``sizer.max_events`` events, default ``STREAMREC_TRAIN_MAX_EVENTS``)
    and train it; its outcome, or None when nothing is due."""
    max_events = config.train_max_events if sizer is None else sizer.max_events
    job = claim_job(engine, trainer_id, now_ms(), lease_s=config.train_lease_s, max_events=max_events,
                    min_events=config.train_min_events, max_wait_s=config.train_max_wait_s,
                    max_tries=config.train_max_tries)
    if job is None:
        return None
    try:  # from here on, whatever interrupts hands the job back
        log.info("%s: training windows %s (%d events%s)", trainer_id, job.window_ids, job.n_events,
                 ", retried alone" if job.retry else "")
        with LeaseKeeper(engine, trainer_id, job, config.train_lease_s):
            outcome = run_job(engine, config, job.window_ids, trainer_id, lease_holder=trainer_id)
        if sizer is not None:
            sizer.observe(job.n_events, outcome["duration_s"])
        return outcome
    except (KeyboardInterrupt, SystemExit):
        return_job(engine, trainer_id, job)
        log.info("%s: stopped; windows %s handed back", trainer_id, job.window_ids)
        raise
    except LeaseLost as exc:
        log.warning("%s: nothing published: %s", trainer_id, exc)
        return {"windows": job.window_ids, "status": "lease_lost", "reason": str(exc)}
    except Exception as exc:
        failed = release_job(engine, trainer_id, job, f"{type(exc).__name__}: {exc}", config.train_max_tries)
        if failed:
            log.error("windows %s failed %d times and will not be trained: %s", failed, config.train_max_tries, exc)
        return {"windows": job.window_ids, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}


def run_trainer(config: Config, trainer_id: str | None = None, stop: threading.Event | None = None,
                poll_s: float = 1.0) -> None:
    """Train jobs until ``stop`` is set; between jobs, look for work every ``poll_s`` seconds."""
    trainer_id = trainer_id or new_trainer_id()
    stop = stop or threading.Event()
    sizer = JobSizer(config.train_job_seconds, config.train_max_events, config.train_min_events)
    engine = make_engine(config.database_url)
    migrate(engine)
    embedder = CatalogEmbedder(engine, text_encoder)
    log.info("%s: looking for sealed windows to train in %s", trainer_id, config.shown("database_url"))
    try:
        while not stop.is_set():
            try:
                embedder.embed(stop)  # before a job, so no job waits on catalog text
                outcome = train_next(engine, config, trainer_id, sizer)
            except Exception as exc:  # the store is unreachable: wait and look again
                log.error("%s: could not look for work: %s", trainer_id, exc)
                outcome = None
            if outcome is None:
                stop.wait(poll_s)
            elif outcome["status"] in ("promoted", "rejected"):
                log.info("windows %s: version %d %s in %.1fs: %s", outcome["windows"], outcome["version_id"],
                         outcome["status"], outcome["duration_s"], outcome["reason"])
    finally:
        engine.dispose()


def main() -> None:
    """Entry point of a training process: settings from the environment, stop on SIGTERM/SIGINT."""
    config = Config.from_env()
    logging.basicConfig(level=config.python_log_level,
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        run_trainer(config)
    except KeyboardInterrupt:
        log.info("trainer stopped after %.0fs", time.monotonic() - started)


def _interrupt(signum, frame) -> None:
    """SIGTERM stops a trainer the way Ctrl-C does."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()

"""The worker's side of ingest: run the ingest processes, and do what needs one place.

The worker starts ``STREAMREC_INGEST_PROCESSES`` processes running :mod:`streams.ingest` (one
consumer group, so they share the partitions), reads their reports, and restarts one that
exits (with backoff). Each dies with the worker, even on ``kill -9``. Here, once per worker:

* dead letters the ingest processes stored in the outbox are published to the dead-letter
  topic, then flagged (at least once);
* event ids older than the dedupe horizon are forgotten;
* totals and assigned partitions are kept for ``/health``, and the replay stage is poked
  after every commit that stored events.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sys
import time

import mode
import orjson
from aiokafka.errors import KafkaError
from sqlalchemy.exc import DBAPIError

from runtime.blocking import StoreThread
from runtime.config import Config
from runtime.processes import die_with_parent
from store.db import make_engine, migrate
from store.ingest import IngestWriter
from streams.schema import DeadLetter

log = logging.getLogger(__name__)

RESTART_DELAY_MAX_S = 30.0


def _dead_letter(row: dict) -> DeadLetter:
    return DeadLetter(reason=row["reason"], detail=row["detail"], topic=row["topic"], partition=row["partition"],
                      offset=row["offset"], key=row["key"].decode("utf-8", "replace") if row["key"] else None,
                      payload_b64=base64.b64encode(row["payload"]).decode("ascii"), received_at=row["received_at"])


class IngestProcesses(mode.Service):
    """Supervisor of the ingest processes; owner of the dead-letter outbox."""

    def __init__(self, config: Config, dead_letter_topic, on_commit=None, **kwargs):
        """``on_commit()`` is called after each batch that stored new events."""
        super().__init__(**kwargs)
        self.config = config
        self.dead_letter_topic = dead_letter_topic
        self.on_commit = on_commit
        self.store_thread = StoreThread("streamrec-outbox")
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.assigned: dict[int, list[str]] = {}
        self.totals = {"accepted": 0, "rejected": 0, "batches": 0, "restarts": 0}
        self._last_logged: dict = {}
        self._outbox_waiting = asyncio.Event()
        self.engine = None
        self.writer: IngestWriter | None = None

    @property
    def ready(self) -> bool:
        """Every ingest process has had its partitions assigned."""
        return len(self.assigned) == self.config.ingest_processes

    def describe(self) -> dict:
        """Totals since the worker started, and the pid of each running ingest process."""
        return {**self.totals, "pids": [p.pid for p in self.processes.values() if p.returncode is None]}

    async def on_start(self) -> None:
        self.engine = make_engine(self.config.database_url)
        await self.store_thread.run(migrate, self.engine)  # before any ingest process writes
        self.writer = IngestWriter(self.engine, self.config.ingest_group, self.config.dedupe_horizon_s)
        for slot in range(self.config.ingest_processes):
            self.add_future(self._supervise(slot))
        self._outbox_waiting.set()  # letters left by an earlier run

    async def on_stop(self) -> None:
        await asyncio.gather(*(self._terminate(p) for p in list(self.processes.values())))
        self.store_thread.shutdown()
        if self.engine is not None:
            self.engine.dispose()

    async def _supervise(self, slot: int) -> None:
        """Run ingest process ``slot``; restart it whenever it exits while the worker runs."""
        delay = 1.0
        while not self.should_stop:
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "streams.ingest", stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, preexec_fn=die_with_parent)
            self.processes[slot] = process
            try:
                async for line in process.stdout:
                    self._take_report(slot, line)
                code = await process.wait()
            except asyncio.CancelledError:
                await self._terminate(process)
                raise
            finally:
                self.assigned.pop(slot, None)
            if self.should_stop:
                return
            delay = 1.0 if time.monotonic() - started > 60 else min(delay * 2, RESTART_DELAY_MAX_S)
            self.totals["restarts"] += 1
            log.error("Ingest process %d (pid %d) exited with code %s; starting another in %.0fs",
                      slot, process.pid, code, delay)
            await self.sleep(delay)

    @staticmethod
    async def _terminate(process: asyncio.subprocess.Process, timeout_s: float = 15.0) -> None:
        """SIGTERM (the process finishes its batch in flight), wait, then SIGKILL."""
        if process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()

    def _take_report(self, slot: int, line: bytes) -> None:
        try:
            report = orjson.loads(line)
        except orjson.JSONDecodeError:  # something else printed to stdout: pass it on
            log.info("ingest process %d: %s", slot, line.decode("utf-8", "replace").rstrip())
            return
        if "assigned" in report:
            self.assigned[slot] = report["assigned"]
            return
        self.totals["accepted"] += report["accepted"]
        self.totals["rejected"] += report["rejected"]
        self.totals["batches"] += 1
        if report["accepted"] and self.on_commit is not None:
            self.on_commit()
        if report["rejected"]:
            self._outbox_waiting.set()

    @mode.Service.task
    async def _publish_dead_letters(self) -> None:
        """Send stored, unpublished dead letters to the dead-letter topic, then flag them."""
        while not self.should_stop:
            await self._outbox_waiting.wait()
            self._outbox_waiting.clear()
            try:
                while rows := await self.store_thread.run(self.writer.unpublished_dead_letters, 1000):
                    pending = [await self.dead_letter_topic.send(key=row["key"], value=_dead_letter(row))
                               for row in rows]
                    await asyncio.gather(*pending)
                    await self.store_thread.run(self.writer.mark_published, [row["id"] for row in rows])
            except (KafkaError, DBAPIError) as exc:  # kept in the outbox; try again shortly
                log.error("Publishing dead letters failed (retrying in 5s): %s", exc)
                self._outbox_waiting.set()
                await self.sleep(5.0)

    @mode.Service.timer(600.0)
    async def _prune_dedupe(self) -> None:
        if self.writer is not None:
            pruned = await self.store_thread.run(self.writer.prune_dedupe, time.time_ns() // 1_000_000)
            if pruned:
                log.info("Forgot %d event ids older than the dedupe horizon", pruned)

    @mode.Service.timer(10.0)
    async def _log_totals(self) -> None:
        if self.totals != self._last_logged:
            self._last_logged = dict(self.totals)
            log.info("ingest: %(accepted)d accepted, %(rejected)d rejected in %(batches)d batches", self.totals)

"""The worker's replay stage: seal due windows and announce each on the control topic.

Sealing runs on its own store thread, woken after every ingest commit (a window may be
full) and every second (a window may be old enough). A sealed window is pending training
in the store from the moment it seals: trainers lease it from there
(:mod:`store.training_queue`). Each window's notice also goes to the single-partition
``<prefix>-windows`` topic from an outbox in the store (so a crash between sealing and
sending only delays it), for anyone who wants to follow sealing; the one worker that owns
that partition records the notice in the store once, however often it is delivered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import mode
from sqlalchemy.exc import DBAPIError

from replay.windows import WindowPolicy
from runtime.blocking import StoreThread
from runtime.config import Config
from store.db import make_engine, migrate, now_ms
from store.replay import ReplayStore
from streams.schema import WindowSealed

log = logging.getLogger(__name__)

WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"


class SealingService(mode.Service):
    """Seals replay windows and publishes their notices."""

    def __init__(self, config: Config, windows_topic, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.windows_topic = windows_topic
        self.store_thread = StoreThread("streamrec-replay")
        self.totals = {"sealed": 0, "notices": 0, "notices_received": 0}  # notices: recorded here first
        self.engine = None
        self.store: ReplayStore | None = None
        self._poked = asyncio.Event()
        self._store_ready = asyncio.Event()

    async def on_start(self) -> None:
        self.engine = make_engine(self.config.database_url)
        await self.store_thread.run(migrate, self.engine)
        self.store = ReplayStore(self.engine, WindowPolicy(self.config.window_max_events,
                                                           self.config.window_max_age_s), self.config.new_rehearsal_memory)
        self._store_ready.set()

    async def on_stop(self) -> None:
        self.store_thread.shutdown()
        if self.engine is not None:
            self.engine.dispose()

    def poke(self) -> None:
        """New events were committed: check soon whether the open window is full."""
        self._poked.set()

    @mode.Service.task
    async def _seal_loop(self) -> None:
        while not self.should_stop:
            try:
                await asyncio.wait_for(self._poked.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass
            self._poked.clear()
            try:
                sealed = await self.store_thread.run(self.store.seal_due, now_ms())
                for window in sealed:
                    log.info("Sealed window %d: %d events (%s)", window.id, window.n_events, window.seal_reason)
                self.totals["sealed"] += len(sealed)
                await self._publish_notices()
            except DBAPIError as exc:  # store unreachable: the open window waits, nothing is lost
                log.error("Sealing failed, retrying: %s", exc.orig or exc)
                await asyncio.sleep(1.0)
            except Exception:  # never let one bad seal stop the worker; the window stays open
                log.exception("Sealing failed, retrying")
                await asyncio.sleep(1.0)

    async def _publish_notices(self) -> None:
        pending = await self.store_thread.run(self.store.unpublished_notices)
        if not pending:
            return
        sent = [await self.windows_topic.send(key=str(w.id).encode(), value=WindowSealed(
            window_id=w.id, n_events=w.n_events, seal_reason=w.seal_reason, sealed_at=w.sealed_at))
            for w in pending]
        await asyncio.gather(*sent)
        await self.store_thread.run(self.store.mark_notices_published, [w.id for w in pending])

    async def take_notice(self, notice: WindowSealed) -> bool:
        """Record a sealed window's notice as received by this worker, once across the cluster.
        Notices may arrive before the store is open (a restarted worker is handed the topic's
        undelivered ones at once): they wait for it, and while the store is unreachable the
        notice is retried every second while the worker runs. (A notice is a record: trainers
        lease sealed windows from the store whether or not it was taken.)"""
        self.totals["notices_received"] += 1
        await self._store_ready.wait()
        while True:
            if self.should_stop:
                return False
            try:
                claimed = await self.store_thread.run(self.store.claim_trigger, notice.window_id, WORKER_NAME,
                                                      now_ms())
                break
            except DBAPIError as exc:
                log.error("Recording the notice of window %d failed, retrying: %s", notice.window_id,
                          exc.orig or exc)
                await asyncio.sleep(1.0)
        if not claimed:
            log.info("Window %d: notice already received", notice.window_id)
            return False
        self.totals["notices"] += 1
        log.info("Window %d sealed (%d events, %s); it waits for a trainer", notice.window_id, notice.n_events,
                 notice.seal_reason)
        return True

"""The ingest path: read storefront topics in batches, validate, commit to the store.

Faust's per-message stream machinery costs far more than validation itself, so the
worker hosts this batched consumer as a service instead of a per-message agent. It
reads up to ``STREAMREC_INGEST_BATCH_MAX`` messages per poll, validates the whole poll in
the event loop (about a microsecond a message), and hands the batch to one writer thread,
which commits the accepted events (one segment of the open replay window), catalog rows,
counters, dead letters and the partition offsets in one transaction (see
:mod:`store.ingest`); the next poll is validated meanwhile. Offsets live in the store, so
every accepted event is stored exactly once across crashes and rebalances. Dead letters are
then published from the store's outbox to the dead-letter topic (at least once).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import mode
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from sqlalchemy.exc import DBAPIError

from store.db import make_engine, migrate
from store.ingest import IngestBatch, IngestWriter, OffsetConflict
from streamrec.config import Config
from streams.schema import EVENT_TYPES, DeadLetter
from streams.validation import MAX_ID_LENGTH, Invalid, Validator

log = logging.getLogger(__name__)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _label(obj: dict | None, name: str, allowed=None) -> str:
    """A safe stats label for a rejected message: the field if usable, else 'unknown'."""
    if obj is None:
        return "unknown"
    value = obj.get(name, "default" if name == "storefront" else None)
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID_LENGTH:
        return "unknown"
    return value if allowed is None or value in allowed else "unknown"


class IngestService(mode.Service):
    """Batched, exactly-once-into-the-store consumer of the events and catalog topics."""

    def __init__(self, config: Config, dead_letter_topic, on_commit=None, **kwargs):
        """``on_commit()`` is called after each batch that stored new events."""
        super().__init__(**kwargs)
        self.config = config
        self.on_commit = on_commit
        self.dead_letter_topic = dead_letter_topic
        self.validator = Validator(config.max_payload_bytes, config.max_future_s)
        self.db_thread = ThreadPoolExecutor(1, thread_name_prefix="streamrec-store")
        self.positions: dict[TopicPartition, int | None] = {}
        self._offsets_to_mirror: dict[TopicPartition, int] = {}
        self._mirroring: asyncio.Future | None = None
        self.totals = {"accepted": 0, "rejected": 0, "batches": 0}
        self._last_report: dict = {}
        self.ready = asyncio.Event()
        self.engine = None
        self.writer: IngestWriter | None = None
        self.consumer: AIOKafkaConsumer | None = None

    async def in_db(self, fn, *args):
        """Run blocking store work on the writer thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.db_thread, fn, *args)

    async def on_start(self) -> None:
        self.engine = make_engine(self.config.database_url)
        await self.in_db(migrate, self.engine)
        self.writer = IngestWriter(self.engine, self.config.ingest_group, self.config.dedupe_horizon_s)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.config.bootstrap_servers,
            group_id=self.config.ingest_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self.config.session_timeout_s * 1000,
            heartbeat_interval_ms=max(1000, self.config.session_timeout_s * 1000 // 5),
            rebalance_timeout_ms=self.config.session_timeout_s * 1000,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
        )
        self.consumer.subscribe([self.config.events_topic, self.config.catalog_topic],
                                listener=_SeekToStoredOffsets(self))
        await self.consumer.start()

    async def on_stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
        self.db_thread.shutdown(wait=True)
        if self.engine is not None:
            self.engine.dispose()

    async def seek_to_stored(self, partitions) -> None:
        stored = await self.in_db(self.writer.load_offsets, [(tp.topic, tp.partition) for tp in partitions])
        ends = await self.consumer.end_offsets(list(partitions)) if stored else {}
        for tp in partitions:
            offset = stored.get((tp.topic, tp.partition))
            self.positions[tp] = offset
            if offset is None:
                continue
            if offset > 0 and ends.get(tp) == 0:  # offsets never restart at 0 in a log that was kept
                log.warning("%s[%d]: the broker's log is empty but %d messages were stored from it: the topic was "
                            "recreated or the broker lost its data. Reading it again from the beginning (events "
                            "stored before are rejected as duplicates).", tp.topic, tp.partition, offset)
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)
        self.ready.set()

    @mode.Service.task
    async def _consume(self) -> None:
        """Poll, validate, commit; the next batch is polled and validated while the last one commits."""
        await self._publish_dead_letters()
        committing: asyncio.Task | None = None
        while not self.should_stop:
            records = await self.consumer.getmany(timeout_ms=0 if committing else 500,
                                                  max_records=self.config.ingest_batch_max)
            batch = self.build_batch(records) if records else None
            if committing is not None:
                await committing
                committing = None
            if batch is not None:
                committing = asyncio.ensure_future(self._commit(batch))

    async def _commit(self, batch: IngestBatch) -> None:
        delay = 0.5
        while True:
            try:
                result = await self.in_db(self.writer.write, batch)
                break
            except OffsetConflict as exc:
                log.warning("Skipping a batch another worker already stored: %s", exc)
                await self.seek_to_stored([tp for tp in map(TopicPartition._make, batch.offsets)
                                           if tp in self.consumer.assignment()])
                return
            except DBAPIError as exc:  # store unreachable: keep the batch, retry, never skip
                log.error("Store write failed (retrying in %.1fs): %s", delay, exc.orig or exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self.totals["accepted"] += result.accepted
        self.totals["rejected"] += result.dead_letters
        self.totals["batches"] += 1
        if result.accepted and self.on_commit is not None:
            self.on_commit()
        self._mirror_offsets({TopicPartition(*tp): new for tp, (_, new) in batch.offsets.items()})
        if result.dead_letters:
            await self._publish_dead_letters()

    def _mirror_offsets(self, offsets: dict) -> None:
        """Commit stored offsets to Kafka too, for standard lag tooling (the store stays the truth).

        In the background, one commit at a time: offsets that arrive meanwhile are merged and
        sent next, so the ingest loop never waits on the broker for this.
        """
        self._offsets_to_mirror.update(offsets)
        if self._mirroring is None or self._mirroring.done():
            self._mirroring = asyncio.ensure_future(self._send_mirrored_offsets())

    async def _send_mirrored_offsets(self) -> None:
        while self._offsets_to_mirror:
            offsets, self._offsets_to_mirror = self._offsets_to_mirror, {}
            offsets = {tp: o for tp, o in offsets.items() if tp in self.consumer.assignment()}
            try:
                if offsets:
                    await self.consumer.commit(offsets)
            except (CommitFailedError, KafkaError) as exc:
                log.info("Kafka offset commit skipped: %s", exc)

    def build_batch(self, records) -> IngestBatch:
        """Validate every polled message into one IngestBatch (CPU only, no I/O).

        Each partition's expected stored offset is where the previous batch left it, so a batch
        can be built while the one before it commits; a conflict re-reads the stored offsets.
        """
        batch = IngestBatch(received_at=now_ms())
        messages = []
        for tp, polled in records.items():
            if tp.topic == self.config.events_topic:
                messages += polled
            else:
                for msg in polled:
                    try:
                        batch.items.append(self.validator.catalog(msg.value or b""))
                    except Invalid as exc:
                        batch.rejections.append(self._rejection(msg, exc, event_type="catalog"))
            new = polled[-1].offset + 1
            batch.offsets[(tp.topic, tp.partition)] = (self.positions.get(tp), new)
            self.positions[tp] = new
        batch.events, rows, rejected = self.validator.interactions([msg.value or b"" for msg in messages])
        batch.sources = [messages[row] for row in rows]
        batch.rejections += [self._rejection(messages[i], exc) for i, exc in rejected]
        return batch

    def _rejection(self, msg, exc: Invalid, event_type: str | None = None) -> dict:
        """The dead letter of a message that broke a rule, labelled for ``ingest_stats``."""
        obj = self.validator.decode_or_none(msg.value or b"")
        return {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset, "key": msg.key,
                "payload": msg.value or b"", "reason": exc.reason, "detail": exc.detail,
                "storefront": _label(obj, "storefront"),
                "event_type": event_type or _label(obj, "type", EVENT_TYPES)}

    async def _publish_dead_letters(self) -> None:
        """Send stored, unpublished dead letters to the dead-letter topic, then flag them."""
        while True:
            rows = await self.in_db(self.writer.unpublished_dead_letters, 1000)
            if not rows:
                return
            pending = [await self.dead_letter_topic.send(
                key=row["key"],
                value=DeadLetter(reason=row["reason"], detail=row["detail"], topic=row["topic"],
                                 partition=row["partition"], offset=row["offset"],
                                 key=row["key"].decode("utf-8", "replace") if row["key"] else None,
                                 payload_b64=base64.b64encode(row["payload"]).decode("ascii"),
                                 received_at=row["received_at"]))
                for row in rows]
            await asyncio.gather(*pending)
            await self.in_db(self.writer.mark_published, [row["id"] for row in rows])

    @mode.Service.timer(600.0)
    async def _prune_dedupe(self) -> None:
        if self.writer is not None:
            pruned = await self.in_db(self.writer.prune_dedupe, now_ms())
            if pruned:
                log.info("Forgot %d event ids older than the dedupe horizon", pruned)

    @mode.Service.timer(10.0)
    async def _report(self) -> None:
        if self.totals != self._last_report:
            self._last_report = dict(self.totals)
            log.info("ingest: %(accepted)d accepted, %(rejected)d rejected in %(batches)d batches", self.totals)


class _SeekToStoredOffsets(ConsumerRebalanceListener):
    """On assignment, continue each partition from the offset stored with its data."""

    def __init__(self, service: IngestService):
        self.service = service

    async def on_partitions_revoked(self, revoked) -> None:
        for tp in revoked:
            self.service.positions.pop(tp, None)

    async def on_partitions_assigned(self, assigned) -> None:
        await self.service.seek_to_stored(list(assigned))

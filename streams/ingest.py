"""The ingest path: read storefront topics in batches, validate, commit to the store.

Faust's per-message stream machinery costs far more than validation itself, so the ingest
path is a batched aiokafka consumer, and it runs in its own process (``python -m
streams.ingest``, started and supervised by the worker through
:mod:`streams.ingest_processes`): ingest is all CPU-bound Python, and in a process of its own
it does not share an interpreter lock with serving, window sealing and the web API.

Each poll takes up to ``STREAMREC_INGEST_BATCH_MAX`` messages and is validated at once (about
a microsecond a message); one writer thread commits the accepted events (one segment of the
open replay window), catalog rows, counters, dead letters and the partition offsets in one
transaction (see :mod:`store.ingest`) while the next poll is validated. Offsets live in the
store, so every accepted event is stored exactly once across crashes and rebalances. The
process reports to the worker on its stdout, one JSON object a line: ``{"assigned": [...]}``
after each rebalance, ``{"accepted": n, "rejected": m}`` after each commit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import mode
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from sqlalchemy.exc import DBAPIError

from runtime.blocking import StoreThread
from runtime.config import Config
from runtime.processes import die_with_parent
from store.db import make_engine, now_ms
from store.ingest import IngestBatch, IngestWriter, OffsetConflict
from streams.schema import EVENT_TYPES
from streams.validation import MAX_ID_LENGTH, Invalid, Validator

log = logging.getLogger(__name__)


def _label(obj: dict | None, name: str, allowed=None) -> str:
    """A safe stats label for a rejected message: the field if usable, else 'unknown'."""
    if obj is None:
        return "unknown"
    value = obj.get(name, "default" if name == "storefront" else None)
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID_LENGTH:
        return "unknown"
    return value if allowed is None or value in allowed else "unknown"


class IngestService(mode.Service):
    """Batched, exactly-once-into-the-store consumer of the events, catalog and served topics."""

    def __init__(self, config: Config, report=None, **kwargs):
        """``report(dict)`` is told of each rebalance and commit (see the module docstring)."""
        super().__init__(**kwargs)
        self.config = config
        self.report = report or (lambda message: None)
        self.validator = Validator(config.max_payload_bytes, config.max_future_s)
        self.store_thread = StoreThread("streamrec-store")  # the single writer
        self.positions: dict[TopicPartition, int | None] = {}
        self._offsets_to_mirror: dict[TopicPartition, int] = {}
        self._mirroring: asyncio.Future | None = None
        self.engine = None
        self.writer: IngestWriter | None = None
        self.consumer: AIOKafkaConsumer | None = None

    async def on_start(self) -> None:
        self.engine = make_engine(self.config.database_url)  # migrated by the worker
        self.writer = IngestWriter(self.engine, self.config.ingest_group, self.config.dedupe_horizon_s,
                                   self.config.attribution_window_s)
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
        self.consumer.subscribe([self.config.events_topic, self.config.catalog_topic, self.config.served_topic],
                                listener=_SeekToStoredOffsets(self))
        await self.consumer.start()

    async def on_stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
        self.store_thread.shutdown()
        if self.engine is not None:
            self.engine.dispose()

    async def seek_to_stored(self, partitions) -> None:
        stored = await self.store_thread.run(self.writer.load_offsets, [(tp.topic, tp.partition) for tp in partitions])
        ends = await self.consumer.end_offsets(list(partitions)) if stored else {}
        for tp in partitions:
            offset = stored.get((tp.topic, tp.partition))
            self.positions[tp] = offset
            if offset is None:
                # nothing stored from it: read it from its first message, also after a skipped batch
                # whose messages the consumer has already fetched
                await self.consumer.seek_to_beginning(tp)
                continue
            if offset > 0 and ends.get(tp) == 0:  # offsets never restart at 0 in a log that was kept
                log.warning("%s[%d]: the broker's log is empty but %d messages were stored from it: the topic was "
                            "recreated or the broker lost its data. Reading it again from the beginning (events "
                            "stored before are rejected as duplicates).", tp.topic, tp.partition, offset)
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)
        self.report({"assigned": sorted(f"{tp.topic}[{tp.partition}]" for tp in self.positions)})

    @mode.Service.task
    async def _consume(self) -> None:
        """Poll, validate, commit; the next batch is polled and validated while the last one commits."""
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
                result = await self.store_thread.run(self.writer.write, batch)
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
        self.report({"accepted": result.accepted, "rejected": result.dead_letters})
        self._mirror_offsets({TopicPartition(*tp): new for tp, (_, new) in batch.offsets.items()})

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
            elif tp.topic == self.config.served_topic:
                for msg in polled:
                    try:
                        kind, message = self.validator.served_message(msg.value or b"")
                        (batch.shown if kind == "shown" else batch.served).append(message)
                    except Invalid as exc:
                        batch.rejections.append(self._rejection(msg, exc, event_type="served"))
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


class _SeekToStoredOffsets(ConsumerRebalanceListener):
    """On assignment, continue each partition from the offset stored with its data."""

    def __init__(self, service: IngestService):
        self.service = service

    async def on_partitions_revoked(self, revoked) -> None:
        for tp in revoked:
            self.service.positions.pop(tp, None)

    async def on_partitions_assigned(self, assigned) -> None:
        await self.service.seek_to_stored(list(assigned))


async def _run(config: Config) -> int:
    """Ingest until SIGTERM or SIGINT (then finish the batch in flight); 1 if the loop crashed."""
    def report(message: dict) -> None:
        sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
        sys.stdout.buffer.flush()

    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
    service = IngestService(config, report)
    await service.start()
    await asyncio.wait([asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(service.wait_until_stopped())],
                       return_when=asyncio.FIRST_COMPLETED)
    crashed = service.crashed
    await service.stop()
    return 1 if crashed else 0


def main() -> None:
    """``python -m streams.ingest``: one ingest process, configured like the worker (environment)."""
    die_with_parent()
    config = Config.from_env()
    logging.basicConfig(level=config.python_log_level,
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s", stream=sys.stderr)
    sys.exit(asyncio.run(_run(config)))


if __name__ == "__main__":
    main()

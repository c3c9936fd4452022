"""Replay windows and rehearsal memory in the store.

Accepted events reach ``open_segments`` in the same transaction as the offsets that cover
them (:mod:`store.ingest`). Sealing moves the oldest segments into one ``windows`` row and
folds that window into the rehearsal memory, again in one transaction, so every accepted
event is in exactly one place at every moment: an open segment or a sealed window. Every
seal advances the generation in the single ``replay_lock`` row, and commits only if no other
seal committed since it read the segments, so two workers never seal the same events.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa
from sqlalchemy import Engine, delete, func, insert, select, update

from replay import codec
from replay.memory import RehearsalMemory
from replay.windows import WindowPolicy, summarise
from store.db import upsert
from store.models import open_segments, rehearsal_memory, replay_lock, windows


class CorruptWindow(RuntimeError):
    """A window's stored events do not match their checksum."""


@dataclass(frozen=True)
class SealedWindow:
    id: int
    n_events: int
    seal_reason: str
    sealed_at: int


WINDOW_COLUMNS = [c for c in windows.c if c.name != "data"]
_RACED = object()  # a seal attempt that another sealer overtook


class ReplayStore:
    """Seals due windows, keeps the rehearsal memory, and reads both back."""

    def __init__(self, engine: Engine, policy: WindowPolicy | None = None, new_memory=None):
        """``new_memory()`` returns an empty :class:`RehearsalMemory` of the configured policy;
        both it and ``policy`` are needed to seal, not to read."""
        self.engine = engine
        self.policy = policy
        self.new_memory = new_memory
        self._memory_at: tuple[int, RehearsalMemory] | None = None  # (generation, memory) this store sealed

    def stored_events(self) -> int:
        """Accepted events in the store: sealed windows plus the open window."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.sum(windows.c.n_events), 0))).scalar_one()
                       + conn.execute(select(func.coalesce(func.sum(open_segments.c.n_events), 0))).scalar_one())

    def all_event_ids(self) -> list[str]:
        """Every stored event id, window after window and then the open window (repeats included)."""
        ids = [i for w in reversed(self.list_windows()) for i in self.load_window(w["id"]).column("event_id").to_pylist()]
        return ids + self.load_open().column("event_id").to_pylist()

    def open_window(self) -> tuple[int, int | None]:
        """(events in the open window, when its oldest event was ingested)."""
        with self.engine.connect() as conn:
            n, oldest = conn.execute(select(func.coalesce(func.sum(open_segments.c.n_events), 0),
                                            func.min(open_segments.c.first_ingested_at))).one()
        return int(n), oldest

    def seal_due(self, now_ms: int) -> list[SealedWindow]:
        """Seal every window that is due (a backlog may fill several); returns them in order."""
        sealed = []
        while True:
            window = self._seal_one(now_ms)
            if window is None:
                return sealed
            if window is not _RACED:
                sealed.append(window)

    def _seal_one(self, now_ms: int) -> SealedWindow | None:
        """Seal the oldest due window; None when none is due, ``_RACED`` when another sealer went first.

        The CPU work (decoding segments, encoding the window, updating the memory) runs outside
        any write transaction, so ingest keeps committing meanwhile; the write at the end is
        fenced by the ``replay_lock`` generation read first, which every seal advances.
        """
        with self.engine.connect() as conn:
            generation = conn.execute(select(replay_lock.c.seals).where(replay_lock.c.id == 1)).scalar_one()
            segments = conn.execute(select(open_segments.c.id, open_segments.c.n_events,
                                           open_segments.c.first_ingested_at)
                                    .order_by(open_segments.c.id)).all()
            reason = self.policy.due(sum(s.n_events for s in segments),
                                     min((s.first_ingested_at for s in segments), default=None), now_ms)
            if reason is None:
                return None
            chosen, count = [], 0
            for segment in segments:
                chosen.append(segment)
                count += segment.n_events
                if count >= self.policy.max_events:
                    break
            data = dict(conn.execute(select(open_segments.c.id, open_segments.c.data)
                                     .where(open_segments.c.id.in_([s.id for s in chosen]))).all())
            memory = self._memory_of(conn, generation)
        if len(data) < len(chosen):  # sealed meanwhile
            return _RACED
        events = codec.concat([codec.decode(data[s.id]) for s in chosen])
        consumed, rest = [s.id for s in chosen], None
        if events.num_rows > self.policy.max_events:  # the last segment keeps what does not fit
            rest = events.slice(self.policy.max_events)
            events = events.slice(0, self.policy.max_events)
        blob = codec.encode(events)
        summary = summarise(events)
        memory.update(events)
        memory_row = {"policy": memory.name, "capacity": memory.capacity, "n_events": len(memory),
                      "state": memory.state(), "data": codec.encode(memory.table), "updated_at": now_ms}
        with self.engine.begin() as conn:
            if conn.execute(update(replay_lock).where(replay_lock.c.id == 1, replay_lock.c.seals == generation)
                            .values(seals=generation + 1)).rowcount != 1:
                return _RACED
            if rest is not None:
                last = consumed.pop()
                conn.execute(update(open_segments).where(open_segments.c.id == last)
                             .values(n_events=rest.num_rows, data=codec.encode(rest)))
            conn.execute(delete(open_segments).where(open_segments.c.id.in_(consumed)))
            window_id = conn.execute(insert(windows).values(
                opened_at=min(s.first_ingested_at for s in chosen), sealed_at=now_ms, seal_reason=reason,
                data=blob, sha256=hashlib.sha256(blob).hexdigest(), notice_published=False,
                **summary).returning(windows.c.id)).scalar_one()
            stmt = upsert(conn, rehearsal_memory)
            row = memory_row | {"through_window": window_id}
            conn.execute(stmt.on_conflict_do_update(index_elements=["policy"], set_=row), [row])
        self._memory_at = (generation + 1, memory)
        return SealedWindow(window_id, summary["n_events"], reason, now_ms)

    def _memory_of(self, conn, generation: int) -> RehearsalMemory:
        """The memory as of seal ``generation``: a copy of the one this store last wrote if no
        other seal came since (only seals write the memory), else read from the store."""
        if self._memory_at is None or self._memory_at[0] != generation:
            return self._memory(conn)
        memory = self.new_memory()
        memory.restore(self._memory_at[1].table, self._memory_at[1].state())
        return memory

    def _memory(self, conn) -> RehearsalMemory:
        memory = self.new_memory()
        row = conn.execute(select(rehearsal_memory.c.state, rehearsal_memory.c.data)
                           .where(rehearsal_memory.c.policy == memory.name)).one_or_none()
        if row is not None:
            memory.restore(codec.decode(row.data), row.state)
        return memory

    def memory(self) -> RehearsalMemory:
        """The configured policy's rehearsal memory as last stored (empty before the first window)."""
        with self.engine.connect() as conn:
            return self._memory(conn)

    def memory_rows(self) -> list[dict]:
        """Each stored policy's memory: policy, capacity, events kept, events seen, last window."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(rehearsal_memory).order_by(rehearsal_memory.c.policy)).mappings().all()
        return [{"policy": r["policy"], "capacity": r["capacity"], "n_events": r["n_events"],
                 "n_seen": r["state"]["n_seen"], "through_window": r["through_window"],
                 "updated_at": r["updated_at"], "events": codec.decode(r["data"])} for r in rows]

    def list_windows(self, limit: int | None = None) -> list[dict]:
        """Sealed windows, newest first, without their events."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(*WINDOW_COLUMNS).order_by(windows.c.id.desc()).limit(limit)).mappings()
            return [dict(r) for r in rows]

    def load_window(self, window_id: int) -> pa.Table:
        """A sealed window's events, checked against their checksum."""
        with self.engine.connect() as conn:
            row = conn.execute(select(windows.c.data, windows.c.sha256)
                               .where(windows.c.id == window_id)).one_or_none()
        if row is None:
            raise KeyError(f"no sealed window {window_id}")
        if hashlib.sha256(row.data).hexdigest() != row.sha256:
            raise CorruptWindow(f"window {window_id}: stored events do not match their sha256")
        return codec.decode(row.data)

    def windows_after(self, window_id: int) -> list[tuple[int, pa.Table]]:
        """(id, events) of the sealed windows newer than ``window_id``, oldest first, checksums verified."""
        with self.engine.connect() as conn:
            ids = conn.execute(select(windows.c.id).where(windows.c.id > window_id)
                               .order_by(windows.c.id)).scalars().all()
        return [(i, self.load_window(i)) for i in ids]

    def new_segments(self, known: set[tuple[int, int]]) -> tuple[set[tuple[int, int]], list[pa.Table]]:
        """The open segments now stored, as ``(id, first_ingested_at)`` keys, and the events of those
        not in ``known``. Keys, not ids alone, identify a segment: SQLite may reuse a sealed one's id."""
        with self.engine.connect() as conn:
            keys = {tuple(k) for k in conn.execute(select(open_segments.c.id, open_segments.c.first_ingested_at))}
            fresh = keys - known
            rows = conn.execute(select(open_segments.c.id, open_segments.c.first_ingested_at, open_segments.c.data)
                                .where(open_segments.c.id.in_([k[0] for k in fresh]))
                                .order_by(open_segments.c.id)).all() if fresh else []
        return keys, [codec.decode(r.data) for r in rows if (r.id, r.first_ingested_at) in fresh]

    def load_open(self) -> pa.Table:
        """The events of the open window, oldest segment first."""
        with self.engine.connect() as conn:
            blobs = conn.execute(select(open_segments.c.data).order_by(open_segments.c.id)).scalars().all()
        return codec.concat([codec.decode(b) for b in blobs])

    def unpublished_notices(self) -> list[SealedWindow]:
        """Sealed windows whose notice has not reached the control topic yet (an outbox)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(windows.c.id, windows.c.n_events, windows.c.seal_reason, windows.c.sealed_at)
                                .where(windows.c.notice_published.is_(False)).order_by(windows.c.id)).all()
        return [SealedWindow(*r) for r in rows]

    def mark_notices_published(self, window_ids: list[int]) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(windows).where(windows.c.id.in_(window_ids)).values(notice_published=True))

    def claim_trigger(self, window_id: int, worker: str, now_ms: int) -> bool:
        """Record that ``worker`` received a window's notice; True for exactly one caller per window."""
        with self.engine.begin() as conn:
            return conn.execute(update(windows).where(windows.c.id == window_id,
                                                      windows.c.trigger_claimed_by.is_(None))
                                .values(trigger_claimed_by=worker, trigger_claimed_at=now_ms)).rowcount == 1

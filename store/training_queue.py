"""Training work leased from the store: which sealed windows wait, who trains them, until when.

Every sealed window starts ``pending``. A trainer (any process, on any host, named by its
trainer id) takes a job with :func:`claim_job`: the oldest pending windows, up to a number of
events, under a lease it renews while it trains (:func:`renew_lease`). One job trains at a
time (a lineage lease): while any trainer holds a live lease, the others stand by, so each
job fine-tunes the version the previous job published and a promoted version has learnt
every window before it; several trainers give availability, not parallel lineages that
would overwrite each other's learning. The version it
publishes marks them ``trained`` in the publishing transaction, fenced by the lease
(:func:`complete_job`): a trainer that lost its lease publishes nothing. A lease that expires
(its trainer killed, its host gone, cut off by the network) is taken over by whichever
trainer claims next. A window whose job raised an error (or whose trainer died twice) is
retried alone, and after ``max_tries`` attempts it is marked ``failed`` with the reason,
while later windows keep training.

On Postgres, claims take a transaction-scoped advisory lock first, so two of them never both
see the lineage free; on SQLite, the single writer serialises them. Either way the leasing
UPDATE only takes rows that are still free, so two trainers never hold the same window.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Engine, and_, case, func, or_, select, text, update
from sqlalchemy.exc import OperationalError

from store import db
from store.models import model_versions, training_runs, windows

CANDIDATES = 10_000  # most windows looked at by one claim
LINEAGE_LOCK = 0x5EC7_11AE  # Postgres advisory lock key that serialises claims


class LeaseLost(RuntimeError):
    """The trainer's lease on its windows expired and another trainer may have taken them."""


@dataclass(frozen=True)
class Job:
    """Windows leased to one trainer: ids oldest first, their events, and until when the lease holds."""

    window_ids: list[int]
    n_events: int
    lease_expires_at: int
    retry: bool  # the window failed before (an error, or its trainer died twice): it is trained alone

    @property
    def newest(self) -> int:
        return self.window_ids[-1]


def _live_lease(now_ms: int, besides: list[int] = ()):
    """Whether a window (other than ``besides``) is leased to a trainer whose lease still holds.
    Also part of the leasing UPDATE, so that on SQLite, where claims read outside the write
    transaction, two claims never both lease."""
    other = windows.alias("other")
    return select(other.c.id).where(other.c.train_state == "leased", other.c.lease_expires_at >= now_ms,
                                    other.c.id.not_in(list(besides))).exists()


def _free(now_ms: int):
    """Windows a claim may take: pending, or leased to a trainer whose lease has expired."""
    return or_(windows.c.train_state == "pending",
               and_(windows.c.train_state == "leased", windows.c.lease_expires_at < now_ms))


def claim_job(engine: Engine, trainer_id: str, now_ms: int, *, lease_s: float, max_events: int,
              min_events: int = 1, max_wait_s: float = 0.0, max_tries: int = 3) -> Job | None:
    """Lease the oldest free windows to ``trainer_id``, or None when there is no job yet.

    None while another job holds a live lease (one lineage: see the module docstring). A job
    takes windows in id order while their events stay within ``max_events`` (always at least
    one window). It waits until the free windows hold ``min_events`` events or the oldest
    sealed ``max_wait_s`` ago. A window that failed before (see :func:`_suspect`) is leased
    alone. Windows whose lease expired after ``max_tries`` attempts are marked failed, and the
    runs of the trainer that held them are closed as failed.
    """
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LINEAGE_LOCK})
            if conn.execute(select(_live_lease(now_ms))).scalar():
                return None
            _fail_exhausted(conn, now_ms, max_tries)
            columns = (windows.c.id, windows.c.n_events, windows.c.sealed_at, windows.c.train_attempts,
                       windows.c.train_error, windows.c.lease_owner)
            free = conn.execute(select(*columns).where(_free(now_ms)).order_by(windows.c.id).limit(CANDIDATES)).all()
            if not free:
                return None
            if sum(r.n_events for r in free) < min_events and now_ms - free[0].sealed_at < max_wait_s * 1000:
                return None
            # lock only as many rows as the job needs, skipping rows other trainers are claiming right now
            rows = conn.execute(select(*columns).where(_free(now_ms)).order_by(windows.c.id)
                                .limit(len(_job_of(free, max_events))).with_for_update(skip_locked=True)).all()
            if not rows:
                return None
            taken = _job_of(rows, max_events)
            total = sum(r.n_events for r in taken)
            ids = [r.id for r in taken]
            expires = now_ms + round(lease_s * 1000)
            leased = conn.execute(update(windows).where(windows.c.id.in_(ids), _free(now_ms),
                                                        ~_live_lease(now_ms, besides=ids)).values(
                train_state="leased", lease_owner=trainer_id, lease_expires_at=expires,
                train_attempts=windows.c.train_attempts + 1)).rowcount
            if leased != len(ids):
                raise _Raced  # another trainer took some of them or a job meanwhile (SQLite): roll back, try later
            _fail_runs_of(conn, {r.lease_owner for r in taken if r.lease_owner}, now_ms,
                          "the trainer's lease expired before it finished (process, host or network gone)")
            return Job(ids, total, expires, retry=_suspect(taken[0]))
    except _Raced:
        return None
    except OperationalError as exc:
        if "locked" in str(exc.orig or exc).lower():  # SQLite: another writer holds the store
            return None
        raise


class _Raced(Exception):
    """A claim lost a race for some of its rows."""


def _suspect(row) -> bool:
    """A window whose job raised an error, or whose trainer died twice: it may be the cause."""
    return row.train_error is not None or row.train_attempts >= 2


def _job_of(rows, max_events: int) -> list:
    """The oldest rows within ``max_events`` (at least one); a suspect row goes alone."""
    taken, total = [rows[0]], rows[0].n_events
    if not _suspect(rows[0]):
        for row in rows[1:]:
            if _suspect(row) or total + row.n_events > max_events:
                break
            taken.append(row)
            total += row.n_events
    return taken


def _fail_exhausted(conn: Connection, now_ms: int, max_tries: int) -> None:
    """Expired leases of windows tried ``max_tries`` times: the windows fail, with their runs."""
    dead = conn.execute(select(windows.c.id, windows.c.lease_owner).where(
        windows.c.train_state == "leased", windows.c.lease_expires_at < now_ms,
        windows.c.train_attempts >= max_tries)).all()
    if not dead:
        return
    reason = f"its trainer's lease expired {max_tries} times (the training process keeps dying)"
    conn.execute(update(windows).where(windows.c.id.in_([d.id for d in dead])).values(
        train_state="failed", lease_owner=None, lease_expires_at=None, train_error=reason))
    _fail_runs_of(conn, {d.lease_owner for d in dead}, now_ms, "the trainer's lease expired before it finished")


def _fail_runs_of(conn: Connection, trainers: set[str], now_ms: int, error: str) -> None:
    if trainers:
        conn.execute(update(training_runs).where(training_runs.c.worker.in_(sorted(trainers)),
                                                 training_runs.c.status == "running")
                     .values(status="failed", finished_at=now_ms, error=error))


def renew_lease(engine: Engine, trainer_id: str, job: Job, now_ms: int, lease_s: float) -> bool:
    """Extend the lease on ``job``'s windows; False when it was lost (then stop and publish nothing)."""
    with engine.begin() as conn:
        renewed = conn.execute(update(windows).where(
            windows.c.id.in_(job.window_ids), windows.c.lease_owner == trainer_id,
            windows.c.train_state == "leased").values(lease_expires_at=now_ms + round(lease_s * 1000))).rowcount
    return renewed == len(job.window_ids)


def complete_job(conn: Connection, trainer_id: str | None, window_ids: list[int], version_id: int | None) -> None:
    """Mark the windows trained by ``version_id``, in the caller's (publishing) transaction.

    Raises :class:`LeaseLost` unless ``trainer_id`` still holds every one of them (None: the
    windows were trained without a lease, e.g. by a test or a benchmark).
    """
    query = update(windows).where(windows.c.id.in_(window_ids))
    if trainer_id is not None:
        query = query.where(windows.c.lease_owner == trainer_id, windows.c.train_state == "leased")
    done = conn.execute(query.values(train_state="trained", version_id=version_id, lease_owner=None,
                                     lease_expires_at=None, train_error=None)).rowcount
    if done != len(window_ids):
        raise LeaseLost(f"{trainer_id} no longer holds the lease on windows {window_ids}")


def release_job(engine: Engine, trainer_id: str, job: Job, error: str, max_tries: int) -> list[int]:
    """A job failed with ``error``: its windows wait again (tried alone next), or fail for good after
    ``max_tries`` attempts; returns the ids that failed for good."""
    with engine.begin() as conn:
        mine = and_(windows.c.id.in_(job.window_ids), windows.c.lease_owner == trainer_id)
        failed = conn.execute(select(windows.c.id).where(mine, windows.c.train_attempts >= max_tries)).scalars().all()
        conn.execute(update(windows).where(mine).values(
            train_state=case((windows.c.train_attempts >= max_tries, "failed"), else_="pending"),
            lease_owner=None, lease_expires_at=None, train_error=error[:2000]))
    return list(failed)


def return_job(engine: Engine, trainer_id: str, job: Job) -> None:
    """Hand a job back at once, uncounted (its trainer was asked to stop): the windows wait again,
    and a run the trainer had open is closed as failed."""
    with engine.begin() as conn:
        conn.execute(update(windows).where(windows.c.id.in_(job.window_ids), windows.c.lease_owner == trainer_id)
                     .values(train_state="pending", lease_owner=None, lease_expires_at=None,
                             train_attempts=windows.c.train_attempts - 1))
        _fail_runs_of(conn, {trainer_id}, db.now_ms(), "the trainer was stopped before it finished")


def backlog(engine: Engine, now_ms: int) -> dict:
    """What waits to be trained (windows, events, the oldest wait), leases held, windows failed, and
    ``serving_staleness_s``: seconds since the newest window of the serving version sealed."""
    with engine.connect() as conn:
        rows = conn.execute(select(windows.c.train_state, func.count(), func.coalesce(func.sum(windows.c.n_events), 0),
                                   func.min(windows.c.sealed_at)).group_by(windows.c.train_state)).all()
        failed = conn.execute(select(windows.c.id, windows.c.train_error).where(windows.c.train_state == "failed")
                              .order_by(windows.c.id.desc()).limit(20)).all()
        serving = conn.execute(select(model_versions.c.windows).where(model_versions.c.status == "promoted")
                               .order_by(model_versions.c.promoted_at.desc(), model_versions.c.id.desc())
                               .limit(1)).scalar()
        serving_sealed_at = conn.execute(select(func.max(windows.c.sealed_at)).where(
            windows.c.id.in_(serving))).scalar() if serving else None
    by_state = {state: (int(n), int(events), oldest) for state, n, events, oldest in rows}
    waiting = [by_state.get(s, (0, 0, None)) for s in ("pending", "leased")]
    oldest = min((w[2] for w in waiting if w[2] is not None), default=None)
    return {
        "windows_waiting": sum(w[0] for w in waiting), "events_waiting": sum(w[1] for w in waiting),
        "windows_training": by_state.get("leased", (0, 0, None))[0],
        "oldest_waiting_s": None if oldest is None else round((now_ms - oldest) / 1000, 1),
        "windows_trained": by_state.get("trained", (0, 0, None))[0],
        "windows_failed": by_state.get("failed", (0, 0, None))[0],
        "failed": [{"window_id": i, "error": e} for i, e in failed],
        "by_state": {state: n for state, (n, _, _) in by_state.items()},
        "serving_staleness_s": None if serving_sealed_at is None else round((now_ms - serving_sealed_at) / 1000, 1),
    }

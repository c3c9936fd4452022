"""Experiments and canary rollouts in the store.

An experiment splits users between a ``control`` and a ``treatment`` model version; at most
one runs at a time, so a worker holds at most the serving version and the arms' versions.
A canary is an experiment of kind ``canary`` whose treatment is a candidate the offline gate
passed: :func:`place_candidate` starts it (or, while another canary runs, keeps the candidate
``waiting``), and :func:`decide` ends it with a promotion or a rollback. Every such step is a
``rollouts`` row with its reason and evidence.

Decisions are taken once across workers: :func:`decide` updates the experiment from
``running`` to ``stopped`` only if it is still running with the same treatment, in the same
transaction as the version's new status and the ``rollouts`` row, and does nothing (returns
False) when another worker got there first.

Candidates that pass the gate while a canary runs wait (status ``waiting``); each one is
fine-tuned from the newest candidate (:func:`newest_candidate`), so the newest waiting one
holds everything the others learnt. When the canary is promoted, the newest waiting candidate
starts its canary against it and the older ones are ``superseded``; when it is rolled back, the
waiting ones, its descendants, are ``superseded`` too, and training goes on from the serving
version.
"""

from __future__ import annotations

import re

import orjson
from sqlalchemy import Connection, Engine, func, insert, select, text, update

from store.db import finite_json, now_ms
from store.models import experiments, model_versions, rollouts, served_lists

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
EXPERIMENT_LOCK_ID = 0x5EC0_0002  # Postgres advisory lock held while an experiment starts
CANDIDATE_STATUSES = ("canary", "waiting")


class ExperimentError(RuntimeError):
    """An experiment operation that cannot be done, with the reason; ``kind`` is ``invalid``
    (a wrong argument), ``missing`` (no such version or experiment) or ``conflict`` (the state
    of the store forbids it)."""

    def __init__(self, message: str, kind: str = "conflict"):
        super().__init__(message)
        self.kind = kind


def _serving_id(conn: Connection) -> int | None:
    return conn.execute(select(model_versions.c.id).where(model_versions.c.status == "promoted")
                        .order_by(model_versions.c.promoted_at.desc(), model_versions.c.id.desc())
                        .limit(1)).scalar_one_or_none()


def running_experiment(engine: Engine) -> dict | None:
    """The running experiment, or None."""
    with engine.connect() as conn:
        row = conn.execute(select(experiments).where(experiments.c.status == "running")
                           .order_by(experiments.c.started_at.desc()).limit(1)).mappings().one_or_none()
    return dict(row) if row else None


def get_experiment(engine: Engine, name: str) -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(select(experiments).where(experiments.c.name == name)).mappings().one_or_none()
    return dict(row) if row else None


def list_experiments(engine: Engine, limit: int | None = None) -> list[dict]:
    """Experiments, the running one first, then the newest."""
    with engine.connect() as conn:
        rows = conn.execute(select(experiments).order_by((experiments.c.status == "running").desc(),
                                                          experiments.c.started_at.desc()).limit(limit)).mappings()
        return [dict(r) for r in rows]


def _start(conn: Connection, name: str, kind: str, control: int, treatment: int, share: float, salt: str) -> dict:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": EXPERIMENT_LOCK_ID})
    running = conn.execute(select(experiments.c.name).where(experiments.c.status == "running")).scalar_one_or_none()
    if running is not None:
        raise ExperimentError(f"experiment {running!r} is running; stop it first (one experiment at a time)")
    if conn.execute(select(experiments.c.name).where(experiments.c.name == name)).first():
        raise ExperimentError(f"an experiment named {name!r} ran before; choose another name")
    row = {"name": name, "kind": kind, "status": "running", "control_version": control,
           "treatment_version": treatment, "share": share, "salt": salt, "started_at": now_ms(),
           "stopped_at": None, "stop_reason": None}
    conn.execute(insert(experiments).values(**row))
    return row


def start_experiment(engine: Engine, name: str, treatment: int, control: int | None = None, share: float = 0.5,
                     salt: str | None = None, kind: str = "manual") -> dict:
    """Start an experiment of ``treatment`` against ``control`` (default: the serving version);
    returns its row. Versions of any status may be arms. ``kind`` ``manual`` splits users,
    ``share`` of them into the treatment arm; ``interleave`` gives ``share`` of users (up to all)
    lists interleaved from both versions (``drift.experiments.team_draft``)."""
    if not NAME.match(name):
        raise ExperimentError(f"experiment name {name[:80]!r} must be 1 to 64 letters, digits, '.', '_' or '-'",
                              "invalid")
    if kind not in ("manual", "interleave"):
        raise ExperimentError(f"kind must be 'manual' or 'interleave', got {kind[:32]!r}", "invalid")
    if not (0 < share <= 1 if kind == "interleave" else 0 < share < 1):
        raise ExperimentError(f"share must be between 0 and 1 ({'1 included' if kind == 'interleave' else 'exclusive'})"
                              f", got {share}", "invalid")
    with engine.begin() as conn:
        if control is None:
            control = _serving_id(conn)
            if control is None:
                raise ExperimentError("no version serves: name the control version")
        if control == treatment:
            raise ExperimentError(f"control and treatment are both version {control}", "invalid")
        known = set(conn.execute(select(model_versions.c.id).where(model_versions.c.id.in_([control, treatment])))
                    .scalars())
        for version in (control, treatment):
            if version not in known:
                raise ExperimentError(f"no model version {version}", "missing")
        return _start(conn, name, kind, control, treatment, share, salt or name)


def _record(conn: Connection, version_id: int, decision: str, reason: str, by: str, baseline: int | None = None,
            experiment: str | None = None, evidence: dict | None = None) -> None:
    conn.execute(insert(rollouts).values(
        version_id=version_id, baseline_version=baseline, experiment=experiment, decision=decision, reason=reason,
        evidence=finite_json(evidence or {}), decided_by=by, decided_at=now_ms()))


def _start_canary(conn: Connection, version_id: int, serving: int, share: float, by: str, why: str) -> None:
    name = f"canary-v{version_id}"
    _start(conn, name, "canary", serving, version_id, share, name)
    conn.execute(update(model_versions).where(model_versions.c.id == version_id)
                 .values(status="canary", promoted_at=None))
    _record(conn, version_id, "canary", f"{why}; serves {share:.0%} of users against version {serving}", by,
            serving, name, {"share": share})


def place_candidate(conn: Connection, version_id: int, share: float, by: str) -> str:
    """Put a candidate the gate passed into rollout, in the transaction that stores it: its canary
    starts against the serving version, or it waits while another canary runs, or it is promoted
    at once when no version serves. Returns its status."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": EXPERIMENT_LOCK_ID})
    serving = _serving_id(conn)
    if serving is None:
        conn.execute(update(model_versions).where(model_versions.c.id == version_id)
                     .values(status="promoted", promoted_at=now_ms()))
        _record(conn, version_id, "promoted", "no version serves: nothing to run a canary against", by)
        return "promoted"
    running = conn.execute(select(experiments).where(experiments.c.status == "running")).mappings().one_or_none()
    if running is not None:
        conn.execute(update(model_versions).where(model_versions.c.id == version_id)
                     .values(status="waiting", promoted_at=None))
        _record(conn, version_id, "waiting", f"experiment {running['name']!r} is running; this candidate waits "
                                             "for it to end", by, serving, running["name"])
        return "waiting"
    _start_canary(conn, version_id, serving, share, by, "passed the offline gate")
    return "canary"


def decide(engine: Engine, name: str, treatment: int, decision: str, reason: str, evidence: dict, by: str,
           share: float) -> bool:
    """End experiment ``name`` (still running with ``treatment``) with ``decision``: ``promoted``
    (a canary's candidate serves from now on), ``rolled_back`` (it never serves) or ``stopped``
    (a manual experiment: versions unchanged). Returns False, changing nothing, when the
    experiment was already ended (by another worker). Waiting candidates are then handled as the
    module doc says; ``share`` is the next canary's."""
    with engine.begin() as conn:
        ended = conn.execute(update(experiments).where(
            experiments.c.name == name, experiments.c.status == "running",
            experiments.c.treatment_version == treatment).values(
            status="stopped", stopped_at=now_ms(), stop_reason=f"{decision}: {reason}"[:4000])).rowcount
        if ended != 1:
            return False
        kind, control = conn.execute(select(experiments.c.kind, experiments.c.control_version)
                                     .where(experiments.c.name == name)).one()
        if kind != "canary":
            return True
        if decision == "promoted":
            conn.execute(update(model_versions).where(model_versions.c.id == treatment)
                         .values(status="promoted", promoted_at=now_ms()))
        else:
            conn.execute(update(model_versions).where(model_versions.c.id == treatment)
                         .values(status="rolled_back", promoted_at=None))
        _record(conn, treatment, decision, reason, by, control, name, evidence)
        waiting = conn.execute(select(model_versions.c.id).where(model_versions.c.status == "waiting")
                               .order_by(model_versions.c.id.desc())).scalars().all()
        if decision == "promoted" and waiting:
            _start_canary(conn, waiting[0], treatment, share, by,
                          f"the newest candidate waiting while version {treatment}'s canary ran")
            waiting = waiting[1:]
            why = f"version {treatment} was promoted and a newer candidate's canary started"
        else:
            why = f"version {treatment}, which it was fine-tuned from, was rolled back"
        for version in waiting:
            conn.execute(update(model_versions).where(model_versions.c.id == version).values(status="superseded"))
            _record(conn, version, "superseded", why, by, control if decision != "promoted" else treatment)
    return True


def stop_experiment(engine: Engine, name: str, by: str, share: float, reason: str = "stopped by hand") -> dict:
    """Stop a running experiment; a canary's candidate is rolled back (it never serves). Returns the
    experiment as it was."""
    experiment = get_experiment(engine, name)
    if experiment is None:
        raise ExperimentError(f"no experiment named {name[:80]!r}", "missing")
    if experiment["status"] != "running":
        raise ExperimentError(f"experiment {name!r} already stopped ({experiment['stop_reason']})")
    decision = "rolled_back" if experiment["kind"] == "canary" else "stopped"
    if not decide(engine, name, experiment["treatment_version"], decision, reason, {}, by, share):
        raise ExperimentError(f"experiment {name!r} was ended meanwhile")
    return experiment


def newest_candidate(engine: Engine) -> int | None:
    """The newest version in canary or waiting, which the next training job fine-tunes; None when none."""
    with engine.connect() as conn:
        return conn.execute(select(func.max(model_versions.c.id))
                            .where(model_versions.c.status.in_(CANDIDATE_STATUSES))).scalar_one_or_none()


def list_rollouts(engine: Engine, limit: int | None = None) -> list[dict]:
    """Rollout decisions, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(rollouts).order_by(rollouts.c.id.desc()).limit(limit)).mappings().all()
    return [dict(r) | {"evidence": r["evidence"] if isinstance(r["evidence"], dict) else orjson.loads(r["evidence"])}
            for r in rows]


def experiment_lists(engine: Engine, name: str) -> list[dict]:
    """The lists served in experiment ``name``: request id, user, arm, time, status, items,
    their count, the team of each item (interleaved lists) and latency."""
    t = served_lists
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.request_id, t.c.user_id, t.c.arm, t.c.served_at, t.c.status, t.c["items"],
                                   t.c.teams, t.c.latency_ms).where(t.c.experiment == name)).all()
    return [{"request_id": r.request_id, "user_id": r.user_id, "arm": r.arm, "served_at": r.served_at,
             "status": r.status or 200, "items": _json(r.items), "n_items": len(_json(r.items)),
             "teams": _json(r.teams), "latency_ms": r.latency_ms} for r in rows]


def _json(value):
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value

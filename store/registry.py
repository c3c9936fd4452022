"""The model registry: training runs, model versions with lineage, promotion and rollback.

The serving version is the ``promoted`` version promoted most recently. A version row,
weights included, is written in the same transaction that closes its training run, so a
run killed at any point leaves no half-written version, only a run still marked running.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sqlalchemy import Connection, Engine, func, insert, select, update

from store.db import finite_json, now_ms, upsert
from store.models import model_versions, text_embeddings, training_runs

VERSION_COLUMNS = [c for c in model_versions.c if c.name != "weights"]


class RegistryError(RuntimeError):
    """A registry operation that cannot be done, with the reason."""


def start_run(engine: Engine, window_ids: int | list[int], worker: str) -> int:
    """Open a run of ``worker`` (a trainer id) on one window or a job's windows; returns its id."""
    window_ids = [window_ids] if isinstance(window_ids, int) else list(window_ids)
    with engine.begin() as conn:
        return conn.execute(insert(training_runs).values(
            window_id=max(window_ids, default=0), windows=window_ids, status="running", worker=worker,
            started_at=now_ms())
            .returning(training_runs.c.id)).scalar_one()


def finish_run(engine: Engine, run_id: int, version: dict | None = None, log: list | None = None,
               error: str | None = None, also: Callable[[Connection, int | None], None] | None = None) -> int | None:
    """Close a run as succeeded (storing ``version``, a ``model_versions`` row) or failed; returns the version id.

    ``also(conn, version_id)`` writes more in the same transaction (the window's drift metrics).
    Safe to call again after a lost connection: a run already closed is left as it is.
    """
    with engine.begin() as conn:
        closed = conn.execute(select(training_runs.c.status, training_runs.c.version_id)
                              .where(training_runs.c.id == run_id)).one()
        if closed.status != "running":
            return closed.version_id
        version_id = None
        if version is not None:
            version = {**version, "metrics": finite_json(version["metrics"])}
            version_id = conn.execute(insert(model_versions).values(**version)
                                      .returning(model_versions.c.id)).scalar_one()
        if also is not None:
            also(conn, version_id)
        conn.execute(update(training_runs).where(training_runs.c.id == run_id).values(
            status="failed" if error else "succeeded", version_id=version_id, finished_at=now_ms(),
            error=error, log=finite_json(log)))
    return version_id


def run_totals(engine: Engine) -> dict[str, int]:
    """Training runs per status (``running``, ``succeeded``, ``failed``), versions per status
    (``promoted``, ``rejected``, ``rolled_back``), and finished ``jobs`` with their ``job_seconds``."""
    with engine.connect() as conn:
        runs = dict(conn.execute(select(training_runs.c.status, func.count()).group_by(training_runs.c.status)).all())
        jobs, job_ms = conn.execute(select(func.count(), func.coalesce(func.sum(
            training_runs.c.finished_at - training_runs.c.started_at), 0)).where(
            training_runs.c.finished_at.is_not(None))).one()
        versions = dict(conn.execute(select(model_versions.c.status, func.count())
                                     .group_by(model_versions.c.status)).all())
    return {"running": runs.get("running", 0), "succeeded": runs.get("succeeded", 0),
            "failed": runs.get("failed", 0), "promoted": versions.get("promoted", 0),
            "rejected": versions.get("rejected", 0), "rolled_back": versions.get("rolled_back", 0),
            "jobs": int(jobs), "job_seconds": int(job_ms) / 1000}


def serving_version(engine: Engine) -> dict | None:
    """The version that serves (newest promotion), without its weights."""
    with engine.connect() as conn:
        row = conn.execute(select(*VERSION_COLUMNS).where(model_versions.c.status == "promoted")
                           .order_by(model_versions.c.promoted_at.desc(), model_versions.c.id.desc())
                           .limit(1)).mappings().one_or_none()
    return dict(row) if row else None


def version_weights(engine: Engine, version_id: int) -> tuple[bytes, str]:
    """(safetensors bytes, their expected sha256) of a version."""
    with engine.connect() as conn:
        row = conn.execute(select(model_versions.c.weights, model_versions.c.sha256)
                           .where(model_versions.c.id == version_id)).one_or_none()
    if row is None:
        raise RegistryError(f"no model version {version_id}")
    return row.weights, row.sha256


def list_versions(engine: Engine, limit: int | None = None, ids: list[int] | None = None) -> list[dict]:
    """Versions without their weights, newest first (only ``ids`` when given)."""
    query = select(*VERSION_COLUMNS).order_by(model_versions.c.id.desc()).limit(limit)
    if ids is not None:
        query = query.where(model_versions.c.id.in_(ids))
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def list_runs(engine: Engine, limit: int | None = None, status: str | None = None) -> list[dict]:
    """Training runs, newest first (only those with ``status`` if given)."""
    query = select(training_runs).order_by(training_runs.c.id.desc()).limit(limit)
    if status is not None:
        query = query.where(training_runs.c.status == status)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def promote(engine: Engine, version_id: int) -> None:
    """Make ``version_id`` the serving version, whatever the gate said of it."""
    with engine.begin() as conn:
        if conn.execute(update(model_versions).where(model_versions.c.id == version_id)
                        .values(status="promoted", promoted_at=now_ms())).rowcount != 1:
            raise RegistryError(f"no model version {version_id}")


def rollback(engine: Engine) -> tuple[int, int]:
    """Retire the serving version; the one promoted before it serves again. Returns (from, to)."""
    with engine.begin() as conn:
        promoted = conn.execute(select(model_versions.c.id).where(model_versions.c.status == "promoted")
                                .order_by(model_versions.c.promoted_at.desc(), model_versions.c.id.desc())
                                .limit(2)).scalars().all()
        if len(promoted) < 2:
            raise RegistryError("nothing to roll back to: fewer than two promoted versions")
        conn.execute(update(model_versions).where(model_versions.c.id == promoted[0]).values(status="rolled_back"))
    return promoted[0], promoted[1]


FLOAT32_VECTOR_BYTES = 4 * 384
"""The size of a MiniLM vector stored as float32, as earlier releases did."""


class StoredTextEmbeddings(dict):
    """Text embeddings cached in the store, loaded at once; new ones are saved with :meth:`save`
    (the store implementation of ``learner.text_cache.KeptTextCache``).

    Vectors are stored as float16 (768 bytes each); rows written as float32 by earlier
    releases (1,536 bytes) are read as they are.
    """

    def __init__(self, engine: Engine):
        with engine.connect() as conn:
            rows = conn.execute(select(text_embeddings.c.key, text_embeddings.c.vector)).all()
        super().__init__((key, np.frombuffer(vector, dtype="<f4" if len(vector) == FLOAT32_VECTOR_BYTES else "<f2"))
                         for key, vector in rows)
        self.engine = engine
        self.added: set[str] = set()

    def __setitem__(self, key: str, vector) -> None:
        super().__setitem__(key, vector)
        self.added.add(key)

    def save(self) -> int:
        """Store the embeddings computed since loading (others may store the same ones); returns how many."""
        if self.added:
            store_text_embeddings(self.engine, {key: self[key] for key in self.added})
        saved, self.added = len(self.added), set()
        return saved


def store_text_embeddings(engine: Engine, vectors: dict) -> None:
    """Cache ``vectors`` (key -> MiniLM vector) in the store, as float16; keys already there are kept.
    Rows go in key order, so two processes storing overlapping keys at once lock them in the same
    order and never deadlock on Postgres."""
    if vectors:
        rows = [{"key": key, "vector": np.asarray(vectors[key], dtype="<f2").tobytes()} for key in sorted(vectors)]
        with engine.begin() as conn:
            conn.execute(upsert(conn, text_embeddings).on_conflict_do_nothing(index_elements=["key"]), rows)


def cached_text_keys(engine: Engine) -> set[str]:
    """The keys of every text embedding cached in the store."""
    with engine.connect() as conn:
        return set(conn.execute(select(text_embeddings.c.key)).scalars())

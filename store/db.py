"""Engine creation and schema migration (Alembic, run at worker start, idempotent)."""

from __future__ import annotations

import fcntl
import math
import sqlite3
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK_ID = 0x5EC0_0001  # Postgres advisory lock held while migrating


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL mode and their folder created."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, future=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, future=True, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        _wal(cur, deadline=time.monotonic() + 30)
        cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


def _wal(cur, deadline: float) -> None:
    """Switch a SQLite connection to WAL mode. Processes that open one file at once (a worker and
    its ingest processes at start) can be refused with "database is locked" without SQLite's busy
    timeout being applied (the switch needs an exclusive lock another opener may hold): retry
    until ``deadline``."""
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def now_ms() -> int:
    """The time as the store records it: epoch milliseconds, UTC."""
    return time.time_ns() // 1_000_000


def finite_json(value):
    """``value`` with every NaN or infinite float replaced by None, so no JSON column ever holds one
    (Postgres refuses them; other readers choke on them).

    >>> finite_json({"recall@20": float("nan"), "runs": [1.5, float("inf")], "name": "v1"})
    {'recall@20': None, 'runs': [1.5, None], 'name': 'v1'}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def upsert(conn: Connection, table):
    """The dialect's INSERT that supports ON CONFLICT."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def alembic_config(engine_url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine_url.replace("%", "%%"))
    return cfg


_migrate_lock = threading.Lock()  # Alembic keeps module-level state: one migration per process at a time


@contextmanager
def _sqlite_file_lock(engine: Engine):
    """Serialise migrations of one SQLite file across processes."""
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class SchemaNotCurrent(RuntimeError):
    """The store's schema is missing, behind this code's migrations, or newer than them."""


def schema_revisions(engine: Engine) -> tuple[str | None, str, set[str]]:
    """(the store's schema revision, None when it has none; the newest this code knows; every
    revision it knows). Reads only: nothing is created."""
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    script = ScriptDirectory.from_config(alembic_config(engine.url.render_as_string(hide_password=False)))
    return current, script.get_current_head(), {r.revision for r in script.walk_revisions()}


def require_current_schema(engine: Engine) -> None:
    """Raise :class:`SchemaNotCurrent` unless the store's schema is exactly this code's newest (never migrates).

    >>> import tempfile
    >>> engine = make_engine(f"sqlite:///{tempfile.mkdtemp()}/store.db")
    >>> require_current_schema(engine)
    Traceback (most recent call last):
    ...
    store.db.SchemaNotCurrent: has no schema yet
    >>> migrate(engine)
    >>> require_current_schema(engine)
    """
    current, head, known = schema_revisions(engine)
    if current == head:
        return
    if current is None:
        raise SchemaNotCurrent("has no schema yet")
    if current in known:
        raise SchemaNotCurrent(f"has schema revision {current}, behind this streamrec's {head}")
    raise SchemaNotCurrent(f"has schema revision {current}, which this streamrec does not know (its newest is "
                           f"{head}): it was migrated by a newer streamrec")


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision``; safe to call from several workers at once."""
    file_lock = _sqlite_file_lock(engine) if engine.dialect.name == "sqlite" else nullcontext()
    with _migrate_lock, file_lock, engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        cfg = alembic_config(engine.url.render_as_string(hide_password=False))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

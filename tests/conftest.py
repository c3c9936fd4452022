"""Real parts for tests: the bundled Kafka-compatible broker and a fresh database per test.

``STREAMREC_TEST_POSTGRES`` (default ``postgresql+psycopg2://postgres@127.0.0.1:5432/postgres``)
names the server on which a throwaway database is created for each test that asks for one.

``pytest --quick`` (``./dev test --quick``) runs the quick tier: doctests and tests on SQLite,
MiniLM and in-process parts, leaving out what needs the broker, Postgres or Chromium, and tests
marked ``slow``.
"""

from __future__ import annotations

import os
import time
import uuid

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from replay import codec
from replay.memory import make_memory
from replay.windows import WindowPolicy
from runtime.config import Config
from runtime.processes import free_port, start_broker, stop
from store.db import make_engine, migrate
from store.ingest import IngestBatch, IngestWriter, Source
from store.replay import ReplayStore
from streams import movielens
from tests.harness import MOVIELENS_STORE_ENV, MOVIELENS_WINDOW_EVENTS, store_text_vectors

POSTGRES_ADMIN_URL = os.environ.get("STREAMREC_TEST_POSTGRES",
                                    "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true",
                     help="the quick tier: no broker, Postgres or Chromium, no slow tests")


def pytest_collection_modifyitems(config, items):
    """With ``--quick``, deselect tests of the full tier (see the module docstring)."""
    if not config.getoption("--quick"):
        return
    full = [item for item in items if any(item.get_closest_marker(m) for m in ("broker", "chromium", "slow"))
            or getattr(item, "callspec", None) and "postgres" in item.callspec.params.values()]
    if full:
        config.hook.pytest_deselected(items=full)
        items[:] = [item for item in items if item not in full]


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """Bootstrap address of a fresh in-memory broker on a free loopback port."""
    port = free_port()
    proc = start_broker(port, log=tmp_path_factory.mktemp("broker") / "broker.log")
    yield f"127.0.0.1:{port}"
    stop(proc)


def _fresh_postgres_database() -> tuple[str, callable]:
    name = f"streamrec_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    def drop():
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request, tmp_path):
    """A URL of an empty database: a fresh Postgres database, or a SQLite file."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'streamrec.db'}"
        return
    url, drop = _fresh_postgres_database()
    yield url
    drop()


@pytest.fixture
def topic_prefix():
    """Unique topic names per test, so tests sharing a broker never see each other's messages."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def engine(database_url):
    """An engine on a fresh, migrated database (Postgres and SQLite)."""
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def movielens_text_vectors() -> dict[str, np.ndarray]:
    """Pretrained MiniLM's vectors of the MovieLens catalog's item texts, by cache key, encoded
    once for the session. Tests about something other than text encoding start from them (a
    copy, or :func:`tests.harness.store_text_vectors`) instead of encoding the 1,682 texts again."""
    from learner.text import TextEncoder, catalog_texts, embed_texts
    from streams import movielens

    vectors = {}
    texts = catalog_texts(pd.DataFrame(movielens.to_catalog(movielens.load_movies())))
    embed_texts(list(texts.values()), TextEncoder(), vectors)
    return vectors


@pytest.fixture
def movielens_store(database_url, movielens_text_vectors):
    """(engine, config) of a store with three sealed windows of MovieLens events and the catalog
    (its texts' vectors stored), with :data:`MOVIELENS_STORE_ENV` as settings."""
    store_text_vectors(database_url, movielens_text_vectors)
    engine = make_engine(database_url)
    migrate(engine)
    now = time.time_ns() // 1_000_000
    writer = IngestWriter(engine, "g", 10 ** 8)
    catalog = [c | {"ts": now} for c in movielens.to_catalog(movielens.load_movies())]
    writer.write(IngestBatch(received_at=now, items=catalog, offsets={("catalog", 0): (None, 1)}))
    events = movielens.to_events(movielens.load_ratings(), now)[:3 * MOVIELENS_WINDOW_EVENTS]
    writer.write(IngestBatch(received_at=now, offsets={("events", 0): (None, len(events))},
                             events=codec.to_table(events),
                             sources=[Source("events", 0, i, None, b"") for i in range(len(events))]))
    config = Config.from_env({"STREAMREC_DATABASE_URL": database_url, **MOVIELENS_STORE_ENV})
    replay = ReplayStore(engine, WindowPolicy(MOVIELENS_WINDOW_EVENTS, 3600), lambda: make_memory(
        config.rehearsal_policy, config.rehearsal_capacity, config.seed))
    assert [w.id for w in replay.seal_due(now)] == [1, 2, 3]
    yield engine, config
    engine.dispose()

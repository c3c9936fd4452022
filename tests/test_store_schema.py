"""The migrations build exactly the tables that ``store/models.py`` declares, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from store.models import metadata


def test_migrations_build_the_declared_tables(engine):
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert differences == [], "store/models.py and store/migrations disagree:\n" + "\n".join(map(str, differences))

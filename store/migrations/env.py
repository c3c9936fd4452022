"""Alembic environment: runs on the connection handed over by :func:`store.db.migrate`."""

from alembic import context
from sqlalchemy import create_engine

from store.models import metadata

config = context.config


def run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:  # plain `alembic` command line
    with create_engine(config.get_main_option("sqlalchemy.url")).begin() as conn:
        run(conn)

"""The catalog as stored by ingest: the latest text of every storefront item."""

from __future__ import annotations

import pandas as pd
from sqlalchemy import Engine, func, select

from store.models import items

CATALOG_COLUMNS = ["storefront", "item_id", "title", "description", "category"]


def load_catalog(engine: Engine) -> pd.DataFrame:
    """Every catalog row, with :data:`CATALOG_COLUMNS`."""
    with engine.connect() as conn:
        rows = conn.execute(select(*(items.c[name] for name in CATALOG_COLUMNS))).all()
    return pd.DataFrame(rows, columns=CATALOG_COLUMNS)


def catalog_mark(engine: Engine) -> tuple[int, int | None]:
    """(rows, newest update time): changes whenever an item is added or its text updated."""
    with engine.connect() as conn:
        n, newest = conn.execute(select(func.count(), func.max(items.c.updated_at))).one()
    return int(n), newest

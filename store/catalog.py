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


def catalog_sizes(engine: Engine) -> dict[str, int]:
    """Catalog items per storefront."""
    with engine.connect() as conn:
        rows = conn.execute(select(items.c.storefront, func.count()).group_by(items.c.storefront)).all()
    return {storefront: int(n) for storefront, n in rows}


def catalog_rows(engine: Engine, item_ids: list[str]) -> pd.DataFrame:
    """The catalog rows of ``item_ids`` (of any storefront), with :data:`CATALOG_COLUMNS`."""
    ids, rows = sorted(set(item_ids)), []
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):
            rows += conn.execute(select(*(items.c[name] for name in CATALOG_COLUMNS)).where(
                items.c.item_id.in_(ids[start:start + 500]))).all()
    return pd.DataFrame(rows, columns=CATALOG_COLUMNS)

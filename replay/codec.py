"""The compact form of a run of events: Apache Arrow IPC, zstd-compressed, one column per field.

Open segments, sealed windows and the rehearsal memory are all stored this way, so the
learner loads a window with one read and no per-row parsing.

>>> table = decode(encode([{"event_id": "e1", "type": "click", "user_id": "u1", "item_id": "i1",
...                         "storefront": "default", "ts": 1_763_000_000_000}]))
>>> table.num_rows, table.column("item_id")[0].as_py()
(1, 'i1')
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

EVENT_SCHEMA = pa.schema([
    ("event_id", pa.string()),
    ("type", pa.string()),
    ("user_id", pa.string()),
    ("item_id", pa.string()),
    ("storefront", pa.string()),
    ("ts", pa.int64()),
    ("session_id", pa.string()),
    ("price", pa.float64()),
    ("quantity", pa.int32()),
])
_WRITE_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")


def to_table(events: list[dict]) -> pa.Table:
    """Validated event dicts (as :mod:`streams.validation` returns them) as an Arrow table."""
    return pa.table({name: [e.get(name) for e in events] for name in EVENT_SCHEMA.names}, schema=EVENT_SCHEMA)


def encode(events: list[dict] | pa.Table) -> bytes:
    """Serialise event dicts, or a table with at least :data:`EVENT_SCHEMA`'s columns, to bytes."""
    table = events if isinstance(events, pa.Table) else to_table(events)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_WRITE_OPTIONS) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode(data: bytes) -> pa.Table:
    """The table :func:`encode` wrote."""
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def empty() -> pa.Table:
    return EVENT_SCHEMA.empty_table()


def concat(tables: list[pa.Table]) -> pa.Table:
    """Tables one after the other (an empty event table when there are none)."""
    tables = [t for t in tables if t.num_rows]
    return pa.concat_tables(tables).combine_chunks() if tables else empty()


def to_frame(table: pa.Table) -> pd.DataFrame:
    """The learner's view of events: a pandas DataFrame with the event columns."""
    return table.select(EVENT_SCHEMA.names).to_pandas()

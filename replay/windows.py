"""When the open replay window closes, and what a sealed window says about itself."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class WindowPolicy:
    """A window seals at ``max_events`` events or ``max_age_s`` after its first event, whichever comes first.

    >>> policy = WindowPolicy(max_events=1000, max_age_s=60)
    >>> policy.due(open_events=1200, oldest_ingested_ms=0, now_ms=1_000)
    'size'
    >>> policy.due(open_events=10, oldest_ingested_ms=0, now_ms=61_000)
    'age'
    >>> policy.due(open_events=0, oldest_ingested_ms=None, now_ms=61_000) is None
    True
    """

    max_events: int
    max_age_s: float

    def due(self, open_events: int, oldest_ingested_ms: int | None, now_ms: int) -> str | None:
        """Why the open window must seal now ('size' or 'age'), or None."""
        if open_events >= self.max_events:
            return "size"
        if open_events and oldest_ingested_ms is not None and now_ms - oldest_ingested_ms >= self.max_age_s * 1000:
            return "age"
        return None


def summarise(table: pa.Table) -> dict:
    """Event-time range and counts per storefront and event type of a window's events."""
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    grouped = table.group_by(["storefront", "type"]).aggregate([("event_id", "count")])
    for storefront, event_type, n in zip(*(grouped.column(c).to_pylist()
                                           for c in ("storefront", "type", "event_id_count"))):
        counts[storefront][event_type] = n
    ts_min, ts_max = pc.min_max(table.column("ts")).values()
    return {"n_events": table.num_rows, "ts_min": ts_min.as_py(), "ts_max": ts_max.as_py(),
            "counts": {s: dict(sorted(c.items())) for s, c in sorted(counts.items())}}

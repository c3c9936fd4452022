"""What the worker remembers of shoppers for serving: recent histories, trending items and items'
live interactions.

Both are fed Arrow tables of accepted events (:mod:`replay.codec`) read back from the store,
so every worker knows every user, whichever partitions it consumes.
"""

from __future__ import annotations

import bisect
import heapq
import random
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class Interaction(NamedTuple):
    ts: int
    event_id: str
    item_id: str
    type: str
    storefront: str


class UserHistories:
    """The newest ``max_events`` distinct events of each user, and every item each user bought.

    Adding is idempotent and order-free: an event already kept, or older than all kept events
    of a full history, changes nothing. So the same events may arrive twice (from an open
    segment and later from its sealed window) without harm.

    Examples
    --------
    >>> from replay.codec import to_table
    >>> events = [{"event_id": f"e{i}", "type": t, "user_id": "u1", "item_id": f"m{i}",
    ...            "storefront": "shop", "ts": i} for i, t in enumerate(["click", "purchase", "click"])]
    >>> histories = UserHistories(max_events=2)
    >>> histories.add(to_table(events)), histories.add(to_table(events))
    (3, 0)
    >>> [e.item_id for e in histories.recent("u1")], histories.purchased("u1")
    (['m1', 'm2'], {'m1'})
    """

    def __init__(self, max_events: int):
        self.max_events = max_events
        self._events: dict[str, list[tuple]] = {}  # Interaction fields, oldest first
        self._purchased: dict[str, set[str]] = {}

    def add(self, events: pa.Table) -> int:
        """Take in a table of events; returns how many changed a history."""
        changed, kept_by_user, purchased, limit = 0, self._events, self._purchased, self.max_events
        columns = [events.column(name).to_pylist() for name in ("user_id", "ts", "event_id", "item_id", "type",
                                                                "storefront")]
        for user, ts, event_id, item, kind, storefront in zip(*columns):
            if kind == "purchase":
                purchased.setdefault(user, set()).add(item)
            kept = kept_by_user.get(user)
            if kept is None:
                kept = kept_by_user[user] = []
            event = (ts, event_id, item, kind, storefront)  # an Interaction's fields, as a plain tuple
            if not kept or event > kept[-1]:  # the usual case: newer than all kept
                kept.append(event)
            else:
                at = bisect.bisect_left(kept, event)
                if at < len(kept) and kept[at] == event or (len(kept) >= limit and at == 0):
                    continue
                kept.insert(at, event)
            if len(kept) > limit:
                del kept[0]
            changed += 1
        return changed

    def recent(self, user_id: str) -> list[Interaction]:
        """The user's kept events, oldest first (empty for an unknown user)."""
        return [Interaction._make(event) for event in self._events.get(user_id, ())]

    def sample(self, n: int, seed: int = 0) -> list[list[Interaction]]:
        """The histories of up to ``n`` users drawn at random."""
        users = list(self._events)
        chosen = random.Random(seed).sample(users, min(n, len(users)))
        return [self.recent(user) for user in chosen]

    def purchased(self, user_id: str) -> set[str]:
        return set(self._purchased.get(user_id, ()))

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._events

    def __len__(self) -> int:
        return len(self._events)


class Trending:
    """Exponentially decayed event counts per storefront, in event time.

    An event at time ``ts`` adds ``2 ** ((ts - t0) / half_life)``, so older events count less
    and the ranking never needs a rescan; weights are rescaled before they overflow. Feed
    each event once (the worker feeds sealed windows only, which hold every event once).

    Examples
    --------
    >>> from replay.codec import to_table
    >>> hour = 3_600_000
    >>> events = [{"event_id": str(i), "type": "click", "user_id": "u", "item_id": item,
    ...            "storefront": "shop", "ts": ts} for i, (item, ts) in enumerate(
    ...            [("old", 0), ("old", 0), ("new", 2 * hour)])]
    >>> trending = Trending(half_life_s=3600)
    >>> trending.add(to_table(events))
    >>> [(item, round(w, 2)) for item, w in trending.top("shop", 2)]
    [('new', 1.0), ('old', 0.5)]
    """

    def __init__(self, half_life_s: float):
        self.half_life_ms = half_life_s * 1000
        self._weights: dict[str, dict[str, float]] = {}
        self._t0: dict[str, float] = {}
        self._newest: dict[str, float] = {}
        self._generation: dict[str, int] = {}  # windows added so far
        self._ranked: dict[str, tuple[int, list[tuple[str, float]]]] = {}  # (generation ranked, ranking)

    def add(self, events: pa.Table) -> None:
        for storefront in pc.unique(events.column("storefront")).to_pylist():
            rows = events.filter(pc.equal(events.column("storefront"), storefront))
            ts = rows.column("ts").to_numpy()
            weights = dict(self._weights.get(storefront, {}))  # copied, then swapped in whole: readers never
            t0 = self._t0.setdefault(storefront, int(ts[0]))     # see a half-added window
            newest = int(ts.max())
            if (newest - t0) / self.half_life_ms > 500:  # rescale to a new reference time before 2**x overflows
                scale = 2.0 ** ((t0 - newest) / self.half_life_ms)
                for key in weights:
                    weights[key] *= scale
                self._t0[storefront] = t0 = newest
            added = pa.table({"item_id": rows.column("item_id"), "w": np.exp2((ts - t0) / self.half_life_ms)})
            sums = added.group_by("item_id").aggregate([("w", "sum")]).to_pydict()
            for item, w in zip(sums["item_id"], sums["w_sum"]):
                weights[item] = weights.get(item, 0.0) + w
            self._weights[storefront] = weights
            self._newest[storefront] = max(newest, self._newest.get(storefront, newest))
            self._generation[storefront] = self._generation.get(storefront, 0) + 1

    def top(self, storefront: str, k: int, exclude: set[str] = frozenset()) -> list[tuple[str, float]]:
        """The ``k`` hottest items of ``storefront`` not in ``exclude``, with weights relative to the
        newest event (an event now weighs 1)."""
        generation = self._generation.get(storefront, 0)  # read first: the weights are at least this new
        cached = self._ranked.get(storefront)
        if cached is not None and cached[0] == generation:
            ranked = cached[1]
        else:
            weights = self._weights.get(storefront, {})  # a whole dict: add swaps in a new one
            scale = 2.0 ** ((self._t0.get(storefront, 0) - self._newest.get(storefront, 0)) / self.half_life_ms)
            ranked = [(item, w * scale) for item, w in heapq.nlargest(1000, weights.items(), key=lambda kv: kv[1])]
            self._ranked[storefront] = (generation, ranked)
        return [(item, w) for item, w in ranked if item not in exclude][:k]

    def storefronts(self) -> list[str]:
        return sorted(self._weights)

    def weights(self, storefront: str) -> dict[str, float]:
        """Every item's weight in ``storefront`` (relative: only shares between items mean something)."""
        return self._weights.get(storefront, {}).copy()


class LiveInteractions:
    """Each item's events in the newest sealed windows and in open segments, so the version
    serving gets its items' live interactions (:mod:`learner.blend`): the events of the windows
    after the last one it trained on, and of the segments not sealed yet.

    Adding is idempotent: an open event counts once, and no more once its window is added.

    Examples
    --------
    >>> from replay.codec import to_table
    >>> def events(ids, item):
    ...     return to_table([{"event_id": i, "type": "click", "user_id": "u", "item_id": item,
    ...                       "storefront": "shop", "ts": 1} for i in ids])
    >>> live = LiveInteractions(keep_windows=3)
    >>> live.add_window(1, events(["a", "b"], "old"))
    >>> live.add_open(events(["c", "d"], "new")); live.add_open(events(["d"], "new"))
    >>> live.counts(after_window=0), live.counts(after_window=1)
    ({'old': 2, 'new': 2}, {'new': 2})
    >>> live.add_window(2, events(["c", "d", "e"], "new"))
    >>> live.counts(after_window=1)
    {'new': 3}
    """

    def __init__(self, keep_windows: int):
        self.keep_windows = keep_windows
        self._windows: dict[int, dict[str, int]] = {}
        self._open: dict[str, str] = {}  # event id -> item id, until its window is sealed
        self.generation = 0  # tables added so far

    def add_window(self, window_id: int, events: pa.Table) -> None:
        counts = events.group_by("item_id").aggregate([("item_id", "count")]).to_pydict()
        self._windows[window_id] = dict(zip(counts["item_id"], counts["item_id_count"]))
        for event_id in events.column("event_id").to_pylist():
            self._open.pop(event_id, None)
        for old in sorted(self._windows)[:-self.keep_windows]:
            del self._windows[old]
        self.generation += 1

    def add_open(self, events: pa.Table) -> None:
        self._open.update(zip(events.column("event_id").to_pylist(), events.column("item_id").to_pylist()))
        self.generation += 1

    def counts(self, after_window: int) -> dict[str, int]:
        """Events of each item in the windows after ``after_window`` and in open segments."""
        total: dict[str, int] = {}
        for window_id, counts in list(self._windows.items()):
            if window_id > after_window:
                for item, n in counts.items():
                    total[item] = total.get(item, 0) + n
        for item in list(self._open.values()):
            total[item] = total.get(item, 0) + 1
        return total

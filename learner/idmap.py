"""Append-only string-to-index maps for items, users and storefronts."""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np
import pandas as pd

PAD = 0
UNKNOWN = 1
_RESERVED = ("<pad>", "<unknown>")


class IdMap:
    """Maps string ids to dense indices; index 0 is padding, 1 is "unknown".

    Indices never change once given, so an embedding table indexed by an older map is a
    prefix of one indexed by a newer map.

    Examples
    --------
    >>> ids = IdMap(["m1", "m2"])
    >>> ids.add(["m2", "m3"]), len(ids)
    (['m3'], 5)
    >>> ids.index(["m3", "nope"]).tolist()
    [4, 1]
    >>> IdMap.from_json(ids.to_json()) == ids
    True
    """

    def __init__(self, keys: Iterable[str] = ()):
        self._keys: list[str] = list(_RESERVED)
        self._index: dict[str, int] = {}
        self.add(keys)

    def add(self, keys: Iterable[str]) -> list[str]:
        """Append the keys not yet known, in order; return them."""
        added = []
        for key in keys:
            if key not in self._index:
                self._index[key] = len(self._keys)
                self._keys.append(key)
                added.append(key)
        return added

    def index(self, keys: Iterable[str]) -> np.ndarray:
        """Indices of ``keys`` (int64); unknown keys map to ``UNKNOWN``.

        A pandas column is looked up once per distinct key (factorised first), not once per row.
        """
        get = self._index.get
        if isinstance(keys, pd.Series | pd.Index):
            codes, uniques = pd.factorize(keys)
            looked_up = np.fromiter((get(k, UNKNOWN) for k in uniques), dtype=np.int64, count=len(uniques))
            return np.where(codes >= 0, looked_up[codes], UNKNOWN) if len(uniques) else np.full(len(codes), UNKNOWN)
        return np.fromiter((get(k, UNKNOWN) for k in keys), dtype=np.int64)

    def keys(self) -> list[str]:
        """Known ids in index order, starting at index 2 (after the reserved rows)."""
        return self._keys[len(_RESERVED):]

    def __len__(self) -> int:
        """Number of rows an embedding table needs, reserved rows included."""
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and self._keys == other._keys

    def is_prefix_of(self, other: IdMap) -> bool:
        """Whether ``other`` extends this map (same indices for every key here)."""
        return self._keys == other._keys[:len(self._keys)]

    def to_json(self) -> str:
        return json.dumps(self.keys(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> IdMap:
        return cls(json.loads(text))

    def __repr__(self) -> str:
        return f"IdMap({len(self) - len(_RESERVED)} ids)"


class Vocabulary:
    """The three id maps a model is indexed by: items, users and storefronts.

    >>> vocab = Vocabulary()
    >>> vocab.add_events(["u1"], ["m1", "m2"], ["shop"])
    >>> len(vocab.items), len(vocab.users), len(vocab.storefronts)
    (4, 3, 3)
    """

    def __init__(self, items: IdMap | None = None, users: IdMap | None = None,
                 storefronts: IdMap | None = None):
        self.items = items or IdMap()
        self.users = users or IdMap()
        self.storefronts = storefronts or IdMap()

    def add_events(self, users: Iterable[str], items: Iterable[str], storefronts: Iterable[str]) -> None:
        """Append unseen ids, each map in first-seen order."""
        self.users.add(users)
        self.items.add(items)
        self.storefronts.add(storefronts)

    def sizes(self) -> tuple[int, int, int]:
        """Table sizes (items, users, storefronts), reserved rows included."""
        return len(self.items), len(self.users), len(self.storefronts)

    def is_prefix_of(self, other: Vocabulary) -> bool:
        """Whether every map of ``other`` extends the matching map here."""
        return (self.items.is_prefix_of(other.items) and self.users.is_prefix_of(other.users)
                and self.storefronts.is_prefix_of(other.storefronts))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Vocabulary) and self.items == other.items and self.users == other.users
                and self.storefronts == other.storefronts)

    def __repr__(self) -> str:
        return f"Vocabulary(items={self.items}, users={self.users}, storefronts={self.storefronts})"

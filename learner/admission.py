"""Which item and user ids have a trainable vector of their own: admission and expiry.

Every id the model knows keeps its place in the vocabulary, and an item keeps its text
vector, but the id tables hold rows only for *admitted* ids (in the manner of ByteDance's
Monolith and TorchRec's eviction policies):

* an id is admitted once it has ``min_count`` interactions in the windows trained on
  (``min_count=0``: as soon as it is known, catalog items included; a new item's row then
  starts among its text look-alikes);
* an admitted id with no interaction for ``ttl_ms`` of event time is retired: its row is
  freed (the table is compacted) and its count starts again. A retired item is still
  recommendable by its text vector; a retired user still gets recommendations from their
  events.

So under churn a table holds the ids active within the TTL, however many ids have come and
gone. Until it is admitted, an item's vector is the projection of its text alone.

Examples
--------
>>> import pandas as pd
>>> from learner.bundle import ModelBundle
>>> from learner.model import ModelConfig
>>> events = pd.DataFrame({"event_id": ["e1", "e2", "e3"], "type": "click", "user_id": "u1",
...     "item_id": ["old", "new", "new"], "storefront": "s", "ts": [0, 90 * DAY_MS, 90 * DAY_MS + 1],
...     "session_id": None})
>>> bundle = ModelBundle.build(ModelConfig(dim=8, heads=1, use_text=False), events=events.iloc[:1])
>>> policy = IdPolicy(min_count=2, ttl_ms=30 * DAY_MS)
>>> update_ids(bundle, events.iloc[:1], policy)["items"]
{'rows': 3, 'admitted': 1, 'added': 0, 'retired': 0}
>>> bundle.extend(events=events, admit=False)["items"]
1
>>> update_ids(bundle, events.iloc[1:], policy)["items"]  # "new" reached 2 interactions, "old" went stale
{'rows': 3, 'admitted': 1, 'added': 1, 'retired': 1}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch

from learner.idmap import UNKNOWN

if TYPE_CHECKING:
    from learner.bundle import ModelBundle

DAY_MS = 86_400_000


@dataclass(frozen=True)
class IdPolicy:
    """``min_count``: interactions before an id gets its own row (0: when first known);
    ``ttl_ms``: event time without interactions after which its row is retired (None: never)."""

    min_count: int = 0
    ttl_ms: int | None = None

    def describe(self) -> str:
        """One line for ops, e.g. 'admit after 2 interactions, retire after 90 days unseen'."""
        admit = "admit when known" if self.min_count == 0 else f"admit after {self.min_count} interactions"
        retire = "never retire" if self.ttl_ms is None else f"retire after {self.ttl_ms / DAY_MS:g} days unseen"
        return f"{admit}, {retire}"


def update_ids(bundle: ModelBundle, window: pd.DataFrame, policy: IdPolicy) -> dict:
    """Count ``window``'s interactions, retire ids stale at its newest event, admit ids that
    reached ``policy.min_count``; returns per table (``items``, and ``users`` when the model
    has user vectors) its rows (reserved rows included), admitted ids, and the ids just added
    and retired."""
    model, vocab = bundle.model, bundle.vocab
    now = int(window["ts"].max()) if len(window) else None
    tables = {"items": ("item", vocab.items.index(window["item_id"]))}
    if model.config.user_embeddings:
        tables["users"] = ("user", vocab.users.index(window["user_id"]))
    report = {}
    for name, (kind, ids) in tables.items():
        report[name] = _update(model, kind, torch.from_numpy(ids), torch.tensor(window["ts"].to_numpy()), now, policy)
    return report


@torch.no_grad()
def _update(model, kind: str, ids: torch.Tensor, ts: torch.Tensor, now: int | None, policy: IdPolicy) -> dict:
    rows, counts, last_seen = (getattr(model, f"{kind}_{name}") for name in ("id_rows", "counts", "last_seen"))
    ids, ts = ids.to(rows.device), ts.to(rows.device)
    counts.index_add_(0, ids, torch.ones_like(ids))
    last_seen.scatter_reduce_(0, ids, ts.long(), reduce="amax")
    retired = added = torch.zeros(0, dtype=torch.long)
    if now is not None:
        admitted = rows > 0
        last_seen[admitted & (last_seen < 0)] = now  # admitted before any interaction: counts from now
        if policy.ttl_ms is not None:
            stale = admitted & (last_seen < now - policy.ttl_ms)
            stale[:UNKNOWN + 1] = False
            retired = stale.nonzero().squeeze(1)
            if len(retired):
                counts[retired] = 0
                model.retire(kind, retired)
        waiting = (rows == 0) & (counts >= max(1, policy.min_count))
        waiting[:UNKNOWN + 1] = False
        added = waiting.nonzero().squeeze(1)
        if len(added):
            model.admit(kind, added)
            if kind == "item" and model.config.use_text:
                model.init_from_text_neighbours(added[model.item_text[added].abs().sum(1) > 0])
    return {"rows": model.id_table(kind).num_embeddings, "admitted": int((rows[UNKNOWN + 1:] > 0).sum()),
            "added": len(added), "retired": len(retired)}

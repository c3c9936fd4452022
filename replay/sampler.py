"""Draw the rehearsal batch that goes into a fine-tune next to the new window."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


class RehearsalSampler:
    """A uniform draw, without replacement, of ``ratio`` memory events per new event.

    Examples
    --------
    >>> from replay import codec
    >>> memory = codec.to_table([{"event_id": str(i), "type": "click", "user_id": "u", "item_id": "i",
    ...                           "storefront": "s", "ts": i} for i in range(1000)])
    >>> RehearsalSampler(ratio=0.5, seed=3).draw(memory, n_new=400).num_rows
    200
    """

    def __init__(self, ratio: float, seed: int = 0):
        if ratio < 0:
            raise ValueError(f"rehearsal ratio must be >= 0, got {ratio}")
        self.ratio = ratio
        self.seed = seed

    def indices(self, n_memory: int, n_new: int, draw_id: int = 0) -> np.ndarray:
        """Sorted row numbers of the draw; ``draw_id`` (e.g. the epoch) makes each draw differ, reproducibly."""
        want = min(n_memory, round(self.ratio * n_new))
        rng = np.random.default_rng([self.seed, draw_id])
        return np.sort(rng.choice(n_memory, size=want, replace=False))

    def draw(self, memory: pa.Table, n_new: int, draw_id: int = 0) -> pa.Table:
        """``round(ratio * n_new)`` events of ``memory`` (all of it if it holds fewer)."""
        return memory.take(self.indices(memory.num_rows, n_new, draw_id))

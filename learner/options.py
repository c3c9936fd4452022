"""The learner's choices that settings offer, kept free of torch so that settings can list them.

Which softmax a training step uses (:mod:`learner.trainer`), and at what unit rehearsal
replays memory (:mod:`learner.plugins`).

>>> sampled_for("auto", 1_000), sampled_for("auto", 1_000_000), sampled_for("full", 1_000_000)
(False, True, False)
"""

from __future__ import annotations

REHEARSAL_UNITS = ("event", "sequence")
LOSSES = ("full", "sampled", "auto")
SAMPLED_ABOVE_ITEMS = 50_000
"""``auto`` trains with the full softmax up to this many items: below it a step's full softmax
costs about what a thousand sampled negatives with their vectors cost, and it is exact."""


def sampled_for(loss: str, n_items: int) -> bool:
    """Whether ``loss`` trains a catalog of ``n_items`` rows with the sampled softmax."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    return loss == "sampled" or (loss == "auto" and n_items > SAMPLED_ABOVE_ITEMS)

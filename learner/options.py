"""The learner's choices that settings offer, kept free of torch so that settings can list them.

Which softmax a training step uses (:mod:`learner.trainer`), at what unit rehearsal
replays memory (:mod:`learner.plugins`), and how the text encoder is tuned
(:mod:`learner.text_tuning`).

>>> sampled_for("auto", 1_000), sampled_for("auto", 1_000_000), sampled_for("full", 1_000_000)
(False, True, False)
"""

from __future__ import annotations

REHEARSAL_UNITS = ("event", "sequence")
LOSSES = ("full", "sampled", "auto")
TEXT_TUNINGS = ("frozen", "top", "lora")
"""How the text encoder is trained: not at all, its top transformer layers, or LoRA adapters."""
SAMPLED_ABOVE_ITEMS = 50_000
"""``auto`` trains with the full softmax up to this many items: below it a step's full softmax
costs about what a thousand sampled negatives with their vectors cost, and it is exact."""


def sampled_for(loss: str, n_items: int) -> bool:
    """Whether ``loss`` trains a catalog of ``n_items`` rows with the sampled softmax."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    return loss == "sampled" or (loss == "auto" and n_items > SAMPLED_ABOVE_ITEMS)

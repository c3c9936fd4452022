"""The learner's choices that settings offer, kept free of torch so that settings can list them.

Which softmax a training step uses (:mod:`learner.trainer`), at what unit rehearsal
replays memory (:mod:`learner.plugins`), how the text encoder is tuned
(:mod:`learner.text_tuning`), how fast the text term for new items fades (:mod:`learner.blend`),
and how item vectors are held for answering (:mod:`serving.index`).

>>> sampled_for("auto", 1_000), sampled_for("auto", 1_000_000), sampled_for("full", 1_000_000)
(False, True, False)
"""

from __future__ import annotations

REHEARSAL_UNITS = ("event", "sequence")
LOSSES = ("full", "sampled", "auto")
SERVING_PRECISIONS = ("float32", "float16", "int8")
"""How answering holds item vectors: 4, 2 or 1 byte a dimension (int8 with a scale per item)."""
TEXT_TUNINGS = ("frozen", "top", "lora")
"""How the text encoder is trained: not at all, its top transformer layers, or LoRA adapters."""
SAMPLED_ABOVE_ITEMS = 50_000
"""``auto`` trains with the full softmax up to this many items: it is exact (the sampled one
trained to about 1% lower Recall@20 on MovieLens), and a step's logits (targets x items,
about 1.3 GB at 6,400 targets) still fit in memory."""
TEXT_BLEND_HALF_COUNT = 0.05
"""Interactions after which an item gets half the text term for new items (:mod:`learner.blend`):
an item's first interaction takes away 95% of it. Against 0.5 and 5 (``docs/benchmarks/backtest.md``),
items with a few interactions were ranked better by the model alone; the term's gain is on items
with none."""
TEXT_BLEND_CONFIDENCE = 2.0
"""Standard errors of margin a pair of weights of the text and live terms needs within the
tolerance (:func:`learner.blend.fit_weight`). The fit's evidence is a few thousand events at
first, where the largest of 70 pairs that lands just within the tolerance mostly got there by
luck: replayed on the same MovieLens runs (``bench.blend_frontier``), with no margin a 1%
tolerance cost 1.6% and 2.0% of the next windows' Recall@20, with one standard error 1.4% and
1.5%, with two 0.85% and 0.67%."""
TEXT_BLEND_EVIDENCE_EVENTS = 2_000
"""Events of its window an update scores, before training on it, at every pair of weights of the
text and live terms (:class:`learner.blend.Evidence`): a bound on that work (1.3 s for the 70
pairs on one CPU thread for MovieLens-100k's catalog, 3.2 s for 5,000 events: ``bench.blend_cost``). Summed over
updates, the evidence holds about 37,000 events once a lineage has a dozen."""
TEXT_BLEND_EVIDENCE_HALF_LIFE = 25_000.0
"""Scored events after which an update's evidence counts half: the last dozen or so updates choose
the weight, so it follows the catalog without resting on one window."""


def sampled_for(loss: str, n_items: int) -> bool:
    """Whether ``loss`` trains a catalog of ``n_items`` rows with the sampled softmax."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    return loss == "sampled" or (loss == "auto" and n_items > SAMPLED_ABOVE_ITEMS)

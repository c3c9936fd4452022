"""``id-only``: ``rehearsal`` with ``ModelConfig(use_text=False)``, no text tower."""

from __future__ import annotations

from backtest.strategies.rehearsal import FineTuned


class IdOnly(FineTuned):
    """:class:`~backtest.strategies.rehearsal.FineTuned` whose item vectors are id embeddings alone."""

    name = "id-only"
    use_text = False

"""The text encoder learns from clicks and purchases: a trainer plugin tuning MiniLM on behaviour.

:class:`TextTuning` trains the top transformer layers of MiniLM or LoRA adapters on its
attention and feed-forward projections (``peft``), inside the recommender's own training
loop. At each step, the distinct target items of the batch that have text (at most
``texts_per_step``) go through the encoder with gradients, and each target position's
sequence state must pick its item among them from text alone: a softmax over
``state . projection(text vector)`` with the batch's other items as negatives (in-batch
contrastive loss, as in two-tower retrieval). The loss flows into the encoder, the text
projection and the sequence model, so items with the same text signal land where shoppers'
behaviour puts them, and an item with text but no clicks is placed among items shoppers
treat alike. After training, the whole catalog is re-embedded with the tuned encoder (batched)
into the bundle's item text rows, and the bundle carries the adapter; text met later (new
items, search queries) is encoded with the adapter and cached under its id.

Text is tuned during the first ``steps`` steps of a job, within its first epoch; the catalog is
then re-embedded at once, so the rest of the job trains the recommender on the new text
vectors (a recommender trained on the old ones would score the re-embedded catalog poorly).
The encoder is expensive next to the recommender, so ``steps`` bounds its work (raise it on
a GPU), and text is tuned on every ``every``-th training job only; the job takes that much longer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from learner.bundle import ModelBundle
from learner.text import TextAdapter, TextEncoder, trained_tensors
from learner.trainer import Plugin, Step, Trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextTuningConfig:
    """How the text encoder is tuned (``tuning``: one of :data:`learner.options.TEXT_TUNINGS`).

    ``layers``: the last transformer layers trained by ``top``; ``rank``, ``alpha``,
    ``targets``: the LoRA adapters (``query``/``key``/``value``/``attention.output.dense``
    for attention, ``intermediate.dense``/``output.dense`` for the feed-forward part);
    ``steps``: the most steps of a job that tune text; ``texts_per_step``: items encoded per
    step; ``every``: tune on every n-th job (the others keep the adapter as it is).
    """

    tuning: str = "frozen"
    layers: int = 1
    rank: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = ("query", "value")
    lr: float = 3e-4
    weight: float = 1.0
    steps: int = 30
    texts_per_step: int = 32
    every: int = 1

    def settings(self) -> dict:
        """The adapter's shape: what a saved adapter of this tuning records."""
        if self.tuning == "top":
            return {"layers": self.layers}
        return {"rank": self.rank, "alpha": self.alpha, "targets": sorted(self.targets)}

    def due(self, bundle: ModelBundle) -> bool:
        """Whether a job starting from ``bundle`` tunes text: tuning is on and ``every`` jobs have
        passed since the bundle's adapter was last trained (or it has none of this tuning)."""
        if self.tuning == "frozen":
            return False
        adapter = bundle.adapter
        if adapter is None or adapter.tuning != self.tuning or adapter.settings != self.settings():
            return True
        return bundle.info.get("text_tuned_jobs_ago", 0) + 1 >= self.every


class TextTuning(Plugin):
    """Tunes the text encoder with the recommender (see the module docstring).

    ``texts`` maps item_id to item text (the catalog's); ``base`` is the pretrained encoder
    (its batch settings are used). The re-embedded catalog lives in the bundle's item text rows
    only, not in a shared cache: a version's vectors are needed by that version alone. The
    trainer's bundle leaves with the new adapter, its texts re-embedded, and
    ``info["text_tuning"]``: steps, seconds spent in tuning steps and in re-embedding.
    """

    def __init__(self, config: TextTuningConfig, texts: dict[str, str], base: TextEncoder, seed: int = 0):
        self.config = config
        self.texts = texts
        self.base = base
        self.generator = torch.Generator().manual_seed(seed)

    def before_training(self, trainer: Trainer) -> None:
        bundle, c = trainer.bundle, self.config
        start = bundle.adapter if bundle.adapter is not None and bundle.adapter.tuning == c.tuning \
            and bundle.adapter.settings == c.settings() else TextAdapter(c.tuning, c.settings(), {})
        self.encoder = TextEncoder(trainer.device, self.base.batch_size, self.base.max_length, start, trainable=True)
        parameters = [p for p in self.encoder.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(parameters, lr=c.lr)
        items = bundle.vocab.items
        rows = items.index(self.texts)
        self.row_texts = dict(zip(rows.tolist(), self.texts.values()))
        has_text = torch.zeros(len(items), dtype=torch.bool)
        has_text[torch.from_numpy(rows)] = True
        self.has_text = trainer.device.put(has_text)
        self.steps, self.step_seconds, self.pending, self.done = 0, 0.0, None, False

    def loss(self, trainer: Trainer, step: Step) -> torch.Tensor | None:
        if self.done:
            return None
        started = time.perf_counter()
        targets = step.targets[step.mask]
        with_text = targets[self.has_text[targets]]
        chosen = torch.unique(with_text)
        if len(chosen) < 2:
            return None
        if len(chosen) > self.config.texts_per_step:
            keep = torch.randperm(len(chosen), generator=self.generator)[:self.config.texts_per_step]
            chosen = chosen[keep.to(chosen.device)].sort().values
        positions = torch.isin(targets, chosen)
        self.pending = started
        vectors = self.encoder.embed([self.row_texts[row] for row in chosen.tolist()])
        logits = step.states[positions].float() @ trainer.model.text_projection(vectors).float().T
        return self.config.weight * F.cross_entropy(logits, torch.searchsorted(chosen, targets[positions]))

    def after_step(self, trainer: Trainer) -> None:
        if self.pending is None:
            return
        torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], trainer.config.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        self.step_seconds += time.perf_counter() - self.pending
        self.pending = None
        if self.steps >= self.config.steps:
            self._reembed(trainer)

    def after_epoch(self, trainer: Trainer) -> None:
        """Text is tuned in the first epoch only: the catalog is re-embedded before the epoch is
        judged (by early stopping, a plugin after this one), and the remaining steps and epochs
        train the recommender on the new text vectors."""
        self._reembed(trainer)

    def after_training(self, trainer: Trainer) -> None:
        self._reembed(trainer)

    def _reembed(self, trainer: Trainer) -> None:
        """Once tuning is over: the adapter joins the bundle and the catalog is re-embedded with it."""
        if self.done:
            return
        self.done = True
        if not self.steps:
            return
        bundle = trainer.bundle
        started = time.perf_counter()
        adapter = TextAdapter(self.config.tuning, self.config.settings(), trained_tensors(self.encoder.model))
        self.encoder.adapter = adapter  # the encoder's weights now are the adapter's: its keys follow
        bundle.adapter = adapter
        bundle.set_texts(self.texts, self.encoder)  # every text: its key now names the new adapter
        embed_seconds = time.perf_counter() - started
        bundle.info["text_tuned_jobs_ago"] = 0
        bundle.info["text_tuning"] = {"adapter": adapter.describe(), "adapter_id": adapter.id, "steps": self.steps,
                                      "step_seconds": round(self.step_seconds, 3), "items_embedded": len(self.texts),
                                      "embed_seconds": round(embed_seconds, 3)}
        log.info("text tuning (%s): %d steps in %.1fs (%.0f ms a step, with the recommender's), catalog of %d items "
                 "re-embedded in %.1fs", adapter.describe(), self.steps, self.step_seconds,
                 1000 * self.step_seconds / self.steps, len(self.texts), embed_seconds)

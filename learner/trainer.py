"""The training loop: next-item softmax over the full catalog, extended by plugins."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F

from learner.bundle import ModelBundle
from learner.device import Device, pick_device
from learner.sequences import PURCHASE, SequenceBatch, events_frame, training_sequences

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the loop itself. ``epochs`` is the most it runs (a plugin may stop earlier);
    ``max_seconds`` bounds its training time (it stops after the step that crosses it)."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    purchase_weight: float = 2.0
    seed: int = 0
    log_every: int = 50
    max_seconds: float | None = None


@dataclass
class Step:
    """One batch: inputs, targets [B, L] (0: none), and what the model made of it.

    ``states`` [N, dim] and ``logits`` [N, n_items] are at the N target positions (``mask``).
    """

    inputs: SequenceBatch
    targets: torch.Tensor
    target_types: torch.Tensor
    mask: torch.Tensor
    states: torch.Tensor
    logits: torch.Tensor


class Plugin:
    """Lifecycle hooks of a ``Trainer`` (all optional), in the style of Avalanche plugins.

    Hooks receive the trainer and may read or replace its state: ``targets`` (events to
    predict), ``context`` (events only used as input), ``epoch_targets`` (this epoch's
    targets), ``stop`` (end after this epoch), ``bundle``, ``epoch``, ``step``.
    """

    def before_training(self, trainer: Trainer) -> None:
        """After the window is set, before the first epoch."""

    def before_epoch(self, trainer: Trainer) -> None:
        """Before this epoch's sequences are built from ``trainer.epoch_targets``."""

    def loss(self, trainer: Trainer, step: Step) -> torch.Tensor | None:
        """An extra loss term added to the next-item loss of this step, or None."""

    def after_epoch(self, trainer: Trainer) -> None:
        """After the last step of an epoch; ``trainer.epoch_log[-1]`` summarises it."""

    def after_training(self, trainer: Trainer) -> None:
        """After the last epoch."""


class Trainer:
    """Fine-tunes ``bundle.model`` in place on one window of events.

    Each target event is predicted from up to ``max_len`` earlier events of its user, drawn
    from the window itself and from ``history`` (context only, never a target). The loss is
    cross-entropy over every item, purchases weighted by ``purchase_weight``, plus the
    plugins' terms. Same inputs and seed give identical weights on CPU.

    Examples
    --------
    >>> from learner.bundle import ModelBundle
    >>> from learner.model import ModelConfig
    >>> window = pd.DataFrame({"event_id": [f"e{i}" for i in range(40)], "type": "click",
    ...     "user_id": [f"u{i % 4}" for i in range(40)], "item_id": [f"i{i % 5}" for i in range(40)],
    ...     "storefront": "s", "ts": range(40), "session_id": None})
    >>> bundle = ModelBundle.build(ModelConfig(dim=8, heads=1, use_text=False), events=window, seed=0)
    >>> epoch_log = Trainer(bundle, TrainConfig(epochs=2, seed=0)).fit(window)
    >>> [entry["epoch"] for entry in epoch_log]
    [1, 2]
    """

    def __init__(self, bundle: ModelBundle, config: TrainConfig | None = None, plugins: Sequence[Plugin] = (),
                 device: Device | None = None):
        self.bundle = bundle
        self.config = config or TrainConfig()
        self.plugins = list(plugins)
        self.device = device or pick_device()

    def fit(self, window: pd.DataFrame, history: pd.DataFrame | None = None) -> list[dict]:
        """Train on ``window``; return one summary dict per epoch."""
        torch.manual_seed(self.config.seed)
        generator = torch.Generator().manual_seed(self.config.seed)
        self.model = self.bundle.model.to(self.device.torch_device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.config.lr,
                                           weight_decay=self.config.weight_decay)
        self.targets, self.context = window, events_frame(history)
        self.epoch = self.step = 0
        self.stop = False
        self.deadline = None if self.config.max_seconds is None else time.perf_counter() + self.config.max_seconds
        self.epoch_log: list[dict] = []
        self._call("before_training")
        for self.epoch in range(1, self.config.epochs + 1):
            self.epoch_targets = self.targets
            self._call("before_epoch")
            self._run_epoch(generator)
            self._call("after_epoch")
            if self.stop:
                break
        self._call("after_training")
        self.bundle.model = self.model.cpu()
        return self.epoch_log

    def _call(self, hook: str) -> None:
        for plugin in self.plugins:
            getattr(plugin, hook)(self)

    def _run_epoch(self, generator: torch.Generator) -> None:
        data = training_sequences(self.context, self.epoch_targets, self.bundle.vocab, self.model.config.max_len)
        self.model.train()
        started, seen, total = time.perf_counter(), 0, 0.0
        for inputs, targets, target_types in data.batches(self.config.batch_size, generator):
            loss, n = self._train_step(inputs, targets, target_types)
            self.step += 1
            seen += n
            total += loss * n
            if self.step % self.config.log_every == 0:
                log.info("epoch %d step %d loss %.4f %.0f targets/s", self.epoch, self.step, loss,
                         seen / (time.perf_counter() - started))
            if self.deadline is not None and time.perf_counter() > self.deadline:
                self.stop = True
                log.info("epoch %d: time budget of %.0fs reached, stopping", self.epoch, self.config.max_seconds)
                break
        elapsed = time.perf_counter() - started
        summary = {"epoch": self.epoch, "steps": self.step, "loss": total / max(seen, 1), "targets": seen,
                   "seconds": elapsed, "targets_per_s": seen / max(elapsed, 1e-9)}
        self.epoch_log.append(summary)
        log.info("epoch %d done: loss %.4f, %d targets in %.1fs (%.0f/s)", self.epoch, summary["loss"], seen,
                 elapsed, summary["targets_per_s"])

    def _train_step(self, inputs: SequenceBatch, targets: torch.Tensor,
                    target_types: torch.Tensor) -> tuple[float, int]:
        inputs = inputs.to(self.device)
        targets, target_types = self.device.put(targets), self.device.put(target_types)
        mask = targets > 0
        with self.device.autocast():
            vectors = self.model.item_vectors()
            states = self.model(inputs, vectors)[mask]
            logits = self.model.logits(states, vectors)
            step = Step(inputs, targets, target_types, mask, states, logits)
            weights = torch.where(target_types[mask] == PURCHASE, self.config.purchase_weight, 1.0)
            cross_entropy = F.cross_entropy(logits, targets[mask], reduction="none")
            loss = (weights * cross_entropy).sum() / weights.sum()
            for plugin in self.plugins:
                extra = plugin.loss(self, step)
                if extra is not None:
                    loss = loss + extra
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
        self.optimizer.step()
        return loss.item(), int(mask.sum())

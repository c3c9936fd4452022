"""Trainer plugins: rehearsal, distillation from the previous model, early stopping."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from learner.bundle import ModelBundle
from learner.evaluate import BundleScorer, evaluate
from learner.idmap import UNKNOWN
from learner.sequences import SequenceBatch
from learner.trainer import Plugin, Step, Trainer
from replay.sampler import RehearsalSampler

log = logging.getLogger(__name__)


class Rehearsal(Plugin):
    """Mixes replayed events into every epoch's targets.

    Each epoch draws ``ratio`` rehearsal events per window target (at most all of
    ``memory``) with :class:`replay.sampler.RehearsalSampler`; their histories come from the
    trainer's context like any target's.
    """

    def __init__(self, memory: pd.DataFrame, ratio: float = 0.5, seed: int = 0):
        self.memory = memory
        self.sampler = RehearsalSampler(ratio, seed)

    def before_epoch(self, trainer: Trainer) -> None:
        rows = self.sampler.indices(len(self.memory), len(trainer.targets), draw_id=trainer.epoch)
        if len(rows):
            trainer.epoch_targets = pd.concat([trainer.epoch_targets, self.memory.iloc[rows]], ignore_index=True)


class Distillation(Plugin):
    """ADER-style distillation: ``weight`` x KL(teacher || student) of the softmax over the
    teacher's items, at every target position (temperature ``temperature``).

    The teacher is the previous bundle; the student's vocabulary must extend the teacher's.
    """

    def __init__(self, teacher: ModelBundle, weight: float = 1.0, temperature: float = 1.0):
        self.teacher = teacher
        self.weight = weight
        self.temperature = temperature

    def before_training(self, trainer: Trainer) -> None:
        if not self.teacher.vocab.is_prefix_of(trainer.bundle.vocab):
            raise ValueError("the teacher's id maps are not a prefix of the student's; cannot distil")
        self.model = self.teacher.model.to(trainer.device.torch_device).eval()
        self.sizes = self.teacher.vocab.sizes()

    def loss(self, trainer: Trainer, step: Step) -> torch.Tensor:
        inputs = self._teacher_inputs(step.inputs)
        with torch.no_grad():
            vectors = self.model.item_vectors()
            teacher = self.model.logits(self.model(inputs, vectors)[step.mask], vectors)[:, UNKNOWN + 1:]
        student = step.logits[:, UNKNOWN + 1:self.sizes[0]]
        t = self.temperature
        kl = F.kl_div(F.log_softmax(student.float() / t, -1), F.log_softmax(teacher.float() / t, -1),
                      log_target=True, reduction="batchmean")
        return self.weight * t * t * kl

    def _teacher_inputs(self, inputs: SequenceBatch) -> SequenceBatch:
        """Ids the teacher never saw become its unknown id."""
        items, users, storefronts = self.sizes
        return SequenceBatch(_known(inputs.items, items), inputs.types, _known(inputs.storefronts, storefronts),
                             _known(inputs.users, users))

    def after_training(self, trainer: Trainer) -> None:
        self.teacher.model.cpu()


def _known(ids: torch.Tensor, size: int) -> torch.Tensor:
    return ids.masked_fill(ids >= size, UNKNOWN)


class EarlyStopping(Plugin):
    """Holds out the last ``holdout`` share of the window in time (at least one event) and
    stops when ``metric`` on it has not improved for ``patience`` epochs; the best epoch's
    weights are restored at the end.

    The held-out events are neither targets nor context during training; they are evaluated
    with the window's training part and the trainer's context as history, the way the next
    window will be.
    """

    def __init__(self, holdout: float = 0.1, patience: int = 2, metric: str = "recall@20"):
        self.holdout = holdout
        self.patience = patience
        self.metric = metric

    def before_training(self, trainer: Trainer) -> None:
        ordered = trainer.targets.sort_values(["ts", "event_id"], kind="stable")
        cut = len(ordered) - max(1, round(self.holdout * len(ordered)))
        trainer.targets, self.validation = ordered.iloc[:cut], ordered.iloc[cut:]
        self.history = pd.concat([trainer.context, trainer.targets], ignore_index=True)
        self.best, self.best_epoch, self.best_state = -np.inf, 0, None

    def after_epoch(self, trainer: Trainer) -> None:
        ks = (int(self.metric.split("@")[1]),)
        scorer = BundleScorer(trainer.bundle, trainer.device)
        value = evaluate(scorer, self.validation, self.history, ks=ks)[self.metric]
        trainer.epoch_log[-1][f"validation_{self.metric}"] = value
        log.info("epoch %d validation %s %.4f (best %.4f at epoch %d)", trainer.epoch, self.metric, value,
                 self.best, self.best_epoch)
        if value > self.best:
            self.best, self.best_epoch = value, trainer.epoch
            self.best_state = {name: t.detach().clone() for name, t in trainer.model.state_dict().items()}
        elif trainer.epoch - self.best_epoch >= self.patience:
            trainer.stop = True

    def after_training(self, trainer: Trainer) -> None:
        if self.best_state is not None:
            trainer.model.load_state_dict(self.best_state)
            log.info("restored epoch %d (validation %s %.4f)", self.best_epoch, self.metric, self.best)

"""Trainer plugins: rehearsal, distillation from the previous model, early stopping."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from learner.blend import TextBlend
from learner.bundle import ModelBundle
from learner.evaluate import BundleScorer, evaluate
from learner.idmap import UNKNOWN
from learner.sequences import SequenceBatch
from learner.trainer import Plugin, Step, Trainer, scores_over
from replay.frames import in_set
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


class SequenceRehearsal(Rehearsal):
    """Mixes replayed users' sequences into every epoch's targets (rehearsal at the sequence level).

    Each epoch draws rehearsal events with :class:`replay.sampler.RehearsalSampler` and takes
    their users in a seeded random order; the ``max_len + 1`` events of a drawn user's timeline
    (rehearsal memory and the trainer's context) that end at the user's newest memory event all
    become targets, so one training sequence carries up to ``max_len`` rehearsed targets rather
    than one. Users are added until the
    rehearsed targets reach ``ratio`` per window target (the last user may pass it).

    Examples
    --------
    >>> from learner.bundle import ModelBundle
    >>> from learner.model import ModelConfig
    >>> from learner.trainer import TrainConfig
    >>> memory = pd.DataFrame({"event_id": [f"m{i}" for i in range(60)], "type": "click",
    ...     "user_id": [f"u{i % 3}" for i in range(60)], "item_id": [f"i{i % 7}" for i in range(60)],
    ...     "storefront": "s", "ts": range(60), "session_id": None})
    >>> window = memory.assign(event_id=lambda f: "w" + f["event_id"], ts=lambda f: f["ts"] + 100).iloc[:20]
    >>> bundle = ModelBundle.build(ModelConfig(dim=8, heads=1, max_len=4, use_text=False), events=memory, seed=0)
    >>> trainer = Trainer(bundle, TrainConfig(epochs=1), plugins=[SequenceRehearsal(memory, ratio=0.5, seed=1)])
    >>> trainer.targets, trainer.context, trainer.epoch = window, memory.iloc[:0], 1
    >>> trainer.epoch_targets = window
    >>> plugin = trainer.plugins[0]
    >>> plugin.before_training(trainer); plugin.before_epoch(trainer)
    >>> len(trainer.epoch_targets) - len(window), trainer.epoch_targets["user_id"].iloc[20:].nunique()
    (10, 2)
    """

    def __init__(self, memory: pd.DataFrame, ratio: float = 0.5, seed: int = 0):
        super().__init__(memory, ratio, seed)
        self.seed = seed

    def before_training(self, trainer: Trainer) -> None:
        """Each rehearsal user's sequence: the ``max_len + 1`` events of the user's timeline (memory
        and context) that end at the user's newest memory event."""
        users = set(self.memory["user_id"])
        known = pd.concat([self.memory, trainer.context[trainer.context["user_id"].isin(users)]], ignore_index=True)
        known = known.drop_duplicates("event_id").sort_values(["user_id", "ts", "event_id"], kind="stable")
        self.known = known.reset_index(drop=True)
        in_memory = in_set(self.known["event_id"], set(self.memory["event_id"]))
        user_ids = self.known["user_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, user_ids[1:] != user_ids[:-1]])
        ends = np.r_[starts[1:], len(user_ids)]
        span = trainer.bundle.model.config.max_len + 1
        self.rows: dict[str, np.ndarray] = {}
        for start, end in zip(starts, ends):
            memory_rows = np.flatnonzero(in_memory[start:end])
            if len(memory_rows):
                last = start + int(memory_rows[-1])
                self.rows[user_ids[start]] = np.arange(max(start, last - span + 1), last + 1)

    def before_epoch(self, trainer: Trainer) -> None:
        budget = round(self.sampler.ratio * len(trainer.targets))
        rows = self.sampler.indices(len(self.memory), len(trainer.targets), draw_id=trainer.epoch)
        if not len(rows) or not budget:
            return
        users = self.memory["user_id"].iloc[rows].unique()
        users = users[np.random.default_rng([self.seed, trainer.epoch]).permutation(len(users))]
        chosen, total = [], 0
        for user in users:
            chosen.append(self.rows[user])
            total += len(self.rows[user])
            if total >= budget:
                break
        trainer.epoch_targets = pd.concat([trainer.epoch_targets, self.known.iloc[np.concatenate(chosen)]],
                                          ignore_index=True)


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
            if step.candidates is None:  # full softmax: every item the teacher knows
                vectors = self.model.item_vectors()
                teacher = self.model.logits(self.model(inputs, vectors)[step.mask], vectors)[:, UNKNOWN + 1:]
            else:  # sampled softmax: the step's candidates the teacher knows
                old = step.candidates < self.sizes[0]
                if not old.any():
                    return None
                teacher = scores_over(self.model, inputs, step.mask, step.candidates[old])[1]
        if step.candidates is None:
            student = step.logits[:, UNKNOWN + 1:self.sizes[0]]
        else:
            student = step.logits[:, old]
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
    window will be, on the same seeded sample of at most ``max_events`` of them every epoch, by
    the model alone: the text and live terms are fitted after training
    (:func:`learner.finetune.fit_text_blend`) and do not change what the model learns.
    """

    def __init__(self, holdout: float = 0.1, patience: int = 2, metric: str = "recall@20",
                 max_events: int | None = 2000):
        self.holdout = holdout
        self.max_events = max_events
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
        scorer = BundleScorer(trainer.bundle, trainer.device, blend=TextBlend())
        value = evaluate(scorer, self.validation, self.history, ks=ks, max_events=self.max_events)[self.metric]
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

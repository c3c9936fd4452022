"""``rehearsal``: the worker's continual fine-tune, as a training job runs it.

:func:`learner.finetune.fine_tune` of the previous model, extended with new ids, on the window
with the rehearsal memory (:func:`replay.memory.make_memory`, updated with each window as
sealing does) mixed in, distillation from the previous model and early stopping; earlier
windows are users' history (the last ``history_windows``). The text encoder is tuned as the
worker's settings say (``FineTuneConfig.text``: frozen, top layers or LoRA).
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import pyarrow as pa

from backtest.settings import BacktestSettings
from backtest.strategies.base import Context, Strategy, frames
from learner.bundle import ModelBundle
from learner.evaluate import BundleScorer, Scorer
from learner.finetune import fine_tune
from replay import codec
from replay.memory import RehearsalMemory, make_memory


def to_table(events: pd.DataFrame) -> pa.Table:
    """A learner events frame as the replay stage's Arrow table (:data:`replay.codec.EVENT_SCHEMA`).

    >>> events = pd.DataFrame({"event_id": ["e1"], "type": "click", "user_id": "u", "item_id": "i",
    ...                        "storefront": "s", "ts": [1]})
    >>> to_table(events).column("item_id").to_pylist()
    ['i']
    """
    frame = events.reindex(columns=codec.EVENT_SCHEMA.names)
    return pa.Table.from_pandas(frame, schema=codec.EVENT_SCHEMA, preserve_index=False)


class FineTuned(Strategy):
    """The worker's continual fine-tune (``rehearsal``); :mod:`backtest.strategies.naive`,
    :mod:`~backtest.strategies.id_only` and :mod:`~backtest.strategies.joint` are its ablations.

    Before the first window the model is a fresh bundle knowing the catalog; each window
    extends and fine-tunes it with :func:`learner.finetune.fine_tune`, as a training job does.
    """

    name = "rehearsal"
    use_text = True
    rehearse = True

    def __init__(self, settings: BacktestSettings, context: Context):
        super().__init__(settings, context)
        s = settings
        self.model_config = dataclasses.replace(s.model, use_text=self.use_text)
        self.config = s.finetune if self.rehearse else dataclasses.replace(
            s.finetune, rehearsal_ratio=0.0, distillation_weight=0.0)
        self.memory: RehearsalMemory | None = make_memory(
            s.rehearsal_policy, s.rehearsal_capacity, s.seed, s.rehearsal_half_life_s) if self.rehearse else None
        self.bundle = self.fresh(None)
        self.trained = False

    def fresh(self, events: pd.DataFrame | None) -> ModelBundle:
        """A new bundle knowing the catalog so far and the ids of ``events``."""
        c = self.context
        return ModelBundle.build(self.model_config, catalog=c.catalog, events=events,
                                 encoder=c.encoder if self.use_text else None, cache=c.cache, seed=self.settings.seed)

    def add_items(self, items: pd.DataFrame) -> None:
        c = self.context
        self.bundle.extend(catalog=items, encoder=c.encoder if self.use_text else None, cache=c.cache)

    def fit_window(self, window: pd.DataFrame, past: list[pd.DataFrame]) -> dict:
        rehearsal = None
        if self.memory is not None:
            self.memory.update(to_table(window))  # what sealing does, before the training job reads it
            kept = codec.to_frame(self.memory.events)
            rehearsal = kept[~kept["event_id"].isin(set(window["event_id"]))]
        c = self.context
        self.bundle, epochs = fine_tune(
            self.bundle, window, history=frames(past[-self.settings.history_windows:]), rehearsal=rehearsal,
            previous=self.bundle if self.trained else None, catalog=c.catalog,
            encoder=c.encoder if self.use_text else None, cache=c.cache, config=self.config, device=c.device)
        self.trained = True
        facts = {"epochs": len(epochs), "rehearsal_events": 0 if rehearsal is None else len(rehearsal)}
        if "text_blend" in self.bundle.info:
            facts["text_blend_weight"] = round(self.bundle.info["text_blend"]["weight"], 4)
            facts["text_blend_live"] = round(self.bundle.info["text_blend"].get("live", 0.0), 4)
        if self.bundle.info.get("text_tuned_jobs_ago") == 0:
            facts["text_tuning"] = self.bundle.info["text_tuning"]
        return facts

    def scorer(self) -> Scorer:
        return BundleScorer(self.bundle, self.context.device, self.settings.serving_precision)

"""The settings as the learner's configurations: what training jobs train with, and what the
backtest replays with (both map the settings here, so they never drift apart).

>>> model, finetune = config_for(Config.from_env({"STREAMREC_MODEL_DIM": "32", "STREAMREC_TEXT_TUNING": "lora"}))
>>> model.dim, finetune.train.epochs, finetune.text.tuning, finetune.ids.ttl_ms // DAY_MS
(32, 10, 'lora', 180)
"""

from __future__ import annotations

from learner.admission import DAY_MS, IdPolicy
from learner.finetune import FineTuneConfig
from learner.model import ModelConfig
from learner.text_tuning import TextTuningConfig
from learner.trainer import TrainConfig
from runtime.config import Config


def config_for(config: Config) -> tuple[ModelConfig, FineTuneConfig]:
    """The model and fine-tune configuration of the settings."""
    model = ModelConfig(dim=config.model_dim, max_len=config.max_history)
    train = TrainConfig(epochs=config.train_epochs, batch_size=config.train_batch_size, lr=config.learning_rate,
                        purchase_weight=config.purchase_weight, seed=config.seed,
                        loss=config.train_loss,
                        negatives=config.train_negatives)
    text = TextTuningConfig(tuning=config.text_tuning, layers=config.text_tune_layers, rank=config.text_lora_rank,
                            alpha=config.text_lora_alpha, targets=tuple(config.text_lora_targets.split(",")),
                            lr=config.text_tune_lr, steps=config.text_tune_steps, every=config.text_tune_every)
    ids = IdPolicy(config.id_min_count, round(config.id_ttl_days * DAY_MS) if config.id_ttl_days else None)
    return model, FineTuneConfig(train=train, update_epochs=config.train_update_epochs or None,
                                 rehearsal_ratio=config.rehearsal_ratio, distillation_weight=config.distill_weight,
                                 rehearsal_unit=config.rehearsal_unit, text=text, ids=ids,
                                 text_blend=config.text_blend, text_blend_tolerance=config.text_blend_tolerance,
                                 text_blend_confidence=config.text_blend_confidence,
                                 text_blend_half_count=config.text_blend_half_count)

"""One continual-learning step: extend a bundle for a sealed window and fine-tune a copy of it."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from learner.admission import IdPolicy, update_ids
from learner.blend import PAIRS, Evidence, GridScore, TextBlend, center_of, fit_counts, fit_weight
from learner.bundle import ModelBundle
from learner.device import Device
from learner.evaluate import BundleScorer, blend_hits
from learner.idmap import UNKNOWN
from learner.options import (
    TEXT_BLEND_CONFIDENCE,
    TEXT_BLEND_EVIDENCE_EVENTS,
    TEXT_BLEND_EVIDENCE_HALF_LIFE,
    TEXT_BLEND_HALF_COUNT,
)
from learner.plugins import Distillation, EarlyStopping, Rehearsal, SequenceRehearsal
from learner.sequences import events_frame, next_item_examples
from learner.text import TextEmbeddingCache, TextEncoder, catalog_texts
from learner.text_tuning import TextTuning, TextTuningConfig
from learner.trainer import Plugin, TrainConfig, Trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FineTuneConfig:
    """The loop settings plus the plugins' (each plugin is off when its setting is 0).

    ``update_epochs`` (None: ``train.epochs``) is the most epochs of an update: a fine-tune of
    a bundle that has been trained before, which starts close to where it should end, so it
    needs far fewer passes than a fresh model (``train.epochs``).
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    update_epochs: int | None = None
    rehearsal_ratio: float = 0.5
    distillation_weight: float = 1.0
    distillation_temperature: float = 1.0
    holdout: float = 0.1
    patience: int = 2
    validation_events: int | None = 2000  # early stopping ranks at most this many held-out events an epoch
    rehearsal_unit: str = "event"  # "event": Rehearsal; "sequence": SequenceRehearsal
    text: TextTuningConfig = field(default_factory=TextTuningConfig)
    ids: IdPolicy = field(default_factory=IdPolicy)
    text_blend: bool = True  # fit the text term for new items (learner.blend)
    text_blend_tolerance: float = 0.01
    text_blend_confidence: float = TEXT_BLEND_CONFIDENCE  # standard errors of margin within the tolerance
    text_blend_half_count: float = TEXT_BLEND_HALF_COUNT
    text_blend_evidence_events: int = TEXT_BLEND_EVIDENCE_EVENTS  # an update scores at most this many (0: no evidence)
    text_blend_evidence_half_life: float = TEXT_BLEND_EVIDENCE_HALF_LIFE


def fine_tune(bundle: ModelBundle, window: pd.DataFrame, *, history: pd.DataFrame | None = None,
              rehearsal: pd.DataFrame | None = None, previous: ModelBundle | None = None,
              catalog: pd.DataFrame | None = None, encoder: TextEncoder | None = None,
              cache: TextEmbeddingCache | None = None, config: FineTuneConfig | None = None,
              device: Device | None = None) -> tuple[ModelBundle, list[dict]]:
    """Train a copy of ``bundle`` on ``window``; ``bundle`` itself is left unchanged.

    The copy is first extended with the ids of ``catalog``, ``window`` and ``rehearsal``
    (``encoder``/``cache`` embed new item texts), and its id rows are admitted and retired
    by ``config.ids`` (:mod:`learner.admission`; what changed is in ``info["ids"]``).
    ``history`` is context only; ``rehearsal`` events are mixed in as extra targets;
    ``previous`` (usually ``bundle``) is distilled from. When text tuning is due
    (``config.text``), the text encoder is tuned too (it needs ``catalog`` and ``encoder``).
    A bundle trained before (``info["trained_events"]``, which this adds to) is updated for at
    most ``config.update_epochs``; before training, an update scores its window at every pair of
    weights of the text and live terms and adds that to the lineage's :class:`learner.blend.Evidence`, which the
    terms' weights are then fitted on (:func:`fit_text_blend`). Returns the trained bundle and the
    per-epoch log.
    """
    config = config or FineTuneConfig()
    student = bundle.copy()
    if config.text.tuning == "frozen" and student.adapter is not None:  # back to the pretrained encoder:
        student.adapter = None  # extending re-embeds every catalog text with it
    rehearsal = events_frame(rehearsal)
    student.extend(catalog=catalog, events=pd.concat([events_frame(window), rehearsal], ignore_index=True),
                   encoder=encoder, cache=cache, admit=config.ids.min_count == 0)
    update = bundle.info.get("trained_events", 0) > 0
    blending = config.text_blend and student.model.config.use_text
    if blending and update and config.text_blend_evidence_events:  # before the window counts as the model's evidence
        score = grid_recalls(student, events_frame(window), events_frame(history), device,
                             config.text_blend_half_count, config.text_blend_evidence_events)
        if score.events:
            student.info["text_blend_evidence"] = Evidence.of(bundle.info.get("text_blend_evidence")).add(
                score, config.text_blend_evidence_half_life).to_dict()
    student.info["ids"] = {**update_ids(student, events_frame(window), config.ids), "policy": config.ids.describe()}
    plugins: list[Plugin] = []
    if config.holdout:
        plugins.append(EarlyStopping(config.holdout, config.patience, max_events=config.validation_events))
    if config.rehearsal_ratio and len(rehearsal):
        rehearse = SequenceRehearsal if config.rehearsal_unit == "sequence" else Rehearsal
        plugins.append(rehearse(rehearsal, config.rehearsal_ratio, seed=config.train.seed))
    if config.distillation_weight and previous is not None:
        plugins.append(Distillation(previous, config.distillation_weight, config.distillation_temperature))
    student.info["text_tuned_jobs_ago"] = student.info.get("text_tuned_jobs_ago", 0) + 1
    if (config.text.due(bundle) and student.model.config.use_text and catalog is not None and encoder is not None):
        # first: its catalog re-embedding ends the first epoch, before early stopping judges it
        plugins.insert(0, TextTuning(config.text, catalog_texts(catalog), encoder, seed=config.train.seed))
    train = config.train if not update or config.update_epochs is None else replace(
        config.train, epochs=config.update_epochs)
    epoch_log = Trainer(student, train, plugins, device).fit(window, history)
    student.info["trained_events"] = bundle.info.get("trained_events", 0) + len(window)
    stopping = next((p for p in plugins if isinstance(p, EarlyStopping)), None)
    if blending and stopping is not None:
        student.info["text_blend"] = fit_text_blend(student, stopping.validation, stopping.history, device,
                                                    config.text_blend_tolerance, config.text_blend_confidence,
                                                    half_count=config.text_blend_half_count,
                                                    window=window if update else newest_half(window)).to_dict()
    return student, epoch_log


def fit_text_blend(bundle: ModelBundle, held_out: pd.DataFrame, history: pd.DataFrame, device: Device | None = None,
                   tolerance: float = 0.01, confidence: float = TEXT_BLEND_CONFIDENCE, max_events: int = 2000,
                   min_events: int = 200,
                   half_count: float = TEXT_BLEND_HALF_COUNT, window: pd.DataFrame | None = None) -> TextBlend:
    """The text and live terms (:mod:`learner.blend`) for ``bundle``: the pair of weights
    (standard deviations of the model's scores) :func:`learner.blend.fit_weight` chooses with
    ``confidence`` standard errors of margin within ``tolerance``, on the
    lineage's evidence (``info["text_blend_evidence"]``, :class:`learner.blend.Evidence`) once it
    holds ``max_events`` events, else on a seeded sample of at most ``max_events`` of the
    ``held_out`` events it was not trained on (``history``: what precedes them). With fewer than
    ``min_events`` of those either, the bundle keeps the terms it has (its parent's; none for a
    new model): too few to tell a 1% change.

    New items get the whole terms. Items first seen in ``held_out`` are new, as they will be when
    the version serves; so are, given ``window`` (``held_out`` is its tail: an update's window, a
    new model's newest half of it), the items whose every interaction is in it
    (:func:`learner.blend.fit_counts`): a window brings about as many new items as the next one
    will, its held-out tail only a tenth of them, and without the rest the fit would not see
    what the terms gain on new items nor how many warm items they displace. The held-out fit
    leaves the live term off: a held-out tail counts a tenth of the live interactions a version
    meets serving a whole window, so a live weight fitted on it overshoots; the lineage's
    evidence is scored over whole windows, as the version serves."""
    evidence = Evidence.of(bundle.info.get("text_blend_evidence"))
    if evidence.events < max_events and len(held_out) < min_events:
        return bundle.text_blend
    spread = score_spread(bundle, held_out, history, device)
    if not spread:
        return TextBlend()
    if evidence.events >= max_events:
        score, source = evidence.score(), f"{evidence.events:.0f} events of the lineage's updates"
    else:
        rows = bundle.vocab.items.index
        counts = fit_counts(bundle.model.item_counts, rows(held_out["item_id"]),
                            None if window is None else rows(window["item_id"]))
        score = grid_recalls(bundle, held_out, history, device, half_count, max_events, counts, spread,
                             pairs=tuple(pair for pair in PAIRS if not pair[1]))
        source = f"{score.events} held-out events"
    weight, live = fit_weight(score, tolerance, confidence)
    log.info("text blend: text weight %.2f sd (%.4f), live weight %.2f sd (%.4f), on %s (%d on new items); "
             "Recall@20 %.4f, on new items %.4f, against %.4f and %.4f without", weight, weight * spread, live,
             live * spread, source, score.new_events, score.recalls[weight, live],
             score.new_recalls.get((weight, live), float("nan")), score.recalls[0.0, 0.0],
             score.new_recalls.get((0.0, 0.0), float("nan")))
    return TextBlend(weight=weight * spread, half_count=half_count, center=center_of(bundle.model.item_text),
                     live=live * spread)


def newest_half(events: pd.DataFrame) -> pd.DataFrame:
    """The newer half of ``events`` in time: what stands in for a new model's window in its fit
    (the items it introduced count as new)."""
    return events.sort_values("ts", kind="stable").iloc[len(events) // 2:]


def score_spread(bundle: ModelBundle, events: pd.DataFrame, history: pd.DataFrame,
                 device: Device | None = None) -> float:
    """The mean standard deviation over items of the model's scores, for the first 256 of
    ``events`` (the unit of :data:`learner.blend.GRID`); 0 without events."""
    sample = next_item_examples(events_frame(history), events.iloc[:256], bundle.vocab, bundle.model.config.max_len)
    if not len(sample):
        return 0.0
    scores = BundleScorer(bundle, device, blend=TextBlend()).scores(sample.inputs)[:, UNKNOWN + 1:]
    return float(scores.std(dim=1).mean())


def grid_recalls(bundle: ModelBundle, events: pd.DataFrame, history: pd.DataFrame, device: Device | None,
                 half_count: float, max_events: int, counts=None, spread: float | None = None,
                 pairs: tuple[tuple[float, float], ...] = PAIRS) -> GridScore:
    """Recall@20 of ``bundle`` on a seeded sample of at most ``max_events`` of ``events``, overall
    and on new items (no interactions in ``counts``), at each of ``pairs`` (default :data:`learner.blend.PAIRS`)
    (multiples of ``spread``, by default :func:`score_spread`'s), items' interactions ``counts``
    (default: the model's) and live interactions those of ``events`` before each; no events
    scored when the scores have no spread."""
    spread = score_spread(bundle, events, history, device) if spread is None else spread
    if not spread:
        return GridScore({}, {}, 0, 0)
    center = center_of(bundle.model.item_text)
    scorer = BundleScorer(bundle, device, blend=TextBlend(), counts=counts)
    pairs = ((0.0, 0.0), *(pair for pair in pairs if pair != (0.0, 0.0)))
    blends = [TextBlend(weight=weight * spread, half_count=half_count, center=center, live=live * spread)
              for weight, live in pairs]
    hits, targets = blend_hits(scorer, blends, events, history, k=20, max_events=max_events)
    on_new = (scorer.counts.cpu().numpy()[targets] == 0) & (targets > UNKNOWN)

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if len(values) else math.nan

    return GridScore({pair: mean(h) for pair, h in zip(pairs, hits)},
                     {pair: mean(h[on_new]) for pair, h in zip(pairs, hits)}, hits.shape[1], int(on_new.sum()),
                     {pair: mean(h != hits[0]) if hits.shape[1] else 0.0 for pair, h in zip(pairs, hits)})

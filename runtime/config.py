"""Every setting of streamrec, read from ``STREAMREC_*`` environment variables, declared once.

Each setting is one field of :class:`Config`, a frozen pydantic-settings model: its name (the
variable is ``STREAMREC_<NAME>``), type, default, one-line doc, limits and the section of the
settings reference it belongs to (:data:`SECTIONS`). :data:`SETTINGS` (variable, default, doc
and section per setting, for ``streamrec config``, child processes and the docs) and the markdown
table of ``streamrec config --markdown`` (:func:`settings_table`) are derived from those fields;
``./dev docs`` regenerates the docs' settings reference (``docs/reference/settings.md``) from them.

>>> config = Config.from_env({"STREAMREC_TOPIC_PREFIX": "shop", "STREAMREC_WEB_PORT": " "})
>>> config.events_topic, config.web_port  # a blank value means the default
('shop-events', 6066)
>>> SETTINGS["gate_holdout"].env, SETTINGS["gate_holdout"].default, SETTINGS["gate_holdout"].section
('STREAMREC_GATE_HOLDOUT', '0.1', 'Gate')
>>> config.replace(gate_holdout=0.2).gate_holdout
0.2
>>> Config.from_env({"STREAMREC_GATE_HOLDOUT": "1.5"})
Traceback (most recent call last):
...
runtime.config.ConfigError: STREAMREC_GATE_HOLDOUT='1.5' must be below 1
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from learner.options import (
    LOSSES,
    REHEARSAL_UNITS,
    SAMPLED_ABOVE_ITEMS,
    SERVING_PRECISIONS,
    TEXT_BLEND_CONFIDENCE,
    TEXT_BLEND_HALF_COUNT,
    TEXT_TUNINGS,
)
from replay.memory import POLICIES, make_memory

# Faust's log level names, and what the logging module calls each.
PYTHON_LOG_LEVELS = {"crit": "CRITICAL", "error": "ERROR", "warn": "WARNING", "info": "INFO", "debug": "DEBUG"}
REHEARSAL_POLICIES = tuple(POLICIES)  # the policies replay.memory implements


def either(choices: Iterable[str]) -> str:
    """``a, b or c``.

    >>> either(["crit", "error", "warn"])
    'crit, error or warn'
    """
    *rest, last = choices
    return f"{', '.join(rest)} or {last}" if rest else last


class ConfigError(ValueError):
    """A setting has a value that cannot be used."""


RETIRED = {
    "STREAMREC_TRAIN_MAX_SECONDS": "training is no longer cut short by the clock (a busy machine trained worse "
                                   "models); STREAMREC_TRAIN_JOB_SECONDS sizes jobs by the trainer's measured speed",
}
"""Variables earlier releases read, and what replaced each."""


SECTIONS = ("Kafka and the worker", "Store", "Ingest", "Replay windows", "Rehearsal memory", "Training",
            "Text tuning", "Gate", "Drift", "Serving", "Served lists and online metrics",
            "Experiments and canary rollout")
"""The sections of the settings reference, in its order; every field of :class:`Config` names one."""
KAFKA, STORE, INGEST, WINDOWS, REHEARSAL, TRAINING, TEXT, GATE, DRIFT, SERVING, ONLINE, EXPERIMENTS = (
    {"section": title} for title in SECTIONS)


class Config(BaseSettings):
    """Every setting's value. Build it with :meth:`from_env`; change it with :meth:`replace`."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_", frozen=True, extra="forbid", validate_default=True)

    kafka_url: str = Field("kafka://127.0.0.1:9092",
                           description="Kafka bootstrap servers, `kafka://host:port[;host:port]`.",
                           json_schema_extra=KAFKA)
    database_url: str = Field("sqlite:///var/streamrec.db",
                              description="SQLAlchemy URL of the store; Postgres in production, a SQLite file by "
                                          "default.", json_schema_extra=STORE)
    app_id: str = Field("streamrec", description="Faust application id; also names the ingest consumer group "
                                                 "(`<app_id>-ingest`).", json_schema_extra=KAFKA)
    topic_prefix: str = Field("streamrec", description="Prefix of every topic: `<prefix>-events`, "
                                                       "`<prefix>-catalog`, `<prefix>-dead-letters`, "
                                                       "`<prefix>-windows`, `<prefix>-served`.",
                              json_schema_extra=KAFKA)
    topic_partitions: PositiveInt = Field(4, description="Partitions of topics the worker creates (the upper bound "
                                                         "on useful workers).", json_schema_extra=KAFKA)
    web_port: PositiveInt = Field(6066, description="HTTP port of the worker (recommendations, `/health`, "
                                                    "`/stats`).", json_schema_extra=SERVING)
    dedupe_horizon_s: PositiveInt = Field(604800, description="An `event_id` seen again within this many seconds is "
                                                              "rejected as a duplicate.", json_schema_extra=INGEST)
    max_payload_bytes: PositiveInt = Field(65536, description="Larger messages are rejected.", json_schema_extra=INGEST)
    max_future_s: PositiveInt = Field(86400, description="Events stamped further than this into the future are "
                                                         "rejected.", json_schema_extra=INGEST)
    ingest_processes: PositiveInt = Field(1, description="Ingest processes each worker runs (they share its "
                                                         "partitions; up to one per core).", json_schema_extra=INGEST)
    ingest_batch_max: PositiveInt = Field(20000, description="Most messages validated and committed to the store in "
                                                             "one transaction.", json_schema_extra=INGEST)
    window_max_events: PositiveInt = Field(10000, description="A replay window seals once it holds this many "
                                                              "events...", json_schema_extra=WINDOWS)
    window_max_age_s: PositiveFloat = Field(60, description="... or once its oldest event was ingested this many "
                                                            "seconds ago.", json_schema_extra=WINDOWS)
    rehearsal_policy: Literal[REHEARSAL_POLICIES] = Field(
        "reservoir", description=f"What the rehearsal memory keeps: {either(REHEARSAL_POLICIES)}.",
                     json_schema_extra=REHEARSAL)
    rehearsal_capacity: PositiveInt = Field(20000, description="Most events the rehearsal memory keeps.",
                                            json_schema_extra=REHEARSAL)
    rehearsal_ratio: NonNegativeFloat = Field(1.0, description="Rehearsal events drawn into a fine-tune per new "
                                                               "window event.", json_schema_extra=REHEARSAL)
    rehearsal_unit: Literal[REHEARSAL_UNITS] = Field(
        "event", description="What rehearsal replays: `event` (each drawn memory event is a target, predicted from "
                             "its history) or `sequence` (a drawn user's whole recent sequence is targets; cheaper, "
                             "but it rehearses fewer users).", json_schema_extra=REHEARSAL)
    rehearsal_half_life_s: PositiveFloat = Field(604800, description="Recency policy: an event's weight doubles "
                                                                     "every this many seconds of event time.",
                                                 json_schema_extra=REHEARSAL)
    history_windows: PositiveInt = Field(20, description="Sealed windows before the new one read as users' history "
                                                         "when training.", json_schema_extra=WINDOWS)
    model_dim: PositiveInt = Field(64, description="Width of item and user vectors (new models only).",
                                   json_schema_extra=TRAINING)
    max_history: PositiveInt = Field(50, description="Most recent interactions per user the model reads.",
                                     json_schema_extra=TRAINING)
    train_epochs: PositiveInt = Field(10, description="Most epochs of a new model's first training (early stopping "
                                                      "may end sooner).", json_schema_extra=TRAINING)
    train_update_epochs: NonNegativeInt = Field(0, description="Most epochs of an update of a trained version (early "
                                                               "stopping may end sooner); 0: `STREAMREC_TRAIN_EPOCHS`.",
                                                json_schema_extra=TRAINING)
    train_loss: Literal[LOSSES] = Field(
        "auto", description=f"Training loss: {either(LOSSES)} (`auto`: the full softmax up to {SAMPLED_ABOVE_ITEMS:,} "
                            "items, sampled softmax with the log-Q correction above).", json_schema_extra=TRAINING)
    train_negatives: PositiveInt = Field(4096, description="Sampled softmax: items drawn uniformly per step as "
                                                           "negatives, next to the batch's own targets.",
                                         json_schema_extra=TRAINING)
    id_min_count: NonNegativeInt = Field(0, description="Interactions before an item or user id gets a trainable "
                                                        "vector of its own (0: as soon as it is known; before, an "
                                                        "item is scored by its text alone).",
                                         json_schema_extra=TRAINING)
    id_ttl_days: NonNegativeFloat = Field(180, description="An id with no interaction for this many days of event "
                                                           "time loses its trainable vector (an item keeps its text "
                                                           "and stays recommendable; 0: never).",
                                          json_schema_extra=TRAINING)
    text_tuning: Literal[TEXT_TUNINGS] = Field(
        "frozen", description=f"How the MiniLM text encoder learns from behaviour: {either(TEXT_TUNINGS)} (`frozen`: "
                              "pretrained weights; `top`: its last layers are trained; `lora`: LoRA adapters, with "
                              "`peft`). Tuned weights travel inside the version.", json_schema_extra=TEXT)
    text_tune_layers: PositiveInt = Field(1, le=6, description="`top`: how many of MiniLM's 6 layers are trained.",
                                          json_schema_extra=TEXT)
    text_lora_rank: PositiveInt = Field(8, description="`lora`: rank of the adapters.", json_schema_extra=TEXT)
    text_lora_alpha: PositiveInt = Field(16, description="`lora`: scaling numerator (the update is scaled by "
                                                         "alpha / rank).", json_schema_extra=TEXT)
    text_lora_targets: str = Field("query,value", pattern=r"^[a-z._]+(,[a-z._]+)*$",
                                   description="`lora`: comma-separated MiniLM modules adapted (`query`, `key`, "
                                               "`value`, `attention.output.dense`; `intermediate.dense`, "
                                               "`output.dense` for the feed-forward part).", json_schema_extra=TEXT)
    text_tune_every: PositiveInt = Field(1, description="Tune text on every n-th training job (the others keep the "
                                                        "version's adapter).", json_schema_extra=TEXT)
    text_tune_steps: PositiveInt = Field(30, description="Most training steps of a job that also tune text (bounds "
                                                         "its CPU cost; raise it on a GPU).", json_schema_extra=TEXT)
    text_tune_lr: PositiveFloat = Field(3e-4, description="AdamW learning rate of the tuned text weights.",
                                        json_schema_extra=TEXT)
    text_blend: bool = Field(True, description="Add to every score a text term and a live term (interactions since "
                                               "the version, in proportion to how well the item's text fits the "
                                               "shopper) for items with little evidence (new products), their "
                                               "weights fitted on what every update scored before training (a new "
                                               "model: the text term alone, on its held-out events).",
                             json_schema_extra=TEXT)
    text_blend_tolerance: NonNegativeFloat = Field(0.01, lt=1, description="The text and live terms' weights are "
                                                                           "those that find new items best while "
                                                                           "Recall@20 on events the model had not "
                                                                           "trained on stays within this share of the "
                                                                           "model's alone.",
                                                   json_schema_extra=TEXT)
    text_blend_confidence: NonNegativeFloat = Field(
        TEXT_BLEND_CONFIDENCE, description="Standard errors of margin the terms' weights need within the tolerance: "
                                           "a fit on a few thousand events takes only the weights whose cost is "
                                           "clear of noise (0: the measured recall alone).",
        json_schema_extra=TEXT)
    text_blend_half_count: PositiveFloat = Field(
        TEXT_BLEND_HALF_COUNT, description="Interactions after which an item gets half the text and live terms (a "
                                           "new item gets all of them; at 0.05 the first takes 95% away).",
        json_schema_extra=TEXT)
    train_batch_size: PositiveInt = Field(128, description="Sequences per training step.", json_schema_extra=TRAINING)
    learning_rate: PositiveFloat = Field(0.001, description="Adam learning rate.", json_schema_extra=TRAINING)
    purchase_weight: PositiveFloat = Field(2.0, description="Loss weight of a purchase; a click weighs 1.",
                                           json_schema_extra=TRAINING)
    distill_weight: NonNegativeFloat = Field(1.0, description="Weight of distillation from the serving version "
                                                              "(0: off).", json_schema_extra=TRAINING)
    gate_holdout: PositiveFloat = Field(0.1, lt=1, description="Newest share of each storefront's events in a job "
                                                               "held out of training to judge the candidate.",
                                        json_schema_extra=GATE)
    gate_tolerance: NonNegativeFloat = Field(0.05, description="A candidate is promoted unless its Recall@20 is this "
                                                               "share below the serving one.", json_schema_extra=GATE)
    gate_min_events: PositiveInt = Field(200, description="The gate never promotes a candidate judged on fewer "
                                                          "held-out events than this (it is kept as rejected).",
                                         json_schema_extra=GATE)
    gate_max_events: PositiveInt = Field(5000, description="Most held-out events the gate ranks (a seeded sample; "
                                                           "the rest count as history), so judging a job costs the "
                                                           "same whatever its size.", json_schema_extra=GATE)
    gate_max_coverage_drop: NonNegativeFloat = Field(
        0.5, le=1, description="A candidate is also refused when its coverage@20 (the share of known items in at "
                               "least one of its top-20 lists of the held-out events) is more than this share below "
                               "the serving one's (0.5: under half of it; 1: never).", json_schema_extra=GATE)
    worker_trains: bool = Field(True, description="Whether each worker runs a trainer process; set false where "
                                                  "`streamrec trainer` runs on its own (GPU) hosts.",
                                json_schema_extra=TRAINING)
    train_min_events: PositiveInt = Field(2000, description="A training job waits until sealed, untrained windows "
                                                            "hold this many events...", json_schema_extra=TRAINING)
    train_max_wait_s: NonNegativeFloat = Field(600, description="... or until the oldest of them sealed this many "
                                                             "seconds ago.", json_schema_extra=TRAINING)
    train_max_events: PositiveInt = Field(200000, description="Most events of the sealed windows one job trains on "
                                                             "together (it takes at least one window).",
                                          json_schema_extra=TRAINING)
    train_job_seconds: PositiveFloat = Field(30, description="How long a trainer aims a job to take: it takes as "
                                                             "many sealed windows as it absorbed in that time on its "
                                                             "recent jobs (at least one window, at most "
                                                             "`STREAMREC_TRAIN_MAX_EVENTS`). Training itself is "
                                                             "bounded by its events and epochs, never by the clock: "
                                                             "a busy machine makes jobs slower, not worse.",
                                             json_schema_extra=TRAINING)
    train_lease_s: PositiveFloat = Field(60, description="A trainer's lease on its job's windows; renewed while it "
                                                         "trains, taken over by another trainer once expired.",
                                         json_schema_extra=TRAINING)
    train_max_tries: PositiveInt = Field(3, description="Attempts at a window (a failed job's windows are retried "
                                                        "alone) before it is marked failed.",
                                         json_schema_extra=TRAINING)
    drift_reference_windows: PositiveInt = Field(3, description="First windows of each storefront that input drift "
                                                                "is compared with.", json_schema_extra=DRIFT)
    drift_quality_events: PositiveInt = Field(2000, description="Most events of each window and storefront the "
                                                                "prequential quality is measured on (a seeded "
                                                                "sample).", json_schema_extra=DRIFT)
    drift_probe_events: PositiveInt = Field(2000, description="Most events in each storefront's forgetting probe (a "
                                                              "seeded sample of its first window's held-out slice).",
                                            json_schema_extra=DRIFT)
    drift_alert_min_events: PositiveInt = Field(500, description="A drift value measured on fewer events of its "
                                                                 "storefront never breaches its threshold, so never "
                                                                 "alerts.", json_schema_extra=DRIFT)
    seed: PositiveInt = Field(1, description="Seed of every random choice (rehearsal sampling, training).",
                              json_schema_extra=TRAINING)
    serving_poll_s: PositiveFloat = Field(1.0, description="How often a worker checks for a newly promoted version, "
                                                           "new events and catalog items.", json_schema_extra=SERVING)
    ann_above_items: PositiveInt = Field(100_000, description="Above this many items, `/recommend`, `/similar` and "
                                                              "`/search` search inverted-file indexes (`faiss`) "
                                                              "instead of scoring every item.",
                                         json_schema_extra=SERVING)
    ann_recall: float = Field(
        0.95, gt=0, le=1, description="The share of the exact top 20 that each index should find. When a worker "
                                      "builds an index it measures this for 200 of its items and scans as few of its "
                                      "lists as reach it: higher scans more and takes longer.",
                          json_schema_extra=SERVING)
    serving_precision: Literal[SERVING_PRECISIONS] = Field(
        "int8", description=f"How workers hold item vectors: {either(SERVING_PRECISIONS)} (4, 2 or 1 byte a "
                            "dimension; int8 has a scale per item). The gate judges candidates as they will be "
                            "served.", json_schema_extra=SERVING)
    serving_onnx: bool = Field(
        True, description="On a CPU, workers compute users' states and encode search queries with ONNX Runtime "
                          "exports of the serving version's models, made in the background after each swap and "
                          "checked to answer as torch does (answers are torch's until then).",
              json_schema_extra=SERVING)
    trending_half_life_s: PositiveFloat = Field(3600, description="Trending items: an event's weight halves every "
                                                                  "this many seconds of event time.",
                                                json_schema_extra=SERVING)
    post_max_events: PositiveInt = Field(1000, description="Most events in one `POST /events` request.",
                                         json_schema_extra=INGEST)
    served_log: bool = Field(True, description="Log every list `/recommend`, `/similar` and `/search` serve to "
                                               "`<prefix>-served` (after the answer, off the request path), "
                                               "so clicks and purchases can be attributed to it.",
                             json_schema_extra=ONLINE)
    served_retention_days: PositiveFloat = Field(30, description="Served lists and their attributed events are "
                                                                 "kept this many days; online metrics for good.",
                                                 json_schema_extra=ONLINE)
    attribution_window_s: PositiveInt = Field(3600, description="An event without `request_id` is attributed to "
                                                                "the newest list that showed the same user that "
                                                                "item at most this long before it (inferred).",
                                              json_schema_extra=ONLINE)
    online_metrics_s: PositiveFloat = Field(60, description="How often a worker recomputes the online metrics of "
                                                            "the hours whose lists can still gain attributed "
                                                            "events.", json_schema_extra=ONLINE)
    api_token: str = Field("", repr=False,  # a secret: shown only as (set) or (unset)
                           description="Bearer token required by state-changing HTTP endpoints; they are refused "
                                       "while it is unset.", json_schema_extra=SERVING)
    session_timeout_s: PositiveInt = Field(30, description="Kafka group session timeout: how long a dead worker "
                                                           "keeps its partitions.", json_schema_extra=KAFKA)
    log_level: Literal[tuple(PYTHON_LOG_LEVELS)] = Field(
        "info", description=f"Worker log level: {either(PYTHON_LOG_LEVELS)}.", json_schema_extra=KAFKA)
    rollout: Literal["gate", "canary"] = Field(
        "gate", description="What happens to a candidate the offline gate passes: `gate` promotes it at once; "
                            "`canary` first serves it to `STREAMREC_CANARY_SHARE` of users against the serving "
                            "version, and the workers promote or roll it back by its online results (needs clicks "
                            "sent with the answer's `request_id`).", json_schema_extra=EXPERIMENTS)
    canary_share: float = Field(0.1, gt=0, lt=1, description="Share of users a canary candidate serves.",
                                json_schema_extra=EXPERIMENTS)
    canary_margin: PositiveFloat = Field(0.05, description="A canary is promoted once its confidence sequence rules "
                                                           "out a loss of per-user CTR larger than this share of the "
                                                           "serving version's.", json_schema_extra=EXPERIMENTS)
    canary_min_users: PositiveInt = Field(1000, description="Users each arm of a canary must have before it can be "
                                                            "promoted (a significant loss or a guardrail breach rolls "
                                                            "it back sooner).", json_schema_extra=EXPERIMENTS)
    canary_check_s: PositiveFloat = Field(60, description="How often a worker checks the running canary for a "
                                                          "decision (one worker decides).",
                                          json_schema_extra=EXPERIMENTS)
    experiment_alpha: float = Field(0.05, gt=0, lt=1, description="Experiments' confidence sequences cover the true "
                                                                   "difference at every look with probability "
                                                                   "1 - this.", json_schema_extra=EXPERIMENTS)
    experiment_tuning_users: PositiveInt = Field(5000, description="Users at which experiments' confidence "
                                                                   "sequences are tightest (GrowthBook's default).",
                                                   json_schema_extra=EXPERIMENTS)

    @field_validator("kafka_url")
    @classmethod
    def _kafka_scheme(cls, value: str) -> str:
        if not value.startswith("kafka://"):
            raise ValueError("must start with kafka://")
        return value

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        """Only the values passed in: :meth:`from_env` alone reads variables (no ``.env`` or secret files)."""
        return (init_settings,)

    @classmethod
    def env_name(cls, name: str) -> str:
        """The variable of setting ``name``: ``STREAMREC_<NAME>``."""
        return f"{cls.model_config['env_prefix']}{name.upper()}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Read every setting from ``env`` (default ``os.environ``); raise ConfigError on a bad value.

        Values are stripped of surrounding whitespace; a blank one means the default. A retired
        variable (:data:`RETIRED`) that is still set is refused with what replaced it.
        """
        env = os.environ if env is None else env
        for name, instead in RETIRED.items():
            if env.get(name, "").strip():
                raise ConfigError(f"{name} is no longer read: {instead}; unset it")
        return cls._validated({name: value for name in cls.model_fields
                               if (value := env.get(cls.env_name(name), "").strip())})

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` (setting name to value), validated like :meth:`from_env`."""
        return self._validated({**self.model_dump(), **changes})

    @classmethod
    def _validated(cls, values: dict[str, Any]) -> Config:
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(cls._complaint(exc.errors()[0])) from None

    @classmethod
    def _complaint(cls, error: dict[str, Any]) -> str:
        """One pydantic error as ``STREAMREC_<NAME>=<value> <what is wrong>``."""
        name = str(error["loc"][0]) if error["loc"] else ""
        if name not in cls.model_fields:
            return f"{name!r} is not a setting"
        kind, ctx = error["type"], error.get("ctx", {})
        if kind.startswith("int_"):
            problem = "is not a whole number"
        elif kind.startswith("float_"):
            problem = "is not a number"
        elif kind in ("greater_than", "greater_than_equal"):
            problem = "must be positive"
        elif kind == "less_than":
            problem = f"must be below {ctx['lt']:g}"
        elif kind == "less_than_equal":
            problem = f"must be at most {ctx['le']:g}"
        elif kind == "literal_error":
            problem = f"must be one of {', '.join(get_args(cls.model_fields[name].annotation))}"
        elif kind == "value_error":
            problem = str(ctx["error"])
        else:
            problem = error["msg"]
        return f"{cls.env_name(name)}={error['input']!r} {problem}"

    def new_rehearsal_memory(self):
        """An empty rehearsal memory of the configured policy, capacity, seed and half-life."""
        return make_memory(self.rehearsal_policy, self.rehearsal_capacity, self.seed, self.rehearsal_half_life_s)

    def shown(self, name: str) -> str:
        """A setting's value for display: secrets as ``(set)`` or ``(unset)``, URLs without passwords."""
        value = getattr(self, name)
        if not type(self).model_fields[name].repr:
            return "(set)" if value else "(unset)"
        if name == "database_url":
            return make_url(value).render_as_string(hide_password=True)
        return str(value)

    def __repr_args__(self):
        return [(name, self.shown(name)) for name in type(self).model_fields]

    def __repr__(self) -> str:
        return f"Config({', '.join(f'{name}={shown}' for name, shown in self.__repr_args__())})"

    __str__ = __repr__

    @property
    def bootstrap_servers(self) -> str:
        """Comma-separated ``host:port`` list for kafka-python and aiokafka."""
        return self.kafka_url.removeprefix("kafka://").replace(";", ",")

    @property
    def events_topic(self) -> str:
        return f"{self.topic_prefix}-events"

    @property
    def catalog_topic(self) -> str:
        return f"{self.topic_prefix}-catalog"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic_prefix}-dead-letters"

    @property
    def windows_topic(self) -> str:
        """Single-partition control topic: one notice per sealed window, read by one worker."""
        return f"{self.topic_prefix}-windows"

    @property
    def served_topic(self) -> str:
        """Served lists, logged by the workers that answered them and ingested like events."""
        return f"{self.topic_prefix}-served"

    @property
    def ingest_group(self) -> str:
        return f"{self.app_id}-ingest"

    @property
    def python_log_level(self) -> str:
        """``log_level`` as the :mod:`logging` module names it."""
        return PYTHON_LOG_LEVELS[self.log_level]

    def sqlite_path(self) -> Path | None:
        """The database file when the store is SQLite, else None."""
        prefix = "sqlite:///"
        return Path(self.database_url[len(prefix):]) if self.database_url.startswith(prefix) else None


@dataclass(frozen=True)
class Setting:
    """One setting as the environment sees it: variable, default (as a string) and doc, and the
    section of the settings reference it is listed in (one of :data:`SECTIONS`)."""

    env: str
    default: str
    help: str
    section: str = ""


def _shown_default(value) -> str:
    """A default as it is written in the environment (``true``, not ``True``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


SETTINGS: dict[str, Setting] = {name: Setting(Config.env_name(name), _shown_default(field.default),
                                               field.description or "",
                                               (field.json_schema_extra or {}).get("section", ""))
                                for name, field in Config.model_fields.items()}

README_BEGIN, README_END = "<!-- settings:begin -->", "<!-- settings:end -->"


def settings_table() -> str:
    """A markdown table of every setting: variable, default and meaning (``streamrec config --markdown``).

    >>> print(settings_table().splitlines()[2])
    | `STREAMREC_KAFKA_URL` | `kafka://127.0.0.1:9092` | Kafka bootstrap servers, `kafka://host:port[;host:port]`. |
    """
    rows = [f"| `{s.env}` | `{s.default}` | {s.help} |" for s in SETTINGS.values()]
    return "\n".join(["| variable | default | meaning |", "|---|---|---|", *rows]) + "\n"


def with_settings_table(text: str) -> str:
    """``text`` (a markdown page) with :func:`settings_table` between its ``settings`` markers."""
    pattern = re.compile(f"(?<={re.escape(README_BEGIN)}\n).*?(?={re.escape(README_END)})", re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"no {README_BEGIN} ... {README_END} lines to put the settings table between")
    return pattern.sub(lambda _: settings_table(), text, count=1)


def write_readme(path: str | Path) -> bool:
    """Regenerate the settings table in the markdown page at ``path``; return whether it changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    updated = with_settings_table(text)
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    return updated != text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print the settings table, or rewrite it in a README.")
    parser.add_argument("--write-readme", metavar="README", help="rewrite the table between the settings markers")
    args = parser.parse_args()
    if args.write_readme:
        print(f"{args.write_readme}: {'updated' if write_readme(args.write_readme) else 'already up to date'}")
    else:
        print(settings_table(), end="")

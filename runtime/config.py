"""Every setting of streamrec, read from ``STREAMREC_*`` environment variables, declared once.

Each setting is one field of :class:`Config`, a frozen pydantic-settings model: its name (the
variable is ``STREAMREC_<NAME>``), type, default, one-line doc and limits. :data:`SETTINGS`
(variable, default and doc per setting, for ``streamrec config`` and child processes) and the
README's table (:func:`settings_table`) are derived from those fields. Regenerate the table with
``python -m runtime.config --write-readme README.md``.

>>> config = Config.from_env({"STREAMREC_TOPIC_PREFIX": "shop", "STREAMREC_WEB_PORT": " "})
>>> config.events_topic, config.web_port  # a blank value means the default
('shop-events', 6066)
>>> SETTINGS["gate_holdout"].env, SETTINGS["gate_holdout"].default
('STREAMREC_GATE_HOLDOUT', '0.1')
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

from learner.options import LOSSES, REHEARSAL_UNITS, SAMPLED_ABOVE_ITEMS, SERVING_PRECISIONS, TEXT_TUNINGS
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


class Config(BaseSettings):
    """Every setting's value. Build it with :meth:`from_env`; change it with :meth:`replace`."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_", frozen=True, extra="forbid", validate_default=True)

    kafka_url: str = Field("kafka://127.0.0.1:9092",
                           description="Kafka bootstrap servers, `kafka://host:port[;host:port]`.")
    database_url: str = Field("sqlite:///var/streamrec.db",
                              description="SQLAlchemy URL of the store; Postgres in production, a SQLite file by "
                                          "default.")
    app_id: str = Field("streamrec", description="Faust application id; also names the ingest consumer group "
                                                 "(`<app_id>-ingest`).")
    topic_prefix: str = Field("streamrec", description="Prefix of every topic: `<prefix>-events`, "
                                                       "`<prefix>-catalog`, `<prefix>-dead-letters`, "
                                                       "`<prefix>-windows`.")
    topic_partitions: PositiveInt = Field(4, description="Partitions of topics the worker creates (the upper bound "
                                                         "on useful workers).")
    web_port: PositiveInt = Field(6066, description="HTTP port of the worker (recommendations, `/health`, "
                                                    "`/stats`).")
    dedupe_horizon_s: PositiveInt = Field(604800, description="An `event_id` seen again within this many seconds is "
                                                              "rejected as a duplicate.")
    max_payload_bytes: PositiveInt = Field(65536, description="Larger messages are rejected.")
    max_future_s: PositiveInt = Field(86400, description="Events stamped further than this into the future are "
                                                         "rejected.")
    ingest_processes: PositiveInt = Field(1, description="Ingest processes each worker runs (they share its "
                                                         "partitions; up to one per core).")
    ingest_batch_max: PositiveInt = Field(20000, description="Most messages validated and committed to the store in "
                                                             "one transaction.")
    window_max_events: PositiveInt = Field(10000, description="A replay window seals once it holds this many "
                                                              "events...")
    window_max_age_s: PositiveFloat = Field(60, description="... or once its oldest event was ingested this many "
                                                            "seconds ago.")
    rehearsal_policy: Literal[REHEARSAL_POLICIES] = Field(
        "reservoir", description=f"What the rehearsal memory keeps: {either(REHEARSAL_POLICIES)}.")
    rehearsal_capacity: PositiveInt = Field(20000, description="Most events the rehearsal memory keeps.")
    rehearsal_ratio: NonNegativeFloat = Field(1.0, description="Rehearsal events drawn into a fine-tune per new "
                                                               "window event.")
    rehearsal_unit: Literal[REHEARSAL_UNITS] = Field(
        "event", description="What rehearsal replays: `event` (each drawn memory event is a target, predicted from "
                             "its history) or `sequence` (a drawn user's whole recent sequence is targets; cheaper, "
                             "but it rehearses fewer users).")
    rehearsal_half_life_s: PositiveFloat = Field(604800, description="Recency policy: an event's weight doubles "
                                                                     "every this many seconds of event time.")
    history_windows: PositiveInt = Field(20, description="Sealed windows before the new one read as users' history "
                                                         "when training.")
    model_dim: PositiveInt = Field(64, description="Width of item and user vectors (new models only).")
    max_history: PositiveInt = Field(50, description="Most recent interactions per user the model reads.")
    train_epochs: PositiveInt = Field(10, description="Most epochs of a new model's first training (early stopping "
                                                      "may end sooner).")
    train_update_epochs: NonNegativeInt = Field(0, description="Most epochs of an update of a trained version (early "
                                                               "stopping may end sooner); 0: `STREAMREC_TRAIN_EPOCHS`.")
    train_loss: Literal[LOSSES] = Field(
        "auto", description=f"Training loss: {either(LOSSES)} (`auto`: the full softmax up to {SAMPLED_ABOVE_ITEMS:,} "
                            "items, sampled softmax with the log-Q correction above).")
    train_negatives: PositiveInt = Field(4096, description="Sampled softmax: items drawn uniformly per step as "
                                                           "negatives, next to the batch's own targets.")
    id_min_count: NonNegativeInt = Field(0, description="Interactions before an item or user id gets a trainable "
                                                        "vector of its own (0: as soon as it is known; before, an "
                                                        "item is scored by its text alone).")
    id_ttl_days: NonNegativeFloat = Field(180, description="An id with no interaction for this many days of event "
                                                           "time loses its trainable vector (an item keeps its text "
                                                           "and stays recommendable; 0: never).")
    text_tuning: Literal[TEXT_TUNINGS] = Field(
        "frozen", description=f"How the MiniLM text encoder learns from behaviour: {either(TEXT_TUNINGS)} (`frozen`: "
                              "pretrained weights; `top`: its last layers are trained; `lora`: LoRA adapters, with "
                              "`peft`). Tuned weights travel inside the version.")
    text_tune_layers: PositiveInt = Field(1, le=6, description="`top`: how many of MiniLM's 6 layers are trained.")
    text_lora_rank: PositiveInt = Field(8, description="`lora`: rank of the adapters.")
    text_lora_alpha: PositiveInt = Field(16, description="`lora`: scaling numerator (the update is scaled by "
                                                         "alpha / rank).")
    text_lora_targets: str = Field("query,value", pattern=r"^[a-z._]+(,[a-z._]+)*$",
                                   description="`lora`: comma-separated MiniLM modules adapted (`query`, `key`, "
                                               "`value`, `attention.output.dense`; `intermediate.dense`, "
                                               "`output.dense` for the feed-forward part).")
    text_tune_every: PositiveInt = Field(1, description="Tune text on every n-th training job (the others keep the "
                                                        "version's adapter).")
    text_tune_steps: PositiveInt = Field(30, description="Most training steps of a job that also tune text (bounds "
                                                         "its CPU cost; raise it on a GPU).")
    text_tune_lr: PositiveFloat = Field(3e-4, description="AdamW learning rate of the tuned text weights.")
    text_blend: bool = Field(True, description="Add to every score a text term for items with little evidence "
                                               "(new products), its weight fitted on each job's held-out events.")
    text_blend_tolerance: NonNegativeFloat = Field(0.01, lt=1, description="The text term's weight is the largest "
                                                                           "whose held-out Recall@20 stays within this "
                                                                           "share of the model's alone.")
    train_batch_size: PositiveInt = Field(128, description="Sequences per training step.")
    learning_rate: PositiveFloat = Field(0.001, description="Adam learning rate.")
    purchase_weight: PositiveFloat = Field(2.0, description="Loss weight of a purchase; a click weighs 1.")
    distill_weight: NonNegativeFloat = Field(1.0, description="Weight of distillation from the serving version "
                                                              "(0: off).")
    gate_holdout: PositiveFloat = Field(0.1, lt=1, description="Newest share of each window held out of training to "
                                                               "judge the candidate.")
    gate_tolerance: NonNegativeFloat = Field(0.05, description="A candidate is promoted unless its Recall@20 is this "
                                                               "share below the serving one.")
    gate_min_events: PositiveInt = Field(200, description="The gate never promotes a candidate judged on fewer "
                                                          "held-out events than this (it is kept as rejected).")
    gate_max_events: PositiveInt = Field(5000, description="Most held-out events the gate ranks (a seeded sample; "
                                                           "the rest count as history), so judging a job costs the "
                                                           "same whatever its size.")
    worker_trains: bool = Field(True, description="Whether each worker runs a trainer process; set false where "
                                                  "`streamrec trainer` runs on its own (GPU) hosts.")
    train_min_events: PositiveInt = Field(2000, description="A training job waits until sealed, untrained windows "
                                                            "hold this many events...")
    train_max_wait_s: NonNegativeFloat = Field(600, description="... or until the oldest of them sealed this many "
                                                             "seconds ago.")
    train_max_events: PositiveInt = Field(200000, description="Most events of the sealed windows one job trains on "
                                                             "together (it takes at least one window).")
    train_job_seconds: PositiveFloat = Field(30, description="How long a trainer aims a job to take: it takes as "
                                                             "many sealed windows as it absorbed in that time on its "
                                                             "recent jobs (at least one window, at most "
                                                             "`STREAMREC_TRAIN_MAX_EVENTS`). Training itself is "
                                                             "bounded by its events and epochs, never by the clock: "
                                                             "a busy machine makes jobs slower, not worse.")
    train_lease_s: PositiveFloat = Field(60, description="A trainer's lease on its job's windows; renewed while it "
                                                         "trains, taken over by another trainer once expired.")
    train_max_tries: PositiveInt = Field(3, description="Attempts at a window (a failed job's windows are retried "
                                                        "alone) before it is marked failed.")
    drift_reference_windows: PositiveInt = Field(3, description="First windows of each storefront that input drift "
                                                                "is compared with.")
    drift_quality_events: PositiveInt = Field(2000, description="Most events of each window and storefront the "
                                                                "prequential quality is measured on (a seeded "
                                                                "sample).")
    drift_probe_events: PositiveInt = Field(2000, description="Most events in each storefront's forgetting probe (a "
                                                              "seeded sample of its first window's held-out slice).")
    drift_alert_min_events: PositiveInt = Field(500, description="A drift value measured on fewer events of its "
                                                                 "storefront never breaches its threshold, so never "
                                                                 "alerts.")
    seed: PositiveInt = Field(1, description="Seed of every random choice (rehearsal sampling, training).")
    serving_poll_s: PositiveFloat = Field(1.0, description="How often a worker checks for a newly promoted version, "
                                                           "new events and catalog items.")
    ann_above_items: PositiveInt = Field(100_000, description="Above this many items, `/recommend`, `/similar` and "
                                                              "`/search` search inverted-file indexes (`faiss`) "
                                                              "instead of scoring every item.")
    ann_recall: float = Field(
        0.95, gt=0, le=1, description="The share of the exact top 20 that each index should find. When a worker "
                                      "builds an index it measures this for 200 of its items and scans as few of its "
                                      "lists as reach it: higher scans more and takes longer.")
    serving_precision: Literal[SERVING_PRECISIONS] = Field(
        "int8", description=f"How workers hold item vectors: {either(SERVING_PRECISIONS)} (4, 2 or 1 byte a "
                            "dimension; int8 has a scale per item). The gate judges candidates as they will be "
                            "served.")
    serving_onnx: bool = Field(
        True, description="On a CPU, workers compute users' states and encode search queries with ONNX Runtime "
                          "exports of the serving version's models, made in the background after each swap and "
                          "checked to answer as torch does (answers are torch's until then).")
    trending_half_life_s: PositiveFloat = Field(3600, description="Trending items: an event's weight halves every "
                                                                  "this many seconds of event time.")
    post_max_events: PositiveInt = Field(1000, description="Most events in one `POST /events` request.")
    api_token: str = Field("", repr=False,  # a secret: shown only as (set) or (unset)
                           description="Bearer token required by state-changing HTTP endpoints; they are refused "
                                       "while it is unset.")
    session_timeout_s: PositiveInt = Field(30, description="Kafka group session timeout: how long a dead worker "
                                                           "keeps its partitions.")
    log_level: Literal[tuple(PYTHON_LOG_LEVELS)] = Field(
        "info", description=f"Worker log level: {either(PYTHON_LOG_LEVELS)}.")

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
    """One setting as the environment sees it: variable, default (as a string) and doc."""

    env: str
    default: str
    help: str


def _shown_default(value) -> str:
    """A default as it is written in the environment (``true``, not ``True``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


SETTINGS: dict[str, Setting] = {name: Setting(Config.env_name(name), _shown_default(field.default),
                                               field.description or "")
                                for name, field in Config.model_fields.items()}

README_BEGIN, README_END = "<!-- settings:begin -->", "<!-- settings:end -->"


def settings_table() -> str:
    """The README's markdown table: variable, default and meaning of every setting.

    >>> print(settings_table().splitlines()[2])
    | `STREAMREC_KAFKA_URL` | `kafka://127.0.0.1:9092` | Kafka bootstrap servers, `kafka://host:port[;host:port]`. |
    """
    rows = [f"| `{s.env}` | `{s.default}` | {s.help} |" for s in SETTINGS.values()]
    return "\n".join(["| variable | default | meaning |", "|---|---|---|", *rows]) + "\n"


def with_settings_table(text: str) -> str:
    """``text`` (the README) with :func:`settings_table` between its ``settings`` markers."""
    pattern = re.compile(f"(?<={re.escape(README_BEGIN)}\n).*?(?={re.escape(README_END)})", re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"no {README_BEGIN} ... {README_END} lines to put the settings table between")
    return pattern.sub(lambda _: settings_table(), text, count=1)


def write_readme(path: str | Path) -> bool:
    """Regenerate the settings table in the README at ``path``; return whether it changed."""
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

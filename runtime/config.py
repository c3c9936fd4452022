"""Every setting, read from ``STREAMREC_*`` environment variables, in one place.

The table in the README is generated from :data:`SETTINGS`; each entry names the
variable, its default and what it controls.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from sqlalchemy.engine import make_url


class ConfigError(ValueError):
    """A setting has a value that cannot be used."""


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    help: str


LOG_LEVELS = ("crit", "error", "warn", "info", "debug")  # Faust's names
REHEARSAL_POLICIES = ("reservoir", "frequency", "recency")  # replay.memory.POLICIES
SECRETS = {"api_token"}  # never printed or logged
ZERO_ALLOWED = {"rehearsal_ratio", "distill_weight", "gate_tolerance"}  # 0 switches these off

SETTINGS: dict[str, Setting] = {
    "kafka_url": Setting("STREAMREC_KAFKA_URL", "kafka://127.0.0.1:9092",
                         "Kafka bootstrap servers, `kafka://host:port[;host:port]`."),
    "database_url": Setting("STREAMREC_DATABASE_URL", "sqlite:///var/streamrec.db",
                            "SQLAlchemy URL of the store; Postgres in production, a SQLite file by default."),
    "app_id": Setting("STREAMREC_APP_ID", "streamrec",
                      "Faust application id; also names the ingest consumer group (`<app_id>-ingest`)."),
    "topic_prefix": Setting("STREAMREC_TOPIC_PREFIX", "streamrec",
                            "Prefix of every topic: `<prefix>-events`, `<prefix>-catalog`, `<prefix>-dead-letters`, `<prefix>-windows`."),
    "topic_partitions": Setting("STREAMREC_TOPIC_PARTITIONS", "4",
                                "Partitions of topics the worker creates (the upper bound on useful workers)."),
    "web_port": Setting("STREAMREC_WEB_PORT", "6066", "HTTP port of the worker (recommendations, `/health`, `/stats`)."),
    "dedupe_horizon_s": Setting("STREAMREC_DEDUPE_HORIZON_S", "604800",
                                "An `event_id` seen again within this many seconds is rejected as a duplicate."),
    "max_payload_bytes": Setting("STREAMREC_MAX_PAYLOAD_BYTES", "65536", "Larger messages are rejected."),
    "max_future_s": Setting("STREAMREC_MAX_FUTURE_S", "86400",
                            "Events stamped further than this into the future are rejected."),
    "ingest_processes": Setting("STREAMREC_INGEST_PROCESSES", "1",
                                "Ingest processes each worker runs (they share its partitions; up to one per core)."),
    "ingest_batch_max": Setting("STREAMREC_INGEST_BATCH_MAX", "20000",
                                "Most messages validated and committed to the store in one transaction."),
    "window_max_events": Setting("STREAMREC_WINDOW_MAX_EVENTS", "10000",
                                 "A replay window seals once it holds this many events..."),
    "window_max_age_s": Setting("STREAMREC_WINDOW_MAX_AGE_S", "60",
                                "... or once its oldest event was ingested this many seconds ago."),
    "rehearsal_policy": Setting("STREAMREC_REHEARSAL_POLICY", "reservoir",
                                "What the rehearsal memory keeps: reservoir, frequency or recency."),
    "rehearsal_capacity": Setting("STREAMREC_REHEARSAL_CAPACITY", "20000", "Most events the rehearsal memory keeps."),
    "rehearsal_ratio": Setting("STREAMREC_REHEARSAL_RATIO", "1.0",
                               "Rehearsal events drawn into a fine-tune per new window event."),
    "rehearsal_half_life_s": Setting("STREAMREC_REHEARSAL_HALF_LIFE_S", "604800",
                                     "Recency policy: an event's weight doubles every this many seconds of event time."),
    "history_windows": Setting("STREAMREC_HISTORY_WINDOWS", "20",
                               "Sealed windows before the new one read as users' history when training."),
    "model_dim": Setting("STREAMREC_MODEL_DIM", "64", "Width of item and user vectors (new models only)."),
    "max_history": Setting("STREAMREC_MAX_HISTORY", "50", "Most recent interactions per user the model reads."),
    "train_epochs": Setting("STREAMREC_TRAIN_EPOCHS", "10", "Most epochs per fine-tune (early stopping may end sooner)."),
    "train_batch_size": Setting("STREAMREC_TRAIN_BATCH_SIZE", "128", "Sequences per training step."),
    "learning_rate": Setting("STREAMREC_LEARNING_RATE", "0.001", "Adam learning rate."),
    "purchase_weight": Setting("STREAMREC_PURCHASE_WEIGHT", "2.0", "Loss weight of a purchase; a click weighs 1."),
    "distill_weight": Setting("STREAMREC_DISTILL_WEIGHT", "1.0",
                              "Weight of distillation from the serving version (0: off)."),
    "gate_holdout": Setting("STREAMREC_GATE_HOLDOUT", "0.1",
                            "Newest share of each window held out of training to judge the candidate."),
    "gate_tolerance": Setting("STREAMREC_GATE_TOLERANCE", "0.05",
                              "A candidate is promoted unless its Recall@20 is this share below the serving one."),
    "drift_reference_windows": Setting("STREAMREC_DRIFT_REFERENCE_WINDOWS", "3",
                                       "First windows of each storefront that input drift is compared with."),
    "drift_probe_events": Setting("STREAMREC_DRIFT_PROBE_EVENTS", "2000",
                                  "Most events in each storefront's forgetting probe (a seeded sample of its first "
                                  "window's held-out slice)."),
    "seed": Setting("STREAMREC_SEED", "1", "Seed of every random choice (rehearsal sampling, training)."),
    "serving_poll_s": Setting("STREAMREC_SERVING_POLL_S", "1.0",
                              "How often a worker checks for a newly promoted version, new events and catalog items."),
    "trending_half_life_s": Setting("STREAMREC_TRENDING_HALF_LIFE_S", "3600",
                                    "Trending items: an event's weight halves every this many seconds of event time."),
    "post_max_events": Setting("STREAMREC_POST_MAX_EVENTS", "1000", "Most events in one `POST /events` request."),
    "api_token": Setting("STREAMREC_API_TOKEN", "",
                         "Bearer token required by state-changing HTTP endpoints; they are refused while it is unset."),
    "session_timeout_s": Setting("STREAMREC_SESSION_TIMEOUT_S", "30",
                                 "Kafka group session timeout: how long a dead worker keeps its partitions."),
    "log_level": Setting("STREAMREC_LOG_LEVEL", "info", "Worker log level: crit, error, warn, info or debug."),
}


@dataclass(frozen=True)
class Config:
    kafka_url: str
    database_url: str
    app_id: str
    topic_prefix: str
    topic_partitions: int
    web_port: int
    dedupe_horizon_s: int
    max_payload_bytes: int
    max_future_s: int
    ingest_processes: int
    ingest_batch_max: int
    window_max_events: int
    window_max_age_s: float
    rehearsal_policy: str
    rehearsal_capacity: int
    rehearsal_ratio: float
    rehearsal_half_life_s: float
    history_windows: int
    model_dim: int
    max_history: int
    train_epochs: int
    train_batch_size: int
    learning_rate: float
    purchase_weight: float
    distill_weight: float
    gate_holdout: float
    gate_tolerance: float
    drift_reference_windows: int
    drift_probe_events: int
    seed: int
    serving_poll_s: float
    trending_half_life_s: float
    post_max_events: int
    api_token: str
    session_timeout_s: int
    log_level: str

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Config:
        """Read every setting from ``env`` (default ``os.environ``); raise ConfigError on a bad value."""
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            setting = SETTINGS[f.name]
            raw = env.get(setting.env, "").strip() or setting.default
            if f.type in ("int", "float"):
                kind = int if f.type == "int" else float
                try:
                    value = kind(raw)
                except ValueError:
                    raise ConfigError(f"{setting.env}={raw!r} is not a {'whole ' if kind is int else ''}number") from None
                if not value > 0 and not (f.name in ZERO_ALLOWED and value == 0):
                    raise ConfigError(f"{setting.env}={raw!r} must be positive")
                raw = value
            values[f.name] = raw
        if not values["kafka_url"].startswith("kafka://"):
            raise ConfigError(f"STREAMREC_KAFKA_URL={values['kafka_url']!r} must start with kafka://")
        if values["rehearsal_policy"] not in REHEARSAL_POLICIES:
            raise ConfigError(f"STREAMREC_REHEARSAL_POLICY={values['rehearsal_policy']!r} must be one of "
                              f"{', '.join(REHEARSAL_POLICIES)}")
        if not values["gate_holdout"] < 1:
            raise ConfigError(f"STREAMREC_GATE_HOLDOUT={values['gate_holdout']!r} must be below 1")
        if values["log_level"] not in LOG_LEVELS:
            raise ConfigError(f"STREAMREC_LOG_LEVEL={values['log_level']!r} must be one of {', '.join(LOG_LEVELS)}")
        return cls(**values)

    def shown(self, name: str) -> str:
        """A setting's value for display: secrets as ``(set)`` or ``(unset)``, URLs without passwords."""
        value = getattr(self, name)
        if name in SECRETS:
            return "(set)" if value else "(unset)"
        if name == "database_url":
            return make_url(value).render_as_string(hide_password=True)
        return str(value)

    def __repr__(self) -> str:
        return f"Config({', '.join(f'{f.name}={self.shown(f.name)}' for f in fields(self))})"

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
        return {"crit": "CRITICAL", "warn": "WARNING"}.get(self.log_level, self.log_level.upper())

    def sqlite_path(self) -> Path | None:
        """The database file when the store is SQLite, else None."""
        prefix = "sqlite:///"
        return Path(self.database_url[len(prefix):]) if self.database_url.startswith(prefix) else None

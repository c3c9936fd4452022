"""Tables of the store. Alembic migrations in ``store/migrations`` create them."""

from __future__ import annotations

from sqlalchemy import (
                        JSON,
                        BigInteger,
                        Boolean,
                        Column,
                        DateTime,
                        Float,
                        Index,
                        Integer,
                        LargeBinary,
                        MetaData,
                        String,
                        Table,
                        Text,
                        UniqueConstraint,
                        false,
)

metadata = MetaData()

ID = String(256)

# The open replay window: accepted events of one committed ingest batch per row, in the
# compact form of :mod:`replay.codec`, until the sealer moves them into a window.
open_segments = Table(
    "open_segments", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("n_events", Integer, nullable=False),
    Column("first_ingested_at", BigInteger, nullable=False, comment="epoch ms UTC"),
    Column("data", LargeBinary, nullable=False),
)

# Sealed replay windows: what the learner trains on, one row per window.
windows = Table(
    "windows", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("opened_at", BigInteger, nullable=False, comment="first event ingested, epoch ms UTC"),
    Column("sealed_at", BigInteger, nullable=False, comment="epoch ms UTC"),
    Column("seal_reason", String(8), nullable=False, comment="'size' or 'age'"),
    Column("n_events", Integer, nullable=False),
    Column("ts_min", BigInteger, nullable=False, comment="oldest event time, epoch ms UTC"),
    Column("ts_max", BigInteger, nullable=False, comment="newest event time, epoch ms UTC"),
    Column("counts", JSON, nullable=False, comment="{storefront: {event type: n}}"),
    Column("data", LargeBinary, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("notice_published", Boolean, nullable=False, default=False),
    Column("trigger_claimed_by", String(255), comment="worker that took the training trigger"),
    Column("trigger_claimed_at", BigInteger, comment="epoch ms UTC"),
    Column("train_state", String(8), nullable=False, default="pending", server_default="pending",
           comment="'pending', 'leased', 'trained' or 'failed'"),
    Column("lease_owner", String(255), comment="trainer id holding the training lease"),
    Column("lease_expires_at", BigInteger, comment="epoch ms UTC; an expired lease may be taken over"),
    Column("train_attempts", Integer, nullable=False, default=0, server_default="0"),
    Column("train_error", Text, comment="why the last training attempt failed"),
    Column("version_id", BigInteger, comment="the version whose job trained this window"),
    Index("ix_windows_unpublished", "notice_published", "id"),
    Index("ix_windows_training", "train_state", "id"),
)

# The rehearsal memory of each storage policy, rewritten after every sealed window.
rehearsal_memory = Table(
    "rehearsal_memory", metadata,
    Column("policy", String(32), primary_key=True),
    Column("capacity", Integer, nullable=False),
    Column("through_window", BigInteger, nullable=False, comment="newest window taken into account"),
    Column("n_events", Integer, nullable=False),
    Column("state", JSON, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("updated_at", BigInteger, nullable=False, comment="epoch ms UTC"),
)

# One row; sealers update it first, which serialises them across workers on every database.
replay_lock = Table(
    "replay_lock", metadata,
    Column("id", Integer, primary_key=True),
    Column("seals", BigInteger, nullable=False),
)

# Dedupe memory: event ids accepted within STREAMREC_DEDUPE_HORIZON_S.
event_ids = Table(
    "event_ids", metadata,
    Column("event_id", ID, primary_key=True),
    Column("first_seen_ms", BigInteger, nullable=False),
    Index("ix_event_ids_first_seen_ms", "first_seen_ms"),
)

# Latest catalog text per storefront item.
items = Table(
    "items", metadata,
    Column("storefront", ID, primary_key=True),
    Column("item_id", ID, primary_key=True),
    Column("title", Text, nullable=False),
    Column("description", Text),
    Column("category", Text),
    Column("ts", BigInteger, nullable=False, comment="catalog event time, epoch ms UTC"),
    Column("updated_at", BigInteger, nullable=False, comment="epoch ms UTC"),
)

# Flow per ingest minute (UTC), storefront and event type; outcome is 'accepted' or a rejection reason.
ingest_stats = Table(
    "ingest_stats", metadata,
    Column("minute", DateTime(timezone=True), primary_key=True),
    Column("storefront", ID, primary_key=True),
    Column("event_type", String(16), primary_key=True),
    Column("outcome", String(32), primary_key=True),
    Column("count", BigInteger, nullable=False),
)

# Rejected messages (an outbox: published to the dead-letter topic, then flagged).
dead_letters = Table(
    "dead_letters", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("topic", String(249), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("key", LargeBinary),
    Column("payload", LargeBinary, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("received_at", BigInteger, nullable=False, comment="epoch ms UTC"),
    Column("published", Boolean, nullable=False, default=False),
    Index("ix_dead_letters_unpublished", "published", "id"),
)

# Next offset to read per partition, written in the same transaction as the data it covers.
consumer_offsets = Table(
    "consumer_offsets", metadata,
    Column("group_id", String(255), primary_key=True),
    Column("topic", String(249), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
)

# Every trained model version with its lineage; weights are safetensors bytes, checked by sha256.
model_versions = Table(
    "model_versions", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("parent_id", BigInteger, comment="version this one was fine-tuned from"),
    Column("status", String(16), nullable=False, comment="'promoted', 'rejected' or 'rolled_back'; with "
                                                           "STREAMREC_ROLLOUT=canary also 'canary', 'waiting' or "
                                                           "'superseded'"),
    Column("reason", Text, nullable=False, comment="why the gate promoted or rejected it"),
    Column("windows", JSON, nullable=False, comment="ids of the windows this version was trained on"),
    Column("rehearsal_size", Integer, nullable=False),
    Column("metrics", JSON, nullable=False, comment="candidate and baseline metrics on the held-out slice"),
    Column("duration_s", Float, nullable=False),
    Column("device", String(32), nullable=False),
    Column("n_items", Integer, nullable=False),
    Column("n_users", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False, comment="epoch ms UTC"),
    Column("promoted_at", BigInteger, comment="epoch ms UTC; the newest promoted version serves"),
    Column("weights", LargeBinary, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("text_encoder", String(96), comment="'frozen' or the tuned adapter's tuning, shape and id"),
    Index("ix_model_versions_serving", "status", "promoted_at"),
)

# Every training run, failed ones too.
training_runs = Table(
    "training_runs", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("window_id", BigInteger, nullable=False, comment="the newest window of the job"),
    Column("windows", JSON, comment="ids of every window the job trained on"),
    Column("status", String(16), nullable=False, comment="'running', 'succeeded' or 'failed'"),
    Column("version_id", BigInteger, comment="the version it produced (promoted or rejected)"),
    Column("worker", String(255), nullable=False),
    Column("started_at", BigInteger, nullable=False, comment="epoch ms UTC"),
    Column("finished_at", BigInteger, comment="epoch ms UTC"),
    Column("error", Text),
    Column("log", JSON, comment="per-epoch training log"),
    Index("ix_training_runs_window", "window_id"),
)

# Frozen text-encoder embeddings, computed once per distinct item text.
text_embeddings = Table(
    "text_embeddings", metadata,
    Column("key", String(64), primary_key=True, comment="sha256 of the item text"),
    Column("vector", LargeBinary, nullable=False,
           comment="float16 little-endian (float32 in rows of earlier releases)"),
)

# Drift metrics per sealed window, storefront and metric (definitions in drift/metrics.py and the README).
drift_metrics = Table(
    "drift_metrics", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("window_id", BigInteger, nullable=False, comment="the sealed window measured"),
    Column("model_version_id", BigInteger, comment="the version this window's training job produced"),
    Column("storefront", ID, nullable=False),
    Column("metric", String(64), nullable=False),
    Column("kind", String(16), nullable=False, comment="'input', 'concept', 'model' or 'forgetting'"),
    Column("value", Float, comment="NULL when the measurement was not a finite number (see reference)"),
    Column("baseline", Float, comment="the value it is compared with"),
    Column("reference", Text, nullable=False, comment="what it is compared with, in words"),
    Column("threshold", Float, comment="largest allowed move from the baseline in the bad direction"),
    Column("alert", Boolean, nullable=False,
           comment="a confirmed breach (drift/metrics.py: two consecutive breaches for per-window statistics)"),
    Column("detector", String(64), nullable=False,
           comment="'threshold', 'adwin', 'page_hinkley' (joined by +) or 'none'"),
    Column("n_events", Integer, nullable=False, comment="events (or items) it was measured on"),
    Column("created_at", BigInteger, nullable=False, comment="epoch ms UTC"),
    Column("breach", Boolean, nullable=False, default=False, server_default=false(),
           comment="the value crossed its threshold (or its detectors fired) on enough events"),
    Column("method", Text, nullable=False, default="", server_default="",
           comment="how the threshold was found, in words"),
    Column("detail", JSON(none_as_null=True), comment="the numbers behind the threshold; a score reference"),
    UniqueConstraint("window_id", "storefront", "metric", name="uq_drift_metrics_window_metric"),
    Index("ix_drift_metrics_series", "metric", "storefront", "window_id"),
    Index("ix_drift_metrics_alert", "alert", "window_id"),
)

# Every list a worker served (logged after the answer through <prefix>-served, ingested like events).
served_lists = Table(
    "served_lists", metadata,
    Column("request_id", ID, primary_key=True),
    Column("served_at", BigInteger, nullable=False, comment="epoch ms UTC, the answering worker's clock"),
    Column("surface", String(16), nullable=False, comment="'recommend', 'similar' or 'search'"),
    Column("storefront", ID, nullable=False),
    Column("source", String(16), nullable=False, comment="'model', 'text' or 'trending'"),
    Column("model_version", BigInteger, comment="the version that ranked the list (NULL: no model)"),
    Column("experiment", String(64)),
    Column("arm", String(64)),
    Column("user_id", ID),
    Column("session_id", ID),
    Column("query", Text, comment="the search text, or the item of /similar"),
    Column("items", JSON, nullable=False, comment="item ids in rank order"),
    Column("scores", JSON, nullable=False),
    Column("ingested_at", BigInteger, nullable=False, comment="epoch ms UTC"),
    Column("status", Integer, comment="HTTP status: NULL or 200 answered; 5xx failed after the arm was chosen"),
    Column("latency_ms", Float, comment="ms the view took to build the answer"),
    Column("teams", JSON, comment="interleaved lists: the arm that put each item there ('control' or 'treatment')"),
    Index("ix_served_lists_user", "user_id", "served_at"),
    Index("ix_served_lists_served_at", "served_at"),
    Index("ix_served_lists_experiment", "experiment", "served_at"),
)

# The positions of a served list that the shopper's screen displayed, as the storefront reported
# them (the union of its reports); a list without a row counts as wholly shown.
shown_positions = Table(
    "shown_positions", metadata,
    Column("request_id", ID, primary_key=True),
    Column("shown", JSON, nullable=False, comment="positions displayed (1 = first), ascending; [] = none"),
    Column("shown_at", BigInteger, nullable=False, comment="epoch ms UTC, when the last report says they were"),
    Column("ingested_at", BigInteger, nullable=False, comment="epoch ms UTC"),
    Index("ix_shown_positions_ingested_at", "ingested_at"),
)

# Click and purchase events attributed to a served list: directly (the event names the list's
# request_id) or inferred (the same user was shown the item within STREAMREC_ATTRIBUTION_WINDOW_S).
attributed_events = Table(
    "attributed_events", metadata,
    Column("event_id", ID, primary_key=True),
    Column("request_id", ID, nullable=False),
    Column("inferred", Boolean, nullable=False, comment="true: matched by user, item and time, not by request_id"),
    Column("type", String(16), nullable=False),
    Column("user_id", ID, nullable=False),
    Column("item_id", ID, nullable=False),
    Column("storefront", ID, nullable=False),
    Column("ts", BigInteger, nullable=False, comment="event time, epoch ms UTC"),
    Column("position", Integer, comment="the item's rank in the list (1 = first), as the event gave it"),
    Column("value", Float, comment="order value of a purchase"),
    Column("ingested_at", BigInteger, nullable=False, comment="epoch ms UTC"),
    Index("ix_attributed_events_request", "request_id"),
    Index("ix_attributed_events_ingested_at", "ingested_at"),
)

# Online metrics per served hour (UTC), surface, storefront, ranker, version and experiment arm.
online_metrics = Table(
    "online_metrics", metadata,
    Column("hour", BigInteger, primary_key=True, comment="start of the hour the lists were served, epoch ms UTC"),
    Column("surface", String(16), primary_key=True),
    Column("storefront", ID, primary_key=True),
    Column("source", String(16), primary_key=True),
    Column("model_version", BigInteger, primary_key=True, comment="0: no model (trending or text)"),
    Column("experiment", String(64), primary_key=True, comment="'' outside experiments"),
    Column("arm", String(64), primary_key=True),
    Column("lists", Integer, nullable=False),
    Column("users", Integer, nullable=False, comment="distinct users the lists were served to"),
    Column("clicked_lists", Integer, nullable=False),
    Column("clicks", Integer, nullable=False),
    Column("purchases", Integer, nullable=False),
    Column("converted_users", Integer, nullable=False),
    Column("revenue", Float, nullable=False),
    Column("inferred_events", Integer, nullable=False, comment="attributed events matched without a request_id"),
    Column("metrics", JSON, nullable=False, comment="ctr, rates, click positions, coverage, diversity, novelty, "
                                                    "popularity (see drift/online.py)"),
    Column("updated_at", BigInteger, nullable=False, comment="epoch ms UTC"),
)

# Experiments: users split between two model versions by a salted hash (a manual experiment, or
# the canary of a candidate against the serving version); at most one runs at a time.
experiments = Table(
    "experiments", metadata,
    Column("name", String(64), primary_key=True),
    Column("kind", String(16), nullable=False, comment="'manual', 'canary' or 'interleave'"),
    Column("status", String(16), nullable=False, comment="'running' or 'stopped'"),
    Column("control_version", BigInteger, nullable=False),
    Column("treatment_version", BigInteger, nullable=False),
    Column("share", Float, nullable=False, comment="the treatment arm's share of users"),
    Column("salt", String(64), nullable=False, comment="users are split by sha256(salt:user_id)"),
    Column("started_at", BigInteger, nullable=False, comment="epoch ms UTC"),
    Column("stopped_at", BigInteger, comment="epoch ms UTC"),
    Column("stop_reason", Text),
    Index("ix_experiments_status", "status"),
)

# Every rollout decision about a candidate, with its reason and evidence.
rollouts = Table(
    "rollouts", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("version_id", BigInteger, nullable=False, comment="the candidate decided on"),
    Column("baseline_version", BigInteger, comment="the serving version it was compared with"),
    Column("experiment", String(64)),
    Column("decision", String(16), nullable=False,
           comment="'canary', 'waiting', 'promoted', 'rolled_back' or 'superseded'"),
    Column("reason", Text, nullable=False),
    Column("evidence", JSON, nullable=False, comment="the experiment's report the decision was taken on"),
    Column("decided_by", String(255), nullable=False, comment="the worker or trainer that decided"),
    Column("decided_at", BigInteger, nullable=False, comment="epoch ms UTC"),
    Index("ix_rollouts_version", "version_id"),
)

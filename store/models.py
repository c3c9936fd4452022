"""Tables of the store. Alembic migrations in ``store/migrations`` create them."""

from __future__ import annotations

from sqlalchemy import (BigInteger, Boolean, Column, DateTime, Float, Index, Integer, LargeBinary,
                        MetaData, String, Table, Text)

metadata = MetaData()

ID = String(256)

# Accepted interaction events, in ingest order (``seq``); the open replay window reads from here.
events = Table(
    "events", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("event_id", ID, nullable=False),
    Column("type", String(16), nullable=False),
    Column("user_id", ID, nullable=False),
    Column("item_id", ID, nullable=False),
    Column("storefront", ID, nullable=False),
    Column("ts", BigInteger, nullable=False, comment="event time, epoch ms UTC"),
    Column("session_id", ID),
    Column("price", Float),
    Column("quantity", Integer),
    Column("source_partition", Integer, nullable=False),
    Column("source_offset", BigInteger, nullable=False),
    Column("ingested_at", BigInteger, nullable=False, comment="epoch ms UTC"),
    Index("ix_events_event_id", "event_id"),
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

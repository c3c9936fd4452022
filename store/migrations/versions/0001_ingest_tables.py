"""Ingest tables: events, dedupe memory, catalog items, flow stats, dead letters, offsets.

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 04:41:45.800546
"""
import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('consumer_offsets',
    sa.Column('group_id', sa.String(length=255), nullable=False),
    sa.Column('topic', sa.String(length=249), nullable=False),
    sa.Column('partition', sa.Integer(), nullable=False),
    sa.Column('next_offset', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('group_id', 'topic', 'partition')
    )
    op.create_table('dead_letters',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('topic', sa.String(length=249), nullable=False),
    sa.Column('partition', sa.Integer(), nullable=False),
    sa.Column('offset', sa.BigInteger(), nullable=False),
    sa.Column('key', sa.LargeBinary(), nullable=True),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('received_at', sa.BigInteger(), nullable=False, comment='epoch ms UTC'),
    sa.Column('published', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('dead_letters', schema=None) as batch_op:
        batch_op.create_index('ix_dead_letters_unpublished', ['published', 'id'], unique=False)

    op.create_table('event_ids',
    sa.Column('event_id', sa.String(length=256), nullable=False),
    sa.Column('first_seen_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('event_id')
    )
    with op.batch_alter_table('event_ids', schema=None) as batch_op:
        batch_op.create_index('ix_event_ids_first_seen_ms', ['first_seen_ms'], unique=False)

    op.create_table('events',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=256), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('user_id', sa.String(length=256), nullable=False),
    sa.Column('item_id', sa.String(length=256), nullable=False),
    sa.Column('storefront', sa.String(length=256), nullable=False),
    sa.Column('ts', sa.BigInteger(), nullable=False, comment='event time, epoch ms UTC'),
    sa.Column('session_id', sa.String(length=256), nullable=True),
    sa.Column('price', sa.Float(), nullable=True),
    sa.Column('quantity', sa.Integer(), nullable=True),
    sa.Column('source_partition', sa.Integer(), nullable=False),
    sa.Column('source_offset', sa.BigInteger(), nullable=False),
    sa.Column('ingested_at', sa.BigInteger(), nullable=False, comment='epoch ms UTC'),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_event_id', ['event_id'], unique=False)

    op.create_table('ingest_stats',
    sa.Column('minute', sa.DateTime(timezone=True), nullable=False),
    sa.Column('storefront', sa.String(length=256), nullable=False),
    sa.Column('event_type', sa.String(length=16), nullable=False),
    sa.Column('outcome', sa.String(length=32), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('minute', 'storefront', 'event_type', 'outcome')
    )
    op.create_table('items',
    sa.Column('storefront', sa.String(length=256), nullable=False),
    sa.Column('item_id', sa.String(length=256), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('category', sa.Text(), nullable=True),
    sa.Column('ts', sa.BigInteger(), nullable=False, comment='catalog event time, epoch ms UTC'),
    sa.Column('updated_at', sa.BigInteger(), nullable=False, comment='epoch ms UTC'),
    sa.PrimaryKeyConstraint('storefront', 'item_id')
    )


def downgrade() -> None:
    op.drop_table('items')
    op.drop_table('ingest_stats')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_event_id')

    op.drop_table('events')
    with op.batch_alter_table('event_ids', schema=None) as batch_op:
        batch_op.drop_index('ix_event_ids_first_seen_ms')

    op.drop_table('event_ids')
    with op.batch_alter_table('dead_letters', schema=None) as batch_op:
        batch_op.drop_index('ix_dead_letters_unpublished')

    op.drop_table('dead_letters')
    op.drop_table('consumer_offsets')

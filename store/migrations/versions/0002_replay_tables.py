"""Replay tables: the open window as compact segments, sealed windows, rehearsal memory.

Accepted events now live in ``open_segments`` until sealed into ``windows``, so the
per-event ``events`` table goes.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.drop_index('ix_events_event_id', table_name='events')
    op.drop_table('events')
    op.create_table(
        'open_segments',
        sa.Column('id', ROW_ID, autoincrement=True, nullable=False),
        sa.Column('n_events', sa.Integer(), nullable=False),
        sa.Column('first_ingested_at', sa.BigInteger(), nullable=False, comment='epoch ms UTC'),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_table(
        'windows',
        sa.Column('id', ROW_ID, autoincrement=True, nullable=False),
        sa.Column('opened_at', sa.BigInteger(), nullable=False, comment='first event ingested, epoch ms UTC'),
        sa.Column('sealed_at', sa.BigInteger(), nullable=False, comment='epoch ms UTC'),
        sa.Column('seal_reason', sa.String(length=8), nullable=False, comment="'size' or 'age'"),
        sa.Column('n_events', sa.Integer(), nullable=False),
        sa.Column('ts_min', sa.BigInteger(), nullable=False, comment='oldest event time, epoch ms UTC'),
        sa.Column('ts_max', sa.BigInteger(), nullable=False, comment='newest event time, epoch ms UTC'),
        sa.Column('counts', sa.JSON(), nullable=False, comment='{storefront: {event type: n}}'),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('notice_published', sa.Boolean(), nullable=False),
        sa.Column('trigger_claimed_by', sa.String(length=255), nullable=True,
                  comment='worker that took the training trigger'),
        sa.Column('trigger_claimed_at', sa.BigInteger(), nullable=True, comment='epoch ms UTC'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_windows_unpublished', 'windows', ['notice_published', 'id'])
    op.create_table(
        'rehearsal_memory',
        sa.Column('policy', sa.String(length=32), nullable=False),
        sa.Column('capacity', sa.Integer(), nullable=False),
        sa.Column('through_window', sa.BigInteger(), nullable=False,
                  comment='newest window taken into account'),
        sa.Column('n_events', sa.Integer(), nullable=False),
        sa.Column('state', sa.JSON(), nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.Column('updated_at', sa.BigInteger(), nullable=False, comment='epoch ms UTC'),
        sa.PrimaryKeyConstraint('policy'),
    )
    replay_lock = op.create_table(
        'replay_lock',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('seals', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.bulk_insert(replay_lock, [{'id': 1, 'seals': 0}])


def downgrade() -> None:
    raise NotImplementedError("sealed windows cannot be turned back into per-event rows")

"""Served lists, attributed events and online metrics.

* ``served_lists``: every list a worker served, with its request id, ranker, version and arm;
* ``attributed_events``: clicks and purchases attributed to a served list (direct or inferred);
* ``online_metrics``: per served hour, surface, storefront, ranker, version and arm;
* ``drift_metrics.value`` gets the comment the table declares (Postgres keeps comments).

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

ID = sa.String(256)
BIGID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


VALUE_COMMENT = 'NULL when the measurement was not a finite number (see reference)'


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.alter_column('drift_metrics', 'value', existing_type=sa.Float(), existing_nullable=True,
                        comment=VALUE_COMMENT)
    op.create_table(
        'served_lists',
        sa.Column('request_id', sa.String(64), primary_key=True),
        sa.Column('served_at', sa.BigInteger(), nullable=False, comment="epoch ms UTC, the answering worker's clock"),
        sa.Column('surface', sa.String(16), nullable=False, comment="'recommend', 'similar' or 'search'"),
        sa.Column('storefront', ID, nullable=False),
        sa.Column('source', sa.String(16), nullable=False, comment="'model', 'text' or 'trending'"),
        sa.Column('model_version', sa.BigInteger(), comment='the version that ranked the list (NULL: no model)'),
        sa.Column('experiment', sa.String(64)),
        sa.Column('arm', sa.String(64)),
        sa.Column('user_id', ID),
        sa.Column('session_id', ID),
        sa.Column('query', sa.Text(), comment='the search text, or the item of /similar'),
        sa.Column('items', sa.JSON(), nullable=False, comment='item ids in rank order'),
        sa.Column('scores', sa.JSON(), nullable=False),
        sa.Column('ingested_at', sa.BigInteger(), nullable=False, comment='epoch ms UTC'),
    )
    op.create_index('ix_served_lists_user', 'served_lists', ['user_id', 'served_at'])
    op.create_index('ix_served_lists_served_at', 'served_lists', ['served_at'])
    op.create_table(
        'attributed_events',
        sa.Column('event_id', ID, primary_key=True),
        sa.Column('request_id', sa.String(64), nullable=False),
        sa.Column('inferred', sa.Boolean(), nullable=False,
                  comment='true: matched by user, item and time, not by request_id'),
        sa.Column('type', sa.String(16), nullable=False),
        sa.Column('user_id', ID, nullable=False),
        sa.Column('item_id', ID, nullable=False),
        sa.Column('storefront', ID, nullable=False),
        sa.Column('ts', sa.BigInteger(), nullable=False, comment='event time, epoch ms UTC'),
        sa.Column('position', sa.Integer(), comment="the item's rank in the list (1 = first), as the event gave it"),
        sa.Column('value', sa.Float(), comment='order value of a purchase'),
        sa.Column('ingested_at', sa.BigInteger(), nullable=False, comment='epoch ms UTC'),
    )
    op.create_index('ix_attributed_events_request', 'attributed_events', ['request_id'])
    op.create_index('ix_attributed_events_ingested_at', 'attributed_events', ['ingested_at'])
    op.create_table(
        'online_metrics',
        sa.Column('hour', sa.BigInteger(), primary_key=True,
                  comment='start of the hour the lists were served, epoch ms UTC'),
        sa.Column('surface', sa.String(16), primary_key=True),
        sa.Column('storefront', ID, primary_key=True),
        sa.Column('source', sa.String(16), primary_key=True),
        sa.Column('model_version', sa.BigInteger(), primary_key=True, comment='0: no model (trending or text)'),
        sa.Column('experiment', sa.String(64), primary_key=True, comment="'' outside experiments"),
        sa.Column('arm', sa.String(64), primary_key=True),
        sa.Column('lists', sa.Integer(), nullable=False),
        sa.Column('users', sa.Integer(), nullable=False, comment='distinct users the lists were served to'),
        sa.Column('clicked_lists', sa.Integer(), nullable=False),
        sa.Column('clicks', sa.Integer(), nullable=False),
        sa.Column('purchases', sa.Integer(), nullable=False),
        sa.Column('converted_users', sa.Integer(), nullable=False),
        sa.Column('revenue', sa.Float(), nullable=False),
        sa.Column('inferred_events', sa.Integer(), nullable=False,
                  comment='attributed events matched without a request_id'),
        sa.Column('metrics', sa.JSON(), nullable=False,
                  comment='ctr, rates, click positions, coverage, diversity, novelty, popularity '
                          '(see drift/online.py)'),
        sa.Column('updated_at', sa.BigInteger(), nullable=False, comment='epoch ms UTC'),
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.alter_column('drift_metrics', 'value', existing_type=sa.Float(), existing_nullable=True,
                        comment=None, existing_comment=VALUE_COMMENT)
    op.drop_table('online_metrics')
    op.drop_table('attributed_events')
    op.drop_table('served_lists')

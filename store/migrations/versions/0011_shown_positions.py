"""Shown positions, interleaved teams, and request ids as long as other ids.

* ``shown_positions``: which positions of a served list the shopper's screen displayed, as the
  storefront reported them (the union of its reports); a list without a row counts as wholly
  shown;
* ``served_lists.teams``: for a list of an interleaving experiment, the arm that put each item
  there; ``experiments.kind`` may be ``interleave``;
* ``served_lists.request_id`` and ``attributed_events.request_id`` take 256 characters, as
  every other id does: an event may carry the storefront's own request id, and validation lets
  ids of that length through.

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

ID = sa.String(256)


def upgrade() -> None:
    op.create_table(
        'shown_positions',
        sa.Column('request_id', ID, primary_key=True),
        sa.Column('shown', sa.JSON(), nullable=False, comment='positions displayed (1 = first), ascending; [] = none'),
        sa.Column('shown_at', sa.BigInteger(), nullable=False,
                  comment='epoch ms UTC, when the last report says they were'),
        sa.Column('ingested_at', sa.BigInteger(), nullable=False, comment='epoch ms UTC'),
    )
    op.create_index('ix_shown_positions_ingested_at', 'shown_positions', ['ingested_at'])
    for table in ('served_lists', 'attributed_events'):
        with op.batch_alter_table(table) as batch:
            batch.alter_column('request_id', existing_type=sa.String(64), type_=ID,
                               existing_nullable=False)
            if table == 'served_lists':
                batch.add_column(sa.Column('teams', sa.JSON(), comment="interleaved lists: the arm that put each "
                                                                       "item there ('control' or 'treatment')"))
    with op.batch_alter_table('experiments') as batch:
        batch.alter_column('kind', existing_type=sa.String(16), existing_nullable=False,
                           comment="'manual', 'canary' or 'interleave'")


def downgrade() -> None:
    for table in ('served_lists', 'attributed_events'):
        with op.batch_alter_table(table) as batch:
            if table == 'served_lists':
                batch.drop_column('teams')
            batch.alter_column('request_id', existing_type=ID, type_=sa.String(64), existing_nullable=False)
    op.drop_index('ix_shown_positions_ingested_at', 'shown_positions')
    op.drop_table('shown_positions')

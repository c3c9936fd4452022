"""Experiments and canary rollouts.

* ``experiments``: a split of users between two model versions (a manual experiment, or the
  canary of a candidate against the serving version), at most one running at a time;
* ``rollouts``: every rollout decision about a candidate (canary started, waiting, promoted,
  rolled back, superseded), with its reason and the evidence it was taken on;
* ``model_versions.status`` may also be 'canary', 'waiting' or 'superseded';
* ``served_lists`` gets ``status`` (a 5xx when the answer failed after the user was assigned
  to an arm) and ``latency_ms`` (the guardrails of an experiment).

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
STATUS_BEFORE = "'promoted', 'rejected' or 'rolled_back'"
STATUS_COMMENT = ("'promoted', 'rejected' or 'rolled_back'; with STREAMREC_ROLLOUT=canary also 'canary', 'waiting' "
                  "or 'superseded'")


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.alter_column('model_versions', 'status', existing_type=sa.String(16), existing_nullable=False,
                        comment=STATUS_COMMENT, existing_comment=STATUS_BEFORE)
    op.create_table(
        'experiments',
        sa.Column('name', sa.String(64), primary_key=True),
        sa.Column('kind', sa.String(16), nullable=False, comment="'manual' or 'canary'"),
        sa.Column('status', sa.String(16), nullable=False, comment="'running' or 'stopped'"),
        sa.Column('control_version', sa.BigInteger(), nullable=False),
        sa.Column('treatment_version', sa.BigInteger(), nullable=False),
        sa.Column('share', sa.Float(), nullable=False, comment="the treatment arm's share of users"),
        sa.Column('salt', sa.String(64), nullable=False, comment='users are split by sha256(salt:user_id)'),
        sa.Column('started_at', sa.BigInteger(), nullable=False, comment='epoch ms UTC'),
        sa.Column('stopped_at', sa.BigInteger(), comment='epoch ms UTC'),
        sa.Column('stop_reason', sa.Text()),
    )
    op.create_index('ix_experiments_status', 'experiments', ['status'])
    op.create_table(
        'rollouts',
        sa.Column('id', BIGID, primary_key=True, autoincrement=True),
        sa.Column('version_id', sa.BigInteger(), nullable=False, comment='the candidate decided on'),
        sa.Column('baseline_version', sa.BigInteger(), comment='the serving version it was compared with'),
        sa.Column('experiment', sa.String(64)),
        sa.Column('decision', sa.String(16), nullable=False,
                  comment="'canary', 'waiting', 'promoted', 'rolled_back' or 'superseded'"),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('evidence', sa.JSON(), nullable=False, comment="the experiment's report the decision was taken on"),
        sa.Column('decided_by', sa.String(255), nullable=False, comment='the worker or trainer that decided'),
        sa.Column('decided_at', sa.BigInteger(), nullable=False, comment='epoch ms UTC'),
    )
    op.create_index('ix_rollouts_version', 'rollouts', ['version_id'])
    with op.batch_alter_table('served_lists') as batch:
        batch.add_column(sa.Column('status', sa.Integer(),
                                   comment='HTTP status: NULL or 200 answered; 5xx failed after the arm was chosen'))
        batch.add_column(sa.Column('latency_ms', sa.Float(), comment='ms the view took to build the answer'))
    op.create_index('ix_served_lists_experiment', 'served_lists', ['experiment', 'served_at'])


def downgrade() -> None:
    op.drop_index('ix_served_lists_experiment', 'served_lists')
    with op.batch_alter_table('served_lists') as batch:
        batch.drop_column('latency_ms')
        batch.drop_column('status')
    op.drop_table('rollouts')
    op.drop_table('experiments')
    if op.get_bind().dialect.name == 'postgresql':
        op.alter_column('model_versions', 'status', existing_type=sa.String(16), existing_nullable=False,
                        comment=STATUS_BEFORE, existing_comment=STATUS_COMMENT)

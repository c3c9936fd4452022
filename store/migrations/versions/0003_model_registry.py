"""Model registry: model versions with lineage, training runs, cached text embeddings.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'model_versions',
        sa.Column('id', ROW_ID, autoincrement=True, nullable=False),
        sa.Column('parent_id', sa.BigInteger(), nullable=True, comment='version this one was fine-tuned from'),
        sa.Column('status', sa.String(length=16), nullable=False,
                  comment="'promoted', 'rejected' or 'rolled_back'"),
        sa.Column('reason', sa.Text(), nullable=False, comment='why the gate promoted or rejected it'),
        sa.Column('windows', sa.JSON(), nullable=False, comment='ids of the windows this version was trained on'),
        sa.Column('rehearsal_size', sa.Integer(), nullable=False),
        sa.Column('metrics', sa.JSON(), nullable=False,
                  comment='candidate and baseline metrics on the held-out slice'),
        sa.Column('duration_s', sa.Float(), nullable=False),
        sa.Column('device', sa.String(length=32), nullable=False),
        sa.Column('n_items', sa.Integer(), nullable=False),
        sa.Column('n_users', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.BigInteger(), nullable=False, comment='epoch ms UTC'),
        sa.Column('promoted_at', sa.BigInteger(), nullable=True,
                  comment='epoch ms UTC; the newest promoted version serves'),
        sa.Column('weights', sa.LargeBinary(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_model_versions_serving', 'model_versions', ['status', 'promoted_at'])
    op.create_table(
        'training_runs',
        sa.Column('id', ROW_ID, autoincrement=True, nullable=False),
        sa.Column('window_id', sa.BigInteger(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False,
                  comment="'running', 'succeeded' or 'failed'"),
        sa.Column('version_id', sa.BigInteger(), nullable=True,
                  comment='the version it produced (promoted or rejected)'),
        sa.Column('worker', sa.String(length=255), nullable=False),
        sa.Column('started_at', sa.BigInteger(), nullable=False, comment='epoch ms UTC'),
        sa.Column('finished_at', sa.BigInteger(), nullable=True, comment='epoch ms UTC'),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('log', sa.JSON(), nullable=True, comment='per-epoch training log'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_training_runs_window', 'training_runs', ['window_id'])
    op.create_table(
        'text_embeddings',
        sa.Column('key', sa.String(length=64), nullable=False, comment='sha256 of the item text'),
        sa.Column('vector', sa.LargeBinary(), nullable=False, comment='float32 little-endian'),
        sa.PrimaryKeyConstraint('key'),
    )


def downgrade() -> None:
    op.drop_table('text_embeddings')
    op.drop_index('ix_training_runs_window', table_name='training_runs')
    op.drop_table('training_runs')
    op.drop_index('ix_model_versions_serving', table_name='model_versions')
    op.drop_table('model_versions')

"""Training leases: each window's training state, its lease and its attempts; jobs span several windows.

* ``windows.train_state`` ('pending', 'leased', 'trained', 'failed'), ``lease_owner`` (a trainer
  id), ``lease_expires_at``, ``train_attempts``, ``train_error`` and ``version_id``: a trainer
  leases the oldest pending windows, renews the lease while it trains, and whichever trainer
  finds a lease expired takes the windows over;
* ``training_runs.windows``: every window a run (one job) trained on;
* ``drift_metrics.value`` may be NULL: a measurement that was not a finite number;
* view ``training_windows``: each window's training state for ops (readable by ``streamrec_ops``).

Windows trained before this revision (a succeeded run names them) are marked trained.

Revision ID: 0005
Revises: 0004
"""
import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def _drift_views():
    """The ops views of revision 0004, dropped while ``drift_metrics`` changes and created again."""
    spec = importlib.util.spec_from_file_location('drift_0004', Path(__file__).with_name('0004_drift.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LATEST_VIEW, module.OPEN_ALERTS_VIEW


def _alter_drift_value(nullable: bool) -> None:
    op.execute('DROP VIEW drift_open_alerts')
    op.execute('DROP VIEW drift_latest')
    with op.batch_alter_table('drift_metrics') as batch:
        batch.alter_column('value', existing_type=sa.Float(), nullable=nullable)
    for view in _drift_views():
        op.execute(view)


TRAINING_VIEW = """
CREATE VIEW training_windows AS
SELECT id AS window_id, sealed_at, n_events, train_state, lease_owner, lease_expires_at, train_attempts,
       train_error, version_id
FROM windows
"""


def upgrade() -> None:
    with op.batch_alter_table('windows') as batch:
        batch.add_column(sa.Column('train_state', sa.String(length=8), nullable=False, server_default='pending',
                                   comment="'pending', 'leased', 'trained' or 'failed'"))
        batch.add_column(sa.Column('lease_owner', sa.String(length=255), nullable=True,
                                   comment='trainer id holding the training lease'))
        batch.add_column(sa.Column('lease_expires_at', sa.BigInteger(), nullable=True,
                                   comment='epoch ms UTC; an expired lease may be taken over'))
        batch.add_column(sa.Column('train_attempts', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('train_error', sa.Text(), nullable=True,
                                   comment='why the last training attempt failed'))
        batch.add_column(sa.Column('version_id', sa.BigInteger(), nullable=True,
                                   comment='the version whose job trained this window'))
        batch.create_index('ix_windows_training', ['train_state', 'id'])
    with op.batch_alter_table('training_runs') as batch:
        batch.add_column(sa.Column('windows', sa.JSON(), nullable=True,
                                   comment='ids of every window the job trained on'))
        batch.alter_column('window_id', existing_type=sa.BigInteger(), comment='the newest window of the job')
    _alter_drift_value(nullable=True)
    op.execute(TRAINING_VIEW)
    op.execute("UPDATE windows SET train_state = 'trained', version_id = "
               "(SELECT max(r.version_id) FROM training_runs r WHERE r.window_id = windows.id "
               "AND r.status = 'succeeded') "
               "WHERE id IN (SELECT window_id FROM training_runs WHERE status = 'succeeded')")


def downgrade() -> None:
    op.execute('DROP VIEW training_windows')
    op.execute('DELETE FROM drift_metrics WHERE value IS NULL')
    _alter_drift_value(nullable=False)
    with op.batch_alter_table('training_runs') as batch:
        batch.drop_column('windows')
    with op.batch_alter_table('windows') as batch:
        batch.drop_index('ix_windows_training')
        for column in ('version_id', 'train_error', 'train_attempts', 'lease_expires_at', 'lease_owner',
                       'train_state'):
            batch.drop_column(column)

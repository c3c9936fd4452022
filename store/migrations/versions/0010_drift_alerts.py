"""Drift alerts with their method: ``drift_metrics.breach``, ``method`` and ``detail``.

* ``breach``: the value crossed its threshold (or its change detectors fired) on enough
  events; ``alert`` is now a *confirmed* breach (two consecutive breaches for per-window
  statistics, see ``drift/metrics.py``). Rows written before this revision get
  ``breach = alert``;
* ``method``: how the threshold was found, in words (calibrated on the storefront's reference
  windows, a noise floor, a fixed threshold, change detectors); empty in earlier rows;
* ``detail``: the numbers behind the threshold (JSON; no NaN or infinity), and for
  ``serving_score_psi`` on a version's first window the reference it keeps.

The ops views select ``d.*``, which Postgres expands when a view is created: they are
created again so they show the new columns.

Revision ID: 0010
Revises: 0009
"""
import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def _drift_views():
    """The ops views of revision 0004, dropped while ``drift_metrics`` changes and created again."""
    spec = importlib.util.spec_from_file_location('drift_0004', Path(__file__).with_name('0004_drift.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LATEST_VIEW, module.OPEN_ALERTS_VIEW


def _drop_views() -> None:
    op.execute('DROP VIEW drift_open_alerts')
    op.execute('DROP VIEW drift_latest')


def _create_views() -> None:
    for view in _drift_views():
        op.execute(view)


def upgrade() -> None:
    _drop_views()
    with op.batch_alter_table('drift_metrics') as batch:
        batch.add_column(sa.Column('breach', sa.Boolean(), nullable=False, server_default=sa.false(),
                                   comment='the value crossed its threshold (or its detectors fired) on enough '
                                           'events'))
        batch.add_column(sa.Column('method', sa.Text(), nullable=False, server_default='',
                                   comment='how the threshold was found, in words'))
        batch.add_column(sa.Column('detail', sa.JSON(), nullable=True,
                                   comment='the numbers behind the threshold; a score reference'))
        batch.alter_column('alert', existing_type=sa.Boolean(), existing_nullable=False,
                           comment='a confirmed breach (drift/metrics.py: two consecutive breaches for '
                                   'per-window statistics)')
    op.execute('UPDATE drift_metrics SET breach = alert')
    _create_views()


def downgrade() -> None:
    _drop_views()
    with op.batch_alter_table('drift_metrics') as batch:
        batch.alter_column('alert', existing_type=sa.Boolean(), existing_nullable=False, comment=None)
        for column in ('detail', 'method', 'breach'):
            batch.drop_column(column)
    _create_views()

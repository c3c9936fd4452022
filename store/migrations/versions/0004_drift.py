"""Drift metrics: the drift_metrics table, its ops views, and a read-only role for ops (Postgres).

* ``drift_metrics``: one row per sealed window, storefront and metric (definitions in
  ``drift/metrics.py`` and the README);
* ``drift_latest``: the newest row of each metric and storefront;
* ``drift_open_alerts``: alert rows not yet followed by a non-alert value of the same
  metric and storefront (an alert closes when a later window measures that metric without
  alerting);
* role ``streamrec_ops`` (NOLOGIN; grant it to a login role, or ``SET ROLE`` to it): may
  connect and read every table and view of the schema, now and created later; may write
  nothing. Roles are cluster-wide, so it is created only if missing.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
OPS_ROLE = 'streamrec_ops'

LATEST_VIEW = """
CREATE VIEW drift_latest AS
SELECT d.* FROM drift_metrics d
WHERE d.window_id = (SELECT max(x.window_id) FROM drift_metrics x
                     WHERE x.metric = d.metric AND x.storefront = d.storefront)
"""

OPEN_ALERTS_VIEW = """
CREATE VIEW drift_open_alerts AS
SELECT d.* FROM drift_metrics d
WHERE d.alert AND NOT EXISTS (SELECT 1 FROM drift_metrics later
                              WHERE later.metric = d.metric AND later.storefront = d.storefront
                                AND later.window_id > d.window_id AND NOT later.alert)
"""

CREATE_ROLE = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{OPS_ROLE}') THEN
        BEGIN
            CREATE ROLE {OPS_ROLE} NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created meanwhile by a migration of another database
        END;
    END IF;
END
$$
"""

GRANT = f"""
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO {OPS_ROLE}', current_database());
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO {OPS_ROLE}', current_schema());
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO {OPS_ROLE}', current_schema());
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO {OPS_ROLE}', current_schema());
END
$$
"""

REVOKE = f"""
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{OPS_ROLE}') THEN
        EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE SELECT ON TABLES FROM {OPS_ROLE}',
                       current_schema());
        EXECUTE format('REVOKE SELECT ON ALL TABLES IN SCHEMA %I FROM {OPS_ROLE}', current_schema());
        EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM {OPS_ROLE}', current_schema());
        EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM {OPS_ROLE}', current_database());
    END IF;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        'drift_metrics',
        sa.Column('id', ROW_ID, autoincrement=True, nullable=False),
        sa.Column('window_id', sa.BigInteger(), nullable=False, comment='the sealed window measured'),
        sa.Column('model_version_id', sa.BigInteger(), nullable=True,
                  comment="the version this window's training job produced"),
        sa.Column('storefront', sa.String(length=256), nullable=False),
        sa.Column('metric', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False,
                  comment="'input', 'concept', 'model' or 'forgetting'"),
        sa.Column('value', sa.Float(), nullable=False),
        sa.Column('baseline', sa.Float(), nullable=True, comment='the value it is compared with'),
        sa.Column('reference', sa.Text(), nullable=False, comment='what it is compared with, in words'),
        sa.Column('threshold', sa.Float(), nullable=True,
                  comment='largest allowed move from the baseline in the bad direction'),
        sa.Column('alert', sa.Boolean(), nullable=False),
        sa.Column('detector', sa.String(length=64), nullable=False,
                  comment="'threshold', 'adwin', 'page_hinkley' (joined by +) or 'none'"),
        sa.Column('n_events', sa.Integer(), nullable=False, comment='events (or items) it was measured on'),
        sa.Column('created_at', sa.BigInteger(), nullable=False, comment='epoch ms UTC'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('window_id', 'storefront', 'metric', name='uq_drift_metrics_window_metric'),
    )
    op.create_index('ix_drift_metrics_series', 'drift_metrics', ['metric', 'storefront', 'window_id'])
    op.create_index('ix_drift_metrics_alert', 'drift_metrics', ['alert', 'window_id'])
    op.execute(LATEST_VIEW)
    op.execute(OPEN_ALERTS_VIEW)
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(CREATE_ROLE)
        op.execute(GRANT)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(REVOKE)
    op.execute('DROP VIEW drift_open_alerts')
    op.execute('DROP VIEW drift_latest')
    op.drop_index('ix_drift_metrics_alert', table_name='drift_metrics')
    op.drop_index('ix_drift_metrics_series', table_name='drift_metrics')
    op.drop_table('drift_metrics')

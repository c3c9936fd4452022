"""Which text encoder a version's item texts come from: ``model_versions.text_encoder``.

'frozen' is the pretrained MiniLM; a tuned one reads e.g. 'lora r=8 a=16 query,value #1a2b3c4d'
(its tuning, shape and the first digits of its weights' id). NULL for versions made before.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('model_versions') as batch:
        batch.add_column(sa.Column('text_encoder', sa.String(96), comment="'frozen' or the tuned adapter's "
                                                                          "tuning, shape and id"))


def downgrade() -> None:
    with op.batch_alter_table('model_versions') as batch:
        batch.drop_column('text_encoder')

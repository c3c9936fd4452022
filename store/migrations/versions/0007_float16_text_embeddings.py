"""Text embeddings are stored as float16: ``text_embeddings.vector`` says so.

Rows written before stay float32 (1,536 bytes) and are read by their length; new rows are
float16 (768 bytes).

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('text_embeddings') as batch:
        batch.alter_column('vector', existing_type=sa.LargeBinary(), existing_nullable=False,
                           comment='float16 little-endian (float32 in rows of earlier releases)',
                           existing_comment='float32 little-endian')


def downgrade() -> None:
    with op.batch_alter_table('text_embeddings') as batch:
        batch.alter_column('vector', existing_type=sa.LargeBinary(), existing_nullable=False,
                           comment='float32 little-endian',
                           existing_comment='float16 little-endian (float32 in rows of earlier releases)')

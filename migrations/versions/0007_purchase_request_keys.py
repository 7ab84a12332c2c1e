"""purchase request keys: a repeated POST /api/purchases finds the purchase it made

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("purchases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("request_key", sa.String(length=300), nullable=True))
        batch_op.create_index("uq_purchases_request_key", ["request_key"], unique=True)


def downgrade():
    with op.batch_alter_table("purchases", schema=None) as batch_op:
        batch_op.drop_index("uq_purchases_request_key")
        batch_op.drop_column("request_key")

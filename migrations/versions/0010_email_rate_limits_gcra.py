"""email rate limits: one GCRA row per scope replaces one row per send slot

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "email_rate_limits",
        sa.Column("scope", sa.String(length=80), nullable=False),
        sa.Column("tat_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_email_rate_limits")),
    )
    # The old slots are not carried over: at worst each scope may send one more burst right
    # after the upgrade, which the old limiter allowed a minute later anyway.
    with op.batch_alter_table("email_rate_slots", schema=None) as batch_op:
        batch_op.drop_index("ix_email_rate_slots_used_at")
    op.drop_table("email_rate_slots")


def downgrade():
    op.create_table(
        "email_rate_slots",
        sa.Column("scope", sa.String(length=80), nullable=False),
        sa.Column("slot", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "slot", name=op.f("pk_email_rate_slots")),
    )
    with op.batch_alter_table("email_rate_slots", schema=None) as batch_op:
        batch_op.create_index("ix_email_rate_slots_used_at", ["used_at"], unique=False)
    op.drop_table("email_rate_limits")

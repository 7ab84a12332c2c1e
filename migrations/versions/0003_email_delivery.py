"""email delivery (email log, rate limits, provider circuits)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "email_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("operation_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("purchase_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("to_address", sa.String(length=320), nullable=False),
        sa.Column("template", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=True),
        sa.Column("provider_message_id", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["operation_id"], ["operations.id"], name=op.f("fk_email_log_operation_id_operations"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_email_log")),
    )
    with op.batch_alter_table("email_log", schema=None) as batch_op:
        batch_op.create_index("ix_email_log_created_at", ["created_at"], unique=False)
        batch_op.create_index("ix_email_log_operation_id", ["operation_id"], unique=False)
        batch_op.create_index("ix_email_log_purchase_id", ["purchase_id"], unique=False)

    op.create_table(
        "email_provider_circuits",
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("opened_until", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("provider", name=op.f("pk_email_provider_circuits")),
    )

    op.create_table(
        "email_rate_slots",
        sa.Column("scope", sa.String(length=80), nullable=False),
        sa.Column("slot", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "slot", name=op.f("pk_email_rate_slots")),
    )
    with op.batch_alter_table("email_rate_slots", schema=None) as batch_op:
        batch_op.create_index("ix_email_rate_slots_used_at", ["used_at"], unique=False)


def downgrade():
    with op.batch_alter_table("email_rate_slots", schema=None) as batch_op:
        batch_op.drop_index("ix_email_rate_slots_used_at")
    op.drop_table("email_rate_slots")

    op.drop_table("email_provider_circuits")

    with op.batch_alter_table("email_log", schema=None) as batch_op:
        batch_op.drop_index("ix_email_log_purchase_id")
        batch_op.drop_index("ix_email_log_operation_id")
        batch_op.drop_index("ix_email_log_created_at")
    op.drop_table("email_log")

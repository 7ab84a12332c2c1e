"""admin console (admin users, admin api tokens, bulk jobs)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22

"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    json_doc = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    op.create_table(
        "admin_users",
        sa.Column("id", big_id, nullable=False),
        sa.Column("email", sa.String(length=255), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_login_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_users")),
        sa.UniqueConstraint("email", name=op.f("uq_admin_users_email")),
    )
    op.create_table(
        "failed_logins",
        sa.Column("id", big_id, nullable=False),
        sa.Column("email", sa.String(length=255), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("first_failed_at", sa.DateTime(), nullable=False),
        sa.Column("last_failed_at", sa.DateTime(), nullable=False),
        sa.Column("locked_until", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_failed_logins")),
        sa.UniqueConstraint("email", "ip", name="uq_failed_logins_email_ip"),
    )
    op.create_table(
        "bulk_jobs",
        sa.Column("id", big_id, nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("filters", json_doc, nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("processed", sa.Integer(), nullable=False),
        sa.Column("succeeded", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("cursor", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("operation_id", big_id, nullable=True),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bulk_jobs")),
    )
    op.create_table(
        "bulk_job_items",
        sa.Column("bulk_job_id", big_id, nullable=False),
        sa.Column("operation_id", big_id, nullable=False),
        sa.ForeignKeyConstraint(
            ["bulk_job_id"], ["bulk_jobs.id"], name=op.f("fk_bulk_job_items_bulk_job_id_bulk_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("bulk_job_id", "operation_id", name=op.f("pk_bulk_job_items")),
    )
    # The admin pages' indexes on the engine's table (declared in webapp/models/admin.py).
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.create_index("ix_operations_state_dead_at_id", ["state", "dead_at", "id"], unique=False)
        batch_op.create_index("ix_operations_kind_dead_at_attempts", ["kind", "dead_at", "attempts"], unique=False)
        batch_op.create_index(
            "ix_operations_kind_succeeded_at_attempts", ["kind", "succeeded_at", "attempts"], unique=False
        )
        batch_op.create_index(
            "ix_operations_created_at_name", ["created_at", "name", "kind", "state", "attempts"], unique=False
        )


def downgrade():
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.drop_index("ix_operations_created_at_name")
        batch_op.drop_index("ix_operations_kind_succeeded_at_attempts")
        batch_op.drop_index("ix_operations_kind_dead_at_attempts")
        batch_op.drop_index("ix_operations_state_dead_at_id")
    op.drop_table("bulk_job_items")
    op.drop_table("bulk_jobs")
    op.drop_table("failed_logins")
    op.drop_table("admin_users")

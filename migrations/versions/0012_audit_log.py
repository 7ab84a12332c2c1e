"""audit log: who did what to which operation, job, token or admin; bulk jobs' parameters

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02

"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade():
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    json_document = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    op.create_table(
        "audit_log",
        sa.Column("id", big_id, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=True),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("target_type", sa.String(length=40), nullable=True),
        sa.Column("target_id", sa.String(length=120), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("details", json_document, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_log_created_at_id", ["created_at", "id"], unique=False)
        batch_op.create_index("ix_audit_log_action_created_at_id", ["action", "created_at", "id"], unique=False)
        batch_op.create_index("ix_audit_log_actor_created_at_id", ["actor", "created_at", "id"], unique=False)
        batch_op.create_index("ix_audit_log_target", ["target_type", "target_id", "created_at", "id"], unique=False)
    with op.batch_alter_table("bulk_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("params", json_document, nullable=True))


def downgrade():
    with op.batch_alter_table("bulk_jobs", schema=None) as batch_op:
        batch_op.drop_column("params")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_target")
        batch_op.drop_index("ix_audit_log_actor_created_at_id")
        batch_op.drop_index("ix_audit_log_action_created_at_id")
        batch_op.drop_index("ix_audit_log_created_at_id")
    op.drop_table("audit_log")

"""consumers and alert channels: one heartbeat row per consumer process

The alert channels (email, webhook) and the backlog alerts need no schema: their deliveries are
operations and their thresholds alert_states rows.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02

"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

json_document = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade():
    op.create_table(
        "consumers",
        sa.Column("identity", sa.String(length=120), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("threads", sa.Integer(), nullable=False),
        sa.Column("scheduler", sa.Boolean(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(), nullable=True),
        sa.Column("running", json_document, nullable=False),
        sa.PrimaryKeyConstraint("identity", name=op.f("pk_consumers")),
    )
    with op.batch_alter_table("consumers", schema=None) as batch_op:
        batch_op.create_index("ix_consumers_last_seen_at", ["last_seen_at"], unique=False)


def downgrade():
    with op.batch_alter_table("consumers", schema=None) as batch_op:
        batch_op.drop_index("ix_consumers_last_seen_at")
    op.drop_table("consumers")

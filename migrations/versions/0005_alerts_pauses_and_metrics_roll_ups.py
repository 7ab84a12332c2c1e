"""alerts, pauses and metrics roll-ups

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22

"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
json_document = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade():
    op.create_table(
        "alerts",
        sa.Column("id", big_id, nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("level", sa.String(length=10), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("title", sa.String(length=255), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("context", json_document, nullable=False),
        sa.Column("state", sa.String(length=20), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("operation_id", big_id, nullable=True),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["operation_id"], ["operations.id"], name=op.f("fk_alerts_operation_id_operations"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index("ix_alerts_created_at", ["created_at"], unique=False)
        batch_op.create_index("ix_alerts_operation_id", ["operation_id"], unique=False)
        batch_op.create_index("ix_alerts_type_key_created_at", ["type", "key", "created_at"], unique=False)

    op.create_table(
        "alert_states",
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("level", sa.String(length=10), nullable=True),
        sa.Column("announced", sa.Boolean(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("changed_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("type", "key", name=op.f("pk_alert_states")),
    )
    op.create_table(
        "operation_pauses",
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("paused_at", sa.DateTime(), nullable=False),
        sa.Column("paused_by", sa.String(length=255), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_operation_pauses")),
    )
    op.create_table(
        "auto_requeues",
        sa.Column("operation_id", big_id, autoincrement=False, nullable=False),
        sa.Column("requeued_at", sa.DateTime(), nullable=False),
        sa.Column("attempts_before", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["operation_id"],
            ["operations.id"],
            name=op.f("fk_auto_requeues_operation_id_operations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("operation_id", name=op.f("pk_auto_requeues")),
    )
    op.create_table(
        "metric_rollups",
        sa.Column("metric", sa.String(length=60), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("label", sa.String(length=40), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("metric", "kind", "name", "label", name=op.f("pk_metric_rollups")),
    )
    op.create_table(
        "maintenance_cursors",
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("position", sa.DateTime(), nullable=True),
        sa.Column("last_key", sa.String(length=255), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_maintenance_cursors")),
    )
    # Cleanup deletes operations; this keeps the ON DELETE SET NULL on stripe_events cheap
    # (declared in webapp/models/alerts.py).
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.create_index("ix_stripe_events_operation_id", ["operation_id"], unique=False)


def downgrade():
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.drop_index("ix_stripe_events_operation_id")
    op.drop_table("maintenance_cursors")
    op.drop_table("metric_rollups")
    op.drop_table("auto_requeues")
    op.drop_table("operation_pauses")
    op.drop_table("alert_states")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_alerts_type_key_created_at")
        batch_op.drop_index("ix_alerts_operation_id")
        batch_op.drop_index("ix_alerts_created_at")
    op.drop_table("alerts")

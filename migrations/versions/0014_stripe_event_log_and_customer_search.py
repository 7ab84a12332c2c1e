"""stripe event log and customer search: replays of stored events, the type index, lower() indexes

Replays of a stored Stripe event (each a new processing operation) are listed in
``stripe_event_replays``; the event log filters by type or state newest first; the console searches
customers by a case-insensitive prefix of their email or name. On PostgreSQL those two
expression indexes are ``COLLATE "C"``, so a prefix is a byte range in any database collation.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

LOWER_INDEXES = (("ix_customers_email_lower", "email"), ("ix_customers_name_lower", "name"))


def upgrade():
    op.create_table(
        "stripe_event_replays",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("operation_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("requested_by", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["event_id"], ["stripe_events.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["operation_id"], ["operations.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "uq_stripe_event_replays_event_id_number", "stripe_event_replays", ["event_id", "number"], unique=True
    )
    op.create_index("ix_stripe_event_replays_operation_id", "stripe_event_replays", ["operation_id"])
    op.create_index("ix_stripe_events_type_received_at", "stripe_events", ["type", "received_at"])
    # The state index grows a second column, so a state filter pages newest first without sorting.
    op.create_index(
        "ix_stripe_events_processing_state_received_at", "stripe_events", ["processing_state", "received_at"]
    )
    op.drop_index("ix_stripe_events_processing_state", table_name="stripe_events")
    collate = ' COLLATE "C"' if op.get_bind().dialect.name == "postgresql" else ""
    for name, column in LOWER_INDEXES:
        op.execute(f"CREATE INDEX {name} ON customers (lower({column}){collate})")


def downgrade():
    for name, _column in LOWER_INDEXES:
        op.drop_index(name, table_name="customers")
    op.create_index("ix_stripe_events_processing_state", "stripe_events", ["processing_state"])
    op.drop_index("ix_stripe_events_processing_state_received_at", table_name="stripe_events")
    op.drop_index("ix_stripe_events_type_received_at", table_name="stripe_events")
    op.drop_index("ix_stripe_event_replays_operation_id", table_name="stripe_event_replays")
    op.drop_index("uq_stripe_event_replays_event_id_number", table_name="stripe_event_replays")
    op.drop_table("stripe_event_replays")

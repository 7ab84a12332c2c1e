"""console roll-ups: per-hour counts per operation kind and name for the health page's windows

The health cards, per-name breakdown and trend over 7 days read up to a quarter of a million
operations at a million rows; the checks job now rebuilds hour buckets of those counts and the
page adds the live edges of the window (docs/benchmarks.md).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "operation_hour_rollups",
        sa.Column("hour", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        *[
            sa.Column(column, sa.BigInteger(), nullable=False)
            for column in (
                "created",
                "created_succeeded",
                "created_failed",
                "created_dead",
                "created_attempts",
                "succeeded",
                "succeeded_retried",
            )
        ],
        sa.Column("retried_success_seconds", sa.Float(), nullable=False),
        *[
            sa.Column(column, sa.BigInteger(), nullable=False)
            for column in ("dead", "dead_retried", "attempts_succeeded", "attempts_failed", "finished_attempts")
        ],
        sa.Column("computed_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("hour", "kind", "name", name=op.f("pk_operation_hour_rollups")),
    )


def downgrade():
    op.drop_table("operation_hour_rollups")

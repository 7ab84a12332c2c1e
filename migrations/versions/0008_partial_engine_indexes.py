"""partial indexes where the engine's transitions would otherwise rewrite entries; no updated_at index

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

The lease index holds running operations only; the health page's terminal-time indexes hold
only operations that reached that end. Every claim and outcome used to rewrite an entry in
each of the three. The index on ``updated_at`` goes: no query reads by it, and every
transition rewrote its entry.
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

PARTIAL = {
    "ix_operations_state_lease_expires_at": (["state", "lease_expires_at"], "lease_expires_at IS NOT NULL"),
    "ix_operations_kind_dead_at_attempts": (["kind", "dead_at", "attempts"], "dead_at IS NOT NULL"),
    "ix_operations_kind_succeeded_at_attempts": (["kind", "succeeded_at", "attempts"], "succeeded_at IS NOT NULL"),
}


def upgrade():
    op.drop_index("ix_operations_updated_at", table_name="operations")
    for name, (columns, where) in PARTIAL.items():
        op.drop_index(name, table_name="operations")
        condition = sa.text(where)
        op.create_index(name, "operations", columns, unique=False, sqlite_where=condition, postgresql_where=condition)


def downgrade():
    op.create_index("ix_operations_updated_at", "operations", ["updated_at"], unique=False)
    for name, (columns, _) in PARTIAL.items():
        op.drop_index(name, table_name="operations")
        op.create_index(name, "operations", columns, unique=False)

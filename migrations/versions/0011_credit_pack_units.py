"""credit pack units: a pack grants cents of credit (credit_cents_granted), and the demo packs say so

The column was ``credits_granted`` but always counted cents of the buyer's balance; the demo
catalogue's "100 credits" pack granted 100 cents (one dollar) for $90. The demo packs, exactly as
the demo wrote them, become "$100 credit pack" (10000 cents) and "$500 credit pack" (50000 cents).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

DEMO_PACKS = (
    ("credits-100", "100 credits", "$100 credit pack", 100),
    ("credits-500", "500 credits", "$500 credit pack", 500),
)


def upgrade():
    # Plain RENAME COLUMN (PostgreSQL, SQLite >= 3.25) rewrites the CHECK constraint that names the
    # column; batch mode's table copy would keep the old name in it.
    op.execute("ALTER TABLE products RENAME COLUMN credits_granted TO credit_cents_granted")
    products = sa.table(
        "products", sa.column("sku"), sa.column("name"), sa.column("kind"), sa.column("credit_cents_granted")
    )
    for sku, old_name, new_name, dollars in DEMO_PACKS:
        op.execute(
            products.update()
            .where(
                products.c.sku == sku,
                products.c.name == old_name,
                products.c.kind == "credits",
                products.c.credit_cents_granted == dollars,
            )
            .values(name=new_name, credit_cents_granted=dollars * 100)
        )


def downgrade():
    op.execute("ALTER TABLE products RENAME COLUMN credit_cents_granted TO credits_granted")

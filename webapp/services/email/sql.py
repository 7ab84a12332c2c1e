"""A portable ``INSERT ... ON CONFLICT DO NOTHING`` (SQLite and PostgreSQL both have it)."""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite

from webapp.extensions import db


def insert_ignore(model, rows: list[dict]) -> None:
    """Insert ``rows`` into ``model``'s table, skipping any whose primary key already exists."""
    if not rows:
        return
    dialect = db.session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    db.session.execute(insert(model).values(rows).on_conflict_do_nothing())

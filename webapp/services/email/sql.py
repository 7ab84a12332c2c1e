"""A portable ``INSERT ... ON CONFLICT DO NOTHING`` (SQLite and PostgreSQL both have it)."""

from __future__ import annotations

from webapp.extensions import db
from webapp.services.engine.sql import insert_ignoring_conflicts


def insert_ignore(model, rows: list[dict]) -> None:
    """Insert ``rows`` into ``model``'s table, skipping any whose primary key already exists."""
    if not rows:
        return
    statement = insert_ignoring_conflicts(model.__table__, db.session.get_bind().dialect.name)
    db.session.execute(statement.values(rows))

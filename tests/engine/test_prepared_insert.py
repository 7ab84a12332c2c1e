"""Inserts compiled once per dialect store exactly what SQLAlchemy's own insert stores."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import select

from webapp.extensions import db
from webapp.models import Operation
from webapp.services.engine.sql import prepared_insert

AT = datetime(2030, 1, 2, 3, 4, 5, 678901)
LATER = datetime(2030, 1, 2, 3, 4, 6)  # no microseconds: SQLite's text form must still carry ".000000"


def operation_values(key: str) -> dict:
    return {
        "kind": "job",
        "name": "test.prepared",
        "payload": {"text": "é ✓", "n": [1, 2.5, None], "nested": {"ok": True}},
        "idempotency_key": key,
        "subject": None,
        "state": "pending",
        "attempts": 0,
        "max_attempts": 3,
        "next_attempt_at": AT,
        "run_at": LATER,
        "enqueued_at": AT,
        "created_at": LATER,
        "updated_at": AT,
    }


def stored(key: str) -> tuple[dict, tuple]:
    """The row as read back (but its id and key), and the same columns as the database's own text."""
    table = Operation.__table__
    columns = [column for column in table.c if column.name not in ("id", "idempotency_key")]
    where = table.c.idempotency_key == key
    row = db.session.execute(select(*columns).where(where)).one()._asdict()
    text = tuple(db.session.execute(select(*(column.cast(db.String) for column in columns)).where(where)).one())
    db.session.rollback()
    return row, text


def test_a_prepared_insert_stores_what_sqlalchemys_own_insert_stores(app):
    table = Operation.__table__
    db.session.execute(table.insert(), operation_values("by-core"))
    insert = prepared_insert(table, db.session.get_bind().dialect, tuple(operation_values("x")), (table.c.id,))
    new_id = insert.execute(db.session.connection(), insert.parameters(operation_values("prepared"))).scalar()
    db.session.commit()

    assert stored("prepared") == stored("by-core")
    assert stored("prepared")[0]["payload"]["text"] == "é ✓" and stored("prepared")[0]["created_at"] == LATER
    assert new_id == db.session.execute(select(table.c.id).where(table.c.idempotency_key == "prepared")).scalar_one()
    db.session.rollback()


def test_a_conflict_ignoring_prepared_insert_inserts_nothing_for_a_key_that_exists(app):
    table = Operation.__table__
    insert = prepared_insert(
        table, db.session.get_bind().dialect, tuple(operation_values("x")), (table.c.id,), ignore_conflicts=True
    )
    first = insert.execute(db.session.connection(), insert.parameters(operation_values("once"))).scalar()
    again = insert.execute(db.session.connection(), insert.parameters(operation_values("once"))).scalar()
    db.session.commit()

    assert first is not None and again is None


def test_an_insert_that_leaves_out_a_column_with_a_python_default_is_refused(app):
    values = operation_values("x")
    del values["payload"]  # SQLAlchemy's own insert would fill in {}; a prepared one would write NULL

    with pytest.raises(ValueError, match="payload"):
        prepared_insert(Operation.__table__, db.session.get_bind().dialect, tuple(values))

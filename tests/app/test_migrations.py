"""The Alembic chain, applied to an empty database, builds exactly the schema the models declare."""

from __future__ import annotations

import flask_migrate
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from tests.support import servers
from webapp import create_app
from webapp.extensions import db
from webapp.services.console import search_index


def _app(database_url: str, tmp_path):
    return create_app(
        {
            "TESTING": True,
            "BACKSTOP_ENV": "test",
            "SECRET_KEY": "test",
            "SQLALCHEMY_DATABASE_URI": database_url,
            "HUEY_URL": f"sqlite:///{tmp_path / 'huey.sqlite3'}",
        }
    )


def _differences(app) -> list:
    """What autogenerate would still have to write after ``upgrade`` (nothing, if they agree)."""
    with db.engine.connect() as connection:
        # The dead-letter search index (migration 0017) is built outside the models, as env.py knows.
        opts = {"compare_type": True, "compare_server_default": True, "include_object": search_index.modelled}
        context = MigrationContext.configure(connection, opts=opts)
        return compare_metadata(context, db.metadata)


def _describe(difference) -> str:
    """One line per difference: the operation and the table, index or column it concerns."""
    if isinstance(difference, list):  # column changes come as a list of modifications
        return "; ".join(f"{d[0]} {d[2]}.{d[3]}" for d in difference)
    kind, target = difference[0], difference[1]
    if kind.endswith("_table"):
        return f"{kind} {target.name}"
    if kind.endswith("_index") or kind.endswith("_constraint"):
        return f"{kind} {target.name} on {target.table.name}"
    if kind.endswith("_column"):
        return f"{kind} {difference[2]}.{difference[3].name}"
    return repr(difference)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database(request, tmp_path):
    """The URL of an empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.sqlite3'}"
        return
    url = servers.create_postgres_database()
    try:
        yield url
    finally:
        servers.drop_postgres_database(url)


def test_upgrade_from_empty_matches_the_models(empty_database, tmp_path):
    app = _app(empty_database, tmp_path)
    with app.app_context():
        flask_migrate.upgrade()
        differences = _differences(app)
        tables = set(inspect(db.engine).get_table_names())
        db.engine.dispose()

    assert differences == [], "migrations and models disagree:\n" + "\n".join(map(_describe, differences))
    assert set(db.metadata.tables) <= tables
    assert {"operations", "operation_attempts", "periodic_jobs", "job_runs", "alembic_version"} <= tables


def test_downgrade_to_base_then_upgrade_again_on_sqlite(tmp_path):
    app = _app(f"sqlite:///{tmp_path / 'roundtrip.sqlite3'}", tmp_path)
    with app.app_context():
        flask_migrate.upgrade()
        upgraded = set(inspect(db.engine).get_table_names())
        flask_migrate.downgrade(revision="base")
        after_downgrade = set(inspect(db.engine).get_table_names())
        flask_migrate.upgrade()
        upgraded_again = set(inspect(db.engine).get_table_names())
        db.engine.dispose()

    # Every table a migration made is dropped again, and the chain can be re-applied.
    assert after_downgrade <= {"alembic_version"}
    assert upgraded_again == upgraded

"""The ``flask --app wsgi`` command line: every Backstop command, registered in one place."""

from __future__ import annotations

import click
from flask import Flask

from webapp import cli

BACKSTOP_COMMANDS = {
    "create-admin": None,
    "demo-data": None,
    "dev": None,
    "products": {"add", "list", "deactivate"},
    "reconcile": None,
    "refingerprint": None,
    "set-password": None,
    "stripe": {"send-event"},
    "tokens": {"create", "list", "revoke"},
    "worker": None,
}


def _subcommands(command: click.Command) -> set[str] | None:
    return set(command.commands) if isinstance(command, click.Group) else None


def test_the_app_offers_exactly_backstops_commands(sqlite_app):
    offered = {name: _subcommands(command) for name, command in sqlite_app.cli.commands.items()}
    assert offered == {**BACKSTOP_COMMANDS, "db": offered["db"]}  # db: Flask-Migrate's


def test_init_app_adds_every_command_but_the_worker():
    app = Flask(__name__)
    cli.init_app(app)
    assert set(app.cli.commands) == set(BACKSTOP_COMMANDS) - {"worker"}


def test_reconcile_runs_one_pass_and_reports_it(sqlite_app):
    result = sqlite_app.test_cli_runner().invoke(args=["reconcile"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: ")

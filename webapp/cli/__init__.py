"""Backstop's ``flask --app wsgi`` commands, one module per command group.

``init_app(app)`` adds them all. The ``worker`` command lives with the Huey code (``tasks.cli``)
and is added the same way by ``tasks.bind``.
"""

from __future__ import annotations

from flask import Flask

from webapp.cli import admins, demo, dev, engine, maintenance, products, stripe, tokens

COMMANDS = (
    dev.dev,
    admins.create_admin,
    admins.set_password,
    demo.demo_data_command,
    engine.reconcile_command,
    maintenance.refingerprint_command,
    products.products_cli,
    tokens.tokens_cli,
    stripe.stripe_cli,
)


def init_app(app: Flask) -> None:
    """Add every Backstop command to the app's CLI."""
    for command in COMMANDS:
        app.cli.add_command(command)

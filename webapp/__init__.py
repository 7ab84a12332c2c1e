"""Backstop: purchases, Stripe webhooks and email, with every side effect made reliable."""

from __future__ import annotations

import logging

from flask import Flask

from webapp import config as config_module
from webapp import headers, limits
from webapp.database import configure_engine_options
from webapp.extensions import db, migrate
from webapp.logs import configure_logging


def create_app(overrides: dict | None = None) -> Flask:
    """Build the Flask app from the environment and ``overrides`` (tests pass theirs), both parsed alike."""
    app = Flask(
        __name__,
        instance_path=str(config_module.INSTANCE_DIR),
        template_folder=str(config_module.PROJECT_ROOT / "templates"),
        static_folder=str(config_module.PROJECT_ROOT / "static"),
    )
    app.config.update(config_module.load(overrides=overrides))
    config_module.check_required(app.config)
    configure_logging(app.config["LOG_FORMAT"])
    configure_engine_options(app)

    _trust_proxies(app)
    db.init_app(app)
    migrate.init_app(
        app, db, directory=str(config_module.PROJECT_ROOT / "migrations"), render_as_batch=True, compare_type=True
    )

    from webapp import models  # noqa: F401  (register the models on the metadata)
    from webapp.cli import init_app as init_cli

    _register_handlers(app)
    limits.install(app)  # first: no hook of a blueprint may read an oversized body
    _register_blueprints(app)
    headers.install(app)
    init_cli(app)
    logging.getLogger("backstop").debug("app created for %s", app.config["BACKSTOP_ENV"])
    return app


def _trust_proxies(app: Flask) -> None:
    """Behind TRUSTED_PROXY_COUNT proxies, take client address, scheme and host from their headers."""
    hops = app.config["TRUSTED_PROXY_COUNT"]
    if hops:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops)


def _register_handlers(app: Flask) -> None:
    """Wire every handler, outcome listener and periodic job (``webapp.services.init_app``)."""
    from webapp import services

    services.init_app(app)


def _register_blueprints(app: Flask) -> None:
    from webapp.blueprints import admin, admin_api, api, health, metrics, webhooks

    for blueprint in (health.bp, webhooks.bp, api.bp, admin.bp, admin.root, admin_api.bp, metrics.bp):
        app.register_blueprint(blueprint)

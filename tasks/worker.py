"""Entry point for ``huey_consumer tasks.worker.huey`` (``flask --app wsgi worker`` is preferred)."""

from webapp import create_app

from . import bind

app = create_app()
huey = bind(app)

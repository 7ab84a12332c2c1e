"""Entry point for ``huey_consumer tasks.worker.huey`` (``flask --app wsgi worker`` is preferred)."""

from tasks import bind
from webapp import create_app

app = create_app()
huey = bind(app)

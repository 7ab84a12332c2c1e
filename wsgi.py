"""Entry point: ``flask --app wsgi ...`` and ``gunicorn wsgi:app``."""

import tasks
from webapp import create_app

app = create_app()
huey = tasks.bind(app)

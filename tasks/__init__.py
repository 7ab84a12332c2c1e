"""Huey tasks: thin wrappers that load an operation by id and call a service.

``bind(app)`` builds the Huey instance from ``HUEY_URL``, registers the tasks on it and
installs it as the app's doorbell. Entry points (``wsgi.py``, ``tasks/worker.py``) call it.
"""

from __future__ import annotations

from flask import Flask
from huey import Huey

from tasks import cli
from tasks.queue import HueyDoorbell, drop_huey_task_lines, huey_from_url
from tasks.runtime import register_tasks
from webapp.services.engine.doorbell import set_doorbell


def bind(app: Flask) -> Huey:
    """Create the app's Huey instance, register Backstop's tasks, and ring through it."""
    huey = huey_from_url(
        app.config["HUEY_URL"], name=app.config["HUEY_NAME"], timeout=app.config["HUEY_TIMEOUT_SECONDS"]
    )
    drop_huey_task_lines()  # the engine logs each attempt itself
    run_operation = register_tasks(huey, app)
    set_doorbell(HueyDoorbell(huey, run_operation))
    app.extensions["backstop.huey"] = huey
    app.cli.add_command(cli.worker)
    return huey

"""``GET /healthz``: liveness plus every periodic job's heartbeat."""

from flask import Blueprint

bp = Blueprint("health", __name__)

from webapp.blueprints.health import views  # noqa: E402,F401  (the routes register on bp)

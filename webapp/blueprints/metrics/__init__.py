"""``GET /metrics``: Prometheus text format, every value read from the database per scrape."""

from flask import Blueprint

bp = Blueprint("metrics", __name__)

from webapp.blueprints.metrics import views  # noqa: E402,F401  (the routes register on bp)

"""The liveness route."""

from flask import current_app, jsonify

from webapp.blueprints.health.blueprint import bp
from webapp.domain.time import utcnow
from webapp.services.monitoring import liveness


@bp.get("/healthz")
def healthz():
    """200 when the database answers and every periodic job beat recently, else 503 (details: admins only)."""
    healthy, report = liveness.check(utcnow(), current_app.config)
    return jsonify(liveness.public_view(report)), (200 if healthy else 503)

"""``GET /healthz``: liveness plus the reconciler's freshness."""

from flask import Blueprint, current_app, jsonify

from ...services import health

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """200 when the database answers and the reconciler beat recently, else 503."""
    healthy, report = health.check(current_app.config["RECONCILE_INTERVAL_SECONDS"])
    return jsonify(report), (200 if healthy else 503)

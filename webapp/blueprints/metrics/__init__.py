"""``GET /metrics``: Prometheus text format, every value read from the database per scrape."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from webapp.services.monitoring.prometheus import DatabaseCollector

bp = Blueprint("metrics", __name__)


def _authorized() -> bool:
    token = current_app.config.get("METRICS_TOKEN")
    if not token:
        return True
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(raw.strip().encode(), token.encode())


@bp.get("/metrics")
def metrics():
    """Every Backstop metric; a bearer token is required when ``METRICS_TOKEN`` is set."""
    if not _authorized():
        return Response(
            "metrics need 'Authorization: Bearer <METRICS_TOKEN>'\n",
            status=401,
            mimetype="text/plain",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    # A registry per scrape holding only the database collector: no process-local state at all.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(current_app.config))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

"""The Prometheus scrape route and its optional bearer token."""

from __future__ import annotations

import hmac

from flask import Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from webapp.blueprints.json_api import bearer_challenge, bearer_token
from webapp.blueprints.metrics.blueprint import bp
from webapp.services.monitoring.prometheus import DatabaseCollector

REALM = "metrics"


def _authorized() -> bool:
    expected = current_app.config["METRICS_TOKEN"]
    if not expected:
        return True
    raw = bearer_token(request)
    return raw is not None and hmac.compare_digest(raw.encode(), expected.encode())


@bp.get("/metrics")
def metrics():
    """Every Backstop metric; a bearer token is required when ``METRICS_TOKEN`` is set."""
    if not _authorized():
        return Response(
            "metrics need 'Authorization: Bearer <METRICS_TOKEN>'\n",
            status=401,
            mimetype="text/plain",
            headers={"WWW-Authenticate": bearer_challenge(REALM)},
        )
    # A registry per scrape holding only the database collector: no process-local state at all.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(current_app.config))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

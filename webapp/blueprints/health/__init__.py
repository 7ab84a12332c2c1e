"""``GET /healthz``: liveness plus every periodic job's heartbeat."""

from webapp.blueprints.health import views  # noqa: F401  (importing the route modules registers their routes on bp)
from webapp.blueprints.health.blueprint import bp

__all__ = ["bp"]

"""``GET /metrics``: Prometheus text format, every value read from the database per scrape."""

from webapp.blueprints.metrics import views  # noqa: F401  (importing the route modules registers their routes on bp)
from webapp.blueprints.metrics.blueprint import bp

__all__ = ["bp"]

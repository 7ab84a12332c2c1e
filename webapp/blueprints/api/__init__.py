"""The storefront API: ``POST /api/customers``, ``POST /api/purchases``, ``GET /api/purchases/<id>``.

Bearer tokens (scope ``storefront``). Every answer is JSON; every error has the shape
``{"error": code, "message": ...}`` (plus ``fields`` for validation failures).
"""

from webapp.blueprints.api import views  # noqa: F401  (importing the route modules registers their routes on bp)
from webapp.blueprints.api.blueprint import bp

__all__ = ["bp"]

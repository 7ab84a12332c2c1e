"""``/api/admin/...``: the console's powers as JSON, for bearer tokens of scope ``admin``.

Every error answers ``{"error": <stable code>, "message": <human text>}`` with a 4xx status;
every timestamp is ISO 8601 in UTC ending in ``Z``.
"""

from webapp.blueprints.admin_api import investigate, views  # noqa: F401  (importing the route modules registers their routes on bp)
from webapp.blueprints.admin_api.blueprint import bp

__all__ = ["bp"]

"""The admin console: log-in, failed operations, operations health (HTML + htmx partials).

Registering this blueprint also installs, app-wide: Flask-Login, CSRF protection for every
state-changing request outside ``/api/`` and ``/webhooks/`` (those use bearer tokens and
signatures), and a session cookie marked Secure whenever the request came over HTTPS.
"""

from webapp.blueprints.admin import auth, customers, views  # noqa: F401  (importing the route modules registers their routes on bp)
from webapp.blueprints.admin.blueprint import bp, root

__all__ = ["bp", "root"]

"""``POST /webhooks/stripe``: verify Stripe's signature, store the event once, answer fast.

No business work and no outbound call happen here: the event and its processing operation
commit together, then the worker takes over. Never a 2xx for an event that is not stored.
"""

from webapp.blueprints.webhooks import views  # noqa: F401  (importing the route modules registers their routes on bp)
from webapp.blueprints.webhooks.blueprint import bp

__all__ = ["bp"]

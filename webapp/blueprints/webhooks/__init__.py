"""``POST /webhooks/stripe``: verify Stripe's signature, store the event once, answer fast.

No business work and no outbound call happen here: the event and its processing operation
commit together, then the worker takes over. Never a 2xx for an event that is not stored.
"""

from flask import Blueprint

bp = Blueprint("webhooks", __name__)

from webapp.blueprints.webhooks import views  # noqa: E402,F401  (the routes register on bp)

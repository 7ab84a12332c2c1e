"""Payments: customers, the product catalogue, purchases, Stripe Checkout and Stripe event handlers.

Importing this package registers the ``stripe.<event type>`` handlers (the app factory does,
so web and worker processes both know them).
"""

from webapp.services.payments import fulfilment, handlers  # noqa: F401  (handlers and outcome listeners)


def init_app(app) -> None:
    """Register the Stripe handlers with the retry policy this app is configured for."""
    handlers.register_handlers(handlers.policy_from_config(app.config))

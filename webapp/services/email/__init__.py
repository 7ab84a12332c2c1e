"""Transactional email: queue an email as an operation; the worker renders and sends it.

``queue_email`` is the only call other areas need: it adds an ``email.<template>`` operation
to the caller's transaction (so a purchase and its confirmation commit together). The
handlers registered below render the template, respect the rate limits, and send through
the configured providers with failover and circuit breakers.
"""

from webapp.services.email.handlers import init_app
from webapp.services.email.outbox import FULFILMENT_TEMPLATES, TEMPLATES, UnknownTemplate, operation_name, queue_email

__all__ = ["FULFILMENT_TEMPLATES", "TEMPLATES", "UnknownTemplate", "init_app", "operation_name", "queue_email"]

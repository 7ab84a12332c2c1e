"""Use cases with side effects. Never import ``request``, ``g``, ``flask_login`` or ``tasks``.

This package's one piece of wiring: :data:`REGISTERING_MODULES` names every module whose
import registers operation handlers, outcome listeners or periodic jobs, and :func:`init_app`
configures them for an app. Both the web and the worker process go through ``create_app``,
so both know every handler, listener and job.
"""

from __future__ import annotations

from flask import Flask

from webapp.services import email, payments
from webapp.services.console import bulk
from webapp.services.engine import reconciler
from webapp.services.engine.registry import import_handler_modules
from webapp.services.maintenance import cleanup, requeue
from webapp.services.monitoring import alerts, channels, checks
from webapp.services.payments import fulfilment

# Imported for what importing them registers; email and payments are also configured by init_app.
REGISTERING_MODULES = (
    email,  # handlers email.<template>
    payments,  # handlers stripe.<event type>
    fulfilment,  # outcome listener: a purchase's fulfilment status follows its confirmation email
    bulk,  # handler admin.bulk_retry
    alerts,  # handler alert.slack; outcome listener: an alert for every dead letter
    channels,  # handlers alert.email and alert.webhook
    reconciler,  # periodic job reconciler
    requeue,  # periodic job auto_requeue
    cleanup,  # periodic job cleanup
    checks,  # periodic jobs daily_report and checks
)


def init_app(app: Flask) -> None:
    """Register every handler with this app's settings, and import ``BACKSTOP_HANDLER_MODULES``."""
    email.init_app(app)
    payments.init_app(app)
    import_handler_modules(app.config["BACKSTOP_HANDLER_MODULES"])

"""One handler per email template, all doing the same thing: deliver the operation's email."""

from __future__ import annotations

from webapp.domain.retry import RetryPolicy
from webapp.services.email.delivery import deliver
from webapp.services.email.outbox import TEMPLATES, operation_name
from webapp.services.engine.registry import HandlerContext, registry

# Emails: 3 retries (4 attempts), exponential backoff with full jitter (seeds 000/001).
DEFAULT_EMAIL_POLICY = RetryPolicy.retries(3)


def send_email(ctx: HandlerContext) -> dict:
    """Render and send the operation's email (rate limits, failover, circuit breakers); return what was sent."""
    return deliver(ctx)


def register_handlers(policy: RetryPolicy | None = None) -> None:
    """Register ``email.<template>`` for every template with ``policy`` (re-registering is safe)."""
    for template in TEMPLATES:
        registry.register(operation_name(template), "email", send_email, policy or DEFAULT_EMAIL_POLICY)


def policy_from_config(config) -> RetryPolicy:
    """The email retry policy: ``EMAIL_RETRY_LADDER`` if set (tests, operators), else the default."""
    ladder = config["EMAIL_RETRY_LADDER"]
    return RetryPolicy.from_steps(ladder) if ladder else DEFAULT_EMAIL_POLICY


def init_app(app) -> None:
    """Register the handlers with this app's retry policy."""
    register_handlers(policy_from_config(app.config))


register_handlers()

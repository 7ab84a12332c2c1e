"""Email providers (SMTP, Resend, Postmark) and building one from the config."""

from __future__ import annotations

from webapp.services.email.providers.base import (
    NotConfigured,
    OutgoingEmail,
    ProviderError,
    ProviderMisconfigured,
    RejectedError,
    SendResult,
    TransientProviderError,
)
from webapp.services.email.providers.postmark import PostmarkProvider
from webapp.services.email.providers.resend import ResendProvider
from webapp.services.email.providers.smtp import SmtpProvider

__all__ = [
    "NotConfigured",
    "OutgoingEmail",
    "ProviderError",
    "ProviderMisconfigured",
    "RejectedError",
    "SendResult",
    "TransientProviderError",
    "build_provider",
]


def build_provider(name: str, config):
    """The provider called ``name``, built from the config; raises NotConfigured when settings lack."""
    timeout = config["EMAIL_TIMEOUT_SECONDS"]
    if name == "smtp":
        return SmtpProvider.from_config(config)
    if name == "resend":
        return ResendProvider(config["RESEND_API_KEY"], config["RESEND_API_BASE"], timeout)
    if name == "postmark":
        return PostmarkProvider(config["POSTMARK_SERVER_TOKEN"], config["POSTMARK_API_BASE"], timeout)
    raise ValueError(f"unknown email provider {name!r}")

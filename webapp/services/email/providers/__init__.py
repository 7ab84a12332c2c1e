"""Email providers (SMTP, Resend, Postmark) and building them, in failover order, from the config."""

from __future__ import annotations

from webapp.config import comma_list
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

PROVIDER_NAMES = ("smtp", "resend", "postmark")

__all__ = [
    "NotConfigured",
    "OutgoingEmail",
    "ProviderError",
    "ProviderMisconfigured",
    "RejectedError",
    "SendResult",
    "TransientProviderError",
    "PROVIDER_NAMES",
    "provider_names",
    "build_provider",
]


def provider_names(config) -> list[str]:
    """EMAIL_PROVIDERS as an ordered, de-duplicated list; raises ValueError on an unknown name."""
    ordered: list[str] = []
    for name in (part.lower() for part in comma_list(config.get("EMAIL_PROVIDERS"))):
        if name not in PROVIDER_NAMES:
            raise ValueError(f"EMAIL_PROVIDERS names an unknown provider {name!r}; known: {', '.join(PROVIDER_NAMES)}")
        if name not in ordered:
            ordered.append(name)
    return ordered


def build_provider(name: str, config):
    """The provider called ``name``, built from the config; raises NotConfigured when settings lack."""
    timeout = float(config.get("EMAIL_TIMEOUT_SECONDS") or 10.0)
    if name == "smtp":
        return SmtpProvider.from_config(config)
    if name == "resend":
        return ResendProvider(
            config.get("RESEND_API_KEY"), config.get("RESEND_API_BASE") or "https://api.resend.com", timeout
        )
    if name == "postmark":
        return PostmarkProvider(
            config.get("POSTMARK_SERVER_TOKEN"),
            config.get("POSTMARK_API_BASE") or "https://api.postmarkapp.com",
            timeout,
        )
    raise ValueError(f"unknown email provider {name!r}")

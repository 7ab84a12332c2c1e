"""Signing webhook bodies the way Stripe does, written out here independently of the app.

Stripe's header is ``t=<unix ts>,v1=<hex HMAC-SHA256 of "<ts>.<raw body>" keyed by the
endpoint secret>``, with extra ``v1`` entries during secret rotation and a legacy ``v0``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time


def sign(body: str | bytes, secret: str, timestamp: int) -> str:
    """The hex v1 signature of ``body`` at ``timestamp``."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    return hmac.new(secret.encode("utf-8"), str(timestamp).encode() + b"." + raw, hashlib.sha256).hexdigest()


def header(body: str | bytes, *secrets: str, timestamp: int | None = None, scheme: str = "v1") -> str:
    """A ``Stripe-Signature`` header with one ``scheme`` entry per secret."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    parts = [f"t={timestamp}"] + [f"{scheme}={sign(body, secret, timestamp)}" for secret in secrets]
    return ",".join(parts)


def body_of(event: dict) -> str:
    """Serialise an event as Stripe does (indented JSON)."""
    return json.dumps(event, indent=2)

"""Error fingerprints: failures that differ only in numbers, ids and addresses group together.

The fingerprint is stored on an operation whenever an attempt's error is recorded, so the
Issues view groups in SQL (by an indexed column) instead of re-normalising messages.
Changing the normalisation changes fingerprints: re-run ``flask --app wsgi refingerprint``.
"""

from __future__ import annotations

import hashlib
import re

FINGERPRINT_LENGTH = 16

_NORMALISERS = [
    (re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)*", re.ASCII), "<email>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "<uuid>"),
    (re.compile(r"\b(?:cs|pi|ch|evt|cus|in|re|sub|price|prod|txn|msg|req)_[A-Za-z0-9_]+\b"), "<id>"),
    (re.compile(r"\b0x[0-9a-f]+\b", re.I), "<hex>"),
    (re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", re.I), "<hex>"),
    (re.compile(r"\d+(?:\.\d+)*"), "<n>"),
    (re.compile(r"\s+"), " "),
]


def normalise_error(message: str | None) -> str:
    """The message with emails, UUIDs, provider ids, hex ids and numbers replaced by placeholders."""
    text = (message or "").strip()
    for pattern, placeholder in _NORMALISERS:
        text = pattern.sub(placeholder, text)
    return text[:300]


def fingerprint_of(error_class: str | None, message: str | None) -> str:
    """A stable 16-hex-digit fingerprint of an error's class and normalised message."""
    basis = f"{error_class or ''}|{normalise_error(message)}"
    return hashlib.sha256(basis.encode()).hexdigest()[:FINGERPRINT_LENGTH]

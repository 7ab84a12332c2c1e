"""Logging: readable lines by default, one JSON object per line with ``LOG_FORMAT=json``."""

from __future__ import annotations

import json
import logging
import re
from functools import lru_cache

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

# Extra fields whose name says they hold a secret or a whole payload are never written out.
SECRET_KEY = re.compile(
    r"authori[sz]ation|token|secret|password|passwd|api[_-]?key|cookie|signature|payload|"
    r"webhook_url|dsn",
    re.I,
)
# Secrets that may appear inside a message: bearer tokens, Stripe keys, signing headers, URL passwords.
SECRET_TEXT = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[redacted]"),
    (re.compile(r"\b(sk|rk|whsec|pk)_(live|test)?_?[A-Za-z0-9]{6,}"), "[redacted]"),
    (re.compile(r"(?i)((?:password|secret|token|api[_-]?key)\s*[=:]\s*)[^\s,;&]+"), r"\1[redacted]"),
    # user:password@ in any URL: database, Redis (often ":password@"), SMTP, HTTP.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@"), r"\1[redacted]@"),
    (re.compile(r"https://hooks\.slack\.com/[^\s\"']+"), "https://hooks.slack.com/[redacted]"),
]
REDACTED = "[redacted]"
# What every SECRET_TEXT pattern needs to match, in one search: most lines hold none of it.
MAY_HOLD_SECRET = re.compile(r"(?i:bearer\s)|\b(?:sk|rk|whsec|pk)_|(?i:password|secret|token|api[_-]?key)\s*[=:]|://")


def redact_text(text: str) -> str:
    """``text`` with bearer tokens, API keys, signing secrets and URL passwords replaced."""
    if not MAY_HOLD_SECRET.search(text):
        return text
    for pattern, replacement in SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


def redact_value(key: str, value):
    """A log field's value, redacted when its name marks a secret (recursively for dicts)."""
    if _names_a_secret(str(key)):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact_value(k, v) for k, v in value.items()}
    if isinstance(value, str):
        return redact_text(value)
    return value


@lru_cache(maxsize=1024)
def _names_a_secret(key: str) -> bool:
    # Cached: a handful of field names recur on every line (the engine logs each attempt).
    return SECRET_KEY.search(key) is not None


class RedactingFilter(logging.Filter):
    """Scrub secrets from a record's message, arguments and extra fields before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is still logged, just not formatted here
            return True
        record.msg, record.args = redact_text(message), None
        for key in [k for k in record.__dict__ if k not in _STANDARD]:
            record.__dict__[key] = redact_value(key, record.__dict__[key])
        _redact_traceback(record)
        return True


def _redact_traceback(record: logging.LogRecord) -> None:
    """Pre-format the record's traceback and stack redacted: an exception's text can carry a secret.

    Formatters print ``record.exc_text`` when it is set, so the raw exception is never formatted again.
    """
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact_text(record.exc_text)
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info)


class JsonFormatter(logging.Formatter):
    """Format a record and its ``extra`` fields as a single JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text  # already redacted by RedactingFilter
        return json.dumps(entry, default=str)


def configure_logging(log_format: str) -> None:
    """Install one handler on the ``backstop`` logger family (idempotent)."""
    logger = logging.getLogger("backstop")
    if getattr(logger, "_backstop_configured", False):
        return
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger._backstop_configured = True

"""Configuration from the environment (names from ARCHITECTURE.md's public contract)."""

from __future__ import annotations

import math
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
INSTANCE_DIR = PROJECT_ROOT / "instance"

# Settings that must be given explicitly outside development and tests.
REQUIRED_IN_PRODUCTION = (
    "SECRET_KEY",
    "DATABASE_URL",
    "HUEY_URL",
    "STRIPE_SECRET_KEY",
    "STRIPE_WEBHOOK_SECRET",
    "EMAIL_FROM",
)


class ConfigurationError(RuntimeError):
    """Raised at start-up when required settings are missing or malformed."""


def comma_list(value) -> list[str]:
    """A comma-separated setting (or a list given by a test) as its non-empty, trimmed items."""
    if not value:
        return []
    parts = value.split(",") if isinstance(value, str) else value
    return [str(part).strip() for part in parts if str(part).strip()]


def default_database_url(instance_dir: Path = INSTANCE_DIR) -> str:
    """The embedded default database: a SQLite file under ``instance/`` (absolute path)."""
    return f"sqlite:///{(instance_dir / 'backstop.sqlite3').resolve()}"


def default_huey_url(instance_dir: Path = INSTANCE_DIR) -> str:
    """The embedded default queue: SqliteHuey in its own file under ``instance/``."""
    return f"sqlite:///{(instance_dir / 'huey.sqlite3').resolve()}"


def _int(env, name: str, default: int, *, positive: bool = False) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None
    return _in_range(name, value, raw, positive)


def _float(env, name: str, default: float, *, positive: bool = False) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number, got {raw!r}")
    return _in_range(name, value, raw, positive)


def _in_range(name: str, value, raw: str, positive: bool):
    # Counts, sizes, intervals and thresholds are never negative; some must be above zero.
    if positive and value <= 0:
        raise ConfigurationError(f"{name} must be greater than 0, got {raw!r}")
    if value < 0:
        raise ConfigurationError(f"{name} must not be negative, got {raw!r}")
    return value


def from_environment(env=None) -> dict:
    """Build the Flask config mapping from environment variables."""
    env = os.environ if env is None else env
    app_env = env.get("BACKSTOP_ENV", "production")
    return {
        "BACKSTOP_ENV": app_env,
        "SECRET_KEY": env.get("SECRET_KEY") or ("dev-only-not-secret" if app_env != "production" else None),
        "SQLALCHEMY_DATABASE_URI": env.get("DATABASE_URL") or default_database_url(),
        # PostgreSQL pool and timeouts (ignored on SQLite).
        "DATABASE_POOL_SIZE": _int(env, "DATABASE_POOL_SIZE", 10, positive=True),
        "DATABASE_MAX_OVERFLOW": _int(env, "DATABASE_MAX_OVERFLOW", 5),
        "DATABASE_POOL_TIMEOUT_SECONDS": _float(env, "DATABASE_POOL_TIMEOUT_SECONDS", 10.0, positive=True),
        "DATABASE_CONNECT_TIMEOUT_SECONDS": _int(env, "DATABASE_CONNECT_TIMEOUT_SECONDS", 5, positive=True),
        "DATABASE_STATEMENT_TIMEOUT_MS": _int(env, "DATABASE_STATEMENT_TIMEOUT_MS", 30_000),
        "HUEY_URL": env.get("HUEY_URL") or default_huey_url(),
        "HUEY_NAME": env.get("HUEY_NAME", "backstop"),
        "STRIPE_SECRET_KEY": env.get("STRIPE_SECRET_KEY"),
        "STRIPE_WEBHOOK_SECRET": env.get("STRIPE_WEBHOOK_SECRET"),
        "STRIPE_API_BASE": env.get("STRIPE_API_BASE"),
        "EMAIL_PROVIDERS": env.get("EMAIL_PROVIDERS", "smtp"),
        "EMAIL_FROM": env.get("EMAIL_FROM") or ("Backstop <noreply@localhost>" if app_env != "production" else None),
        "SMTP_URL": env.get("SMTP_URL", "smtp://127.0.0.1:8025"),
        # PEM bundle of CAs to trust (instead of the system's) for the SMTP relay's certificate.
        "SMTP_CA_FILE": env.get("SMTP_CA_FILE") or None,
        "RESEND_API_KEY": env.get("RESEND_API_KEY"),
        "RESEND_API_BASE": env.get("RESEND_API_BASE", "https://api.resend.com"),
        "POSTMARK_SERVER_TOKEN": env.get("POSTMARK_SERVER_TOKEN"),
        "POSTMARK_API_BASE": env.get("POSTMARK_API_BASE", "https://api.postmarkapp.com"),
        # Email delivery (webapp/services/email): timeouts, circuit breakers, rate limits, retry ladder.
        "EMAIL_TIMEOUT_SECONDS": _float(env, "EMAIL_TIMEOUT_SECONDS", 10.0),
        "EMAIL_CIRCUIT_THRESHOLD": _int(env, "EMAIL_CIRCUIT_THRESHOLD", 5),
        "EMAIL_CIRCUIT_COOLDOWN_SECONDS": _float(env, "EMAIL_CIRCUIT_COOLDOWN_SECONDS", 60.0),
        "EMAIL_RATE_PER_RECIPIENT_PER_MINUTE": _int(env, "EMAIL_RATE_PER_RECIPIENT_PER_MINUTE", 10),
        "EMAIL_RATE_GLOBAL_PER_MINUTE": _int(env, "EMAIL_RATE_GLOBAL_PER_MINUTE", 100),
        "EMAIL_RETRY_LADDER": env.get("EMAIL_RETRY_LADDER", ""),
        "SLACK_WEBHOOK_URL": env.get("SLACK_WEBHOOK_URL"),
        "PUBLIC_BASE_URL": env.get("PUBLIC_BASE_URL", "http://127.0.0.1:5000"),
        # Engine tuning.
        "RECONCILE_INTERVAL_SECONDS": _float(env, "RECONCILE_INTERVAL_SECONDS", 60.0, positive=True),
        "RECONCILE_BATCH_SIZE": _int(env, "RECONCILE_BATCH_SIZE", 500, positive=True),
        "RECONCILE_LEASE_SECONDS": _float(env, "RECONCILE_LEASE_SECONDS", 120.0, positive=True),
        "REDELIVER_AFTER_SECONDS": _float(env, "REDELIVER_AFTER_SECONDS", 60.0),
        "OPERATION_LEASE_SECONDS": _float(env, "OPERATION_LEASE_SECONDS", 300.0, positive=True),
        "WORKER_THREADS": _int(env, "WORKER_THREADS", 4, positive=True),
        "WORKER_SHUTDOWN_TIMEOUT": _float(env, "WORKER_SHUTDOWN_TIMEOUT", 30.0),
        "LOG_FORMAT": env.get("LOG_FORMAT", "text"),
        "BACKSTOP_HANDLER_MODULES": env.get("BACKSTOP_HANDLER_MODULES", ""),
        **admin_console_settings(env),
        **payments_settings(env),
        **monitoring_settings(env),
        "MISSING_SETTINGS": [name for name in REQUIRED_IN_PRODUCTION if not env.get(name)],
    }


def check_required(config: dict) -> None:
    """Fail fast, naming every missing setting, unless running in development or tests."""
    if config.get("BACKSTOP_ENV") in ("development", "test") or config.get("TESTING"):
        return
    missing = config.get("MISSING_SETTINGS") or []
    if missing:
        raise ConfigurationError(
            "missing required settings: "
            + ", ".join(missing)
            + " (set them in the environment, or BACKSTOP_ENV=development for local defaults)"
        )


# Health-page thresholds (seed 000's table, plus ours): (direction, warning, critical).
# "min" metrics turn amber below the warning value and red below the critical one; "max"
# metrics above them. Override each with HEALTH_<METRIC>_WARN / HEALTH_<METRIC>_CRIT.
HEALTH_THRESHOLD_DEFAULTS = {
    "email_delivery_rate": ("min", 95.0, 90.0),
    "webhook_success_rate": ("min", 99.0, 95.0),
    "dlq_unresolved": ("max", 10.0, 50.0),
    "avg_time_to_success": ("max", 600.0, 1800.0),
    "retry_success_rate": ("min", 80.0, 50.0),
    "queue_depth": ("max", 1000.0, 10000.0),
    "oldest_due_age": ("max", 300.0, 900.0),
}


# Health cards that show the number an alert watches, and that alert's setting prefix.
SHARED_WITH_ALERTS = {
    "email_delivery_rate": "ALERT_EMAIL_RATE",
    "webhook_success_rate": "ALERT_WEBHOOK_RATE",
    "dlq_unresolved": "ALERT_DLQ",
}


def admin_console_settings(env) -> dict:
    """The admin console's settings: cookies, CSRF, login throttling and health thresholds."""
    thresholds = {}
    for metric, (direction, warn, crit) in HEALTH_THRESHOLD_DEFAULTS.items():
        # One knob where alerts and cards watch the same number: an ALERT_* setting is also
        # the card's default, so the page turns red exactly when the alert fires.
        alert = SHARED_WITH_ALERTS.get(metric)
        if alert:
            warn = _float(env, f"{alert}_WARNING", warn)
            crit = _float(env, f"{alert}_CRITICAL", crit)
        thresholds[metric] = (
            direction,
            _float(env, f"HEALTH_{metric.upper()}_WARN", warn),
            _float(env, f"HEALTH_{metric.upper()}_CRIT", crit),
        )
    return {
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        # Unset: Secure whenever the request came over HTTPS; "1" forces it (behind a proxy).
        "SESSION_COOKIE_SECURE": env.get("SESSION_COOKIE_SECURE", "") in ("1", "true", "yes"),
        # The CSRF token lives as long as the session, so a page left open all day still works.
        "WTF_CSRF_TIME_LIMIT": None,
        "WTF_CSRF_CHECK_DEFAULT": False,
        # How many reverse proxies stand in front of the app and set X-Forwarded-For/-Proto/-Host/
        # -Port/-Prefix (0: trust none of those headers). With 1+, the client address (used by
        # the login throttle) and HTTPS (Secure cookies) come from the proxy's headers.
        "TRUSTED_PROXY_COUNT": _int(env, "TRUSTED_PROXY_COUNT", 0),
        "LOGIN_MAX_FAILURES": _int(env, "LOGIN_MAX_FAILURES", 5),
        "LOGIN_LOCK_MINUTES": _int(env, "LOGIN_LOCK_MINUTES", 15),
        "ADMIN_PAGE_SIZE": _int(env, "ADMIN_PAGE_SIZE", 50),
        "HEALTH_THRESHOLDS": thresholds,
    }


def payments_settings(env) -> dict:
    """Stripe intake and storefront API settings (limits, Stripe client timeouts, checkout URLs)."""
    return {
        "WEBHOOK_MAX_BYTES": _int(env, "WEBHOOK_MAX_BYTES", 1024 * 1024),
        "API_MAX_BYTES": _int(env, "API_MAX_BYTES", 64 * 1024),
        "STRIPE_TIMEOUT_SECONDS": _float(env, "STRIPE_TIMEOUT_SECONDS", 10.0),
        "STRIPE_CONNECT_TIMEOUT_SECONDS": _float(env, "STRIPE_CONNECT_TIMEOUT_SECONDS", 5.0),
        "STRIPE_MAX_NETWORK_RETRIES": _int(env, "STRIPE_MAX_NETWORK_RETRIES", 2),
        "STRIPE_CHECKOUT_SUCCESS_URL": env.get("STRIPE_CHECKOUT_SUCCESS_URL"),
        "STRIPE_CHECKOUT_CANCEL_URL": env.get("STRIPE_CHECKOUT_CANCEL_URL"),
        # Empty: 5 retries with exponential backoff; e.g. "1s, 5s, 30s, 5m, 30m" for a ladder.
        "WEBHOOK_RETRY_LADDER": env.get("WEBHOOK_RETRY_LADDER", ""),
    }


def monitoring_settings(env) -> dict:
    """Alerting, periodic maintenance jobs, retention and /metrics settings (issue 5)."""
    return {
        # Alerts: no more than one per type and key per window; Slack call timeout.
        "ALERT_DEDUPE_SECONDS": _float(env, "ALERT_DEDUPE_SECONDS", 900.0),
        "ALERT_SLACK_TIMEOUT_SECONDS": _float(env, "ALERT_SLACK_TIMEOUT_SECONDS", 10.0),
        # Thresholds (seed 000): unresolved dead letters above, success rates (%) below.
        "ALERT_DLQ_WARNING": _int(env, "ALERT_DLQ_WARNING", 10),
        "ALERT_DLQ_CRITICAL": _int(env, "ALERT_DLQ_CRITICAL", 50),
        "ALERT_EMAIL_RATE_WARNING": _float(env, "ALERT_EMAIL_RATE_WARNING", 95.0),
        "ALERT_EMAIL_RATE_CRITICAL": _float(env, "ALERT_EMAIL_RATE_CRITICAL", 90.0),
        "ALERT_WEBHOOK_RATE_WARNING": _float(env, "ALERT_WEBHOOK_RATE_WARNING", 99.0),
        "ALERT_WEBHOOK_RATE_CRITICAL": _float(env, "ALERT_WEBHOOK_RATE_CRITICAL", 95.0),
        "ALERT_FAILURE_RATE_WINDOW_SECONDS": _float(env, "ALERT_FAILURE_RATE_WINDOW_SECONDS", 3600.0),
        # Fewer finished operations than this in the window say nothing about a rate.
        "ALERT_FAILURE_RATE_MIN_SAMPLE": _int(env, "ALERT_FAILURE_RATE_MIN_SAMPLE", 20),
        # A job is stale when its heartbeat is older than this many of its own intervals.
        "JOB_STALE_AFTER_INTERVALS": _float(env, "JOB_STALE_AFTER_INTERVALS", 3.0),
        # Periodic jobs: interval and lease of each.
        "CHECKS_INTERVAL_SECONDS": _float(env, "CHECKS_INTERVAL_SECONDS", 60.0),
        "CHECKS_LEASE_SECONDS": _float(env, "CHECKS_LEASE_SECONDS", 120.0),
        "AUTO_REQUEUE_INTERVAL_SECONDS": _float(env, "AUTO_REQUEUE_INTERVAL_SECONDS", 300.0),
        "AUTO_REQUEUE_LEASE_SECONDS": _float(env, "AUTO_REQUEUE_LEASE_SECONDS", 300.0),
        "CLEANUP_INTERVAL_SECONDS": _float(env, "CLEANUP_INTERVAL_SECONDS", 3600.0),
        "CLEANUP_LEASE_SECONDS": _float(env, "CLEANUP_LEASE_SECONDS", 900.0),
        "DAILY_REPORT_INTERVAL_SECONDS": _float(env, "DAILY_REPORT_INTERVAL_SECONDS", 86400.0),
        "DAILY_REPORT_LEASE_SECONDS": _float(env, "DAILY_REPORT_LEASE_SECONDS", 300.0),
        # Auto-requeue: dead with a transient error for this long, once, below the attempt cap.
        "AUTO_REQUEUE_AFTER_SECONDS": _float(env, "AUTO_REQUEUE_AFTER_SECONDS", 86400.0),
        "AUTO_REQUEUE_MAX_ATTEMPTS": _int(env, "AUTO_REQUEUE_MAX_ATTEMPTS", 10),
        "AUTO_REQUEUE_KINDS": env.get("AUTO_REQUEUE_KINDS", "email,webhook,job"),
        "AUTO_REQUEUE_BATCH_SIZE": _int(env, "AUTO_REQUEUE_BATCH_SIZE", 100),
        # Cleanup retention (days) and batching: each batch is its own short transaction.
        "RETENTION_SUCCEEDED_DAYS": _float(env, "RETENTION_SUCCEEDED_DAYS", 30.0),
        "RETENTION_RESOLVED_DEAD_DAYS": _float(env, "RETENTION_RESOLVED_DEAD_DAYS", 90.0),
        "RETENTION_STRIPE_BODY_DAYS": _float(env, "RETENTION_STRIPE_BODY_DAYS", 30.0),
        "RETENTION_JOB_RUNS_DAYS": _float(env, "RETENTION_JOB_RUNS_DAYS", 14.0),
        "RETENTION_ALERTS_DAYS": _float(env, "RETENTION_ALERTS_DAYS", 90.0),
        "CLEANUP_BATCH_SIZE": _int(env, "CLEANUP_BATCH_SIZE", 200),
        # One run stops after this long; the next run carries on.
        "CLEANUP_MAX_SECONDS": _float(env, "CLEANUP_MAX_SECONDS", 120.0),
        # A breath between batches so writers waiting on the (SQLite) lock get their turn.
        "CLEANUP_BATCH_PAUSE_SECONDS": _float(env, "CLEANUP_BATCH_PAUSE_SECONDS", 0.01),
        # /metrics: when set, scrapes must send "Authorization: Bearer <token>".
        "METRICS_TOKEN": env.get("METRICS_TOKEN") or None,
    }

"""Configuration from the environment, parsed once into typed values (names from ARCHITECTURE.md's public contract).

Every setting is one row of :data:`SETTINGS`: its config key, its parser and its default.
The environment and the overrides given to ``create_app`` go through the same parsers, so
the app's config holds typed values whatever their source: counts as ``int``, durations and
thresholds as ``float`` (seconds, days or percent, as the name says), lists as tuples of
``str``, flags as ``bool``, retry ladders as tuples of seconds. Code reads ``config["NAME"]``:
no default and no parsing live anywhere else.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from webapp.domain.retry import parse_ladder

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

# The values EMAIL_PROVIDERS may list, in no particular order.
EMAIL_PROVIDER_NAMES = ("smtp", "resend", "postmark")


class ConfigurationError(RuntimeError):
    """Raised at start-up when required settings are missing or malformed."""


def default_database_url(instance_dir: Path = INSTANCE_DIR) -> str:
    """The embedded default database: a SQLite file under ``instance/`` (absolute path)."""
    return f"sqlite:///{(instance_dir / 'backstop.sqlite3').resolve()}"


def default_huey_url(instance_dir: Path = INSTANCE_DIR) -> str:
    """The embedded default queue: SqliteHuey in its own file under ``instance/``."""
    return f"sqlite:///{(instance_dir / 'huey.sqlite3').resolve()}"


# --- parsers: (setting name, raw value from the environment or an override) -> typed value -------

Parser = Callable[[str, object], object]


def text(name: str, raw: object) -> object:
    """Text settings (URLs, keys, names) are kept as given."""
    return raw


def integer(*, positive: bool = False) -> Parser:
    """A whole number, never negative; above zero with ``positive``."""

    def parse(name: str, raw: object) -> int:
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise ConfigurationError(f"{name} must be an integer, got {raw!r}")
        try:
            value = int(raw)
        except ValueError:
            raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None
        return _in_range(name, value, raw, positive)

    return parse


def number(*, positive: bool = False) -> Parser:
    """A finite number as a float, never negative; above zero with ``positive``."""

    def parse(name: str, raw: object) -> float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise ConfigurationError(f"{name} must be a number, got {raw!r}")
        try:
            value = float(raw)
        except ValueError:
            raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise ConfigurationError(f"{name} must be a finite number, got {raw!r}")
        return _in_range(name, value, raw, positive)

    return parse


def _in_range(name: str, value, raw, positive: bool):
    # Counts, sizes, intervals and thresholds are never negative; some must be above zero.
    if positive and value <= 0:
        raise ConfigurationError(f"{name} must be greater than 0, got {raw!r}")
    if value < 0:
        raise ConfigurationError(f"{name} must not be negative, got {raw!r}")
    return value


def names(*, lower: bool = False, known: tuple[str, ...] | None = None, what: str = "value") -> Parser:
    """A comma-separated list (or a list given by a caller): trimmed, non-empty, each once, in order.

    With ``known``, every item must be one of those (``what`` says what an item is, for the error).
    """

    def parse(name: str, raw: object) -> tuple[str, ...]:
        parts = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(parts, (list, tuple)):
            raise ConfigurationError(f"{name} must be a comma-separated list, got {raw!r}")
        items: list[str] = []
        for part in (str(part).strip() for part in parts):
            part = part.lower() if lower else part
            if known is not None and part and part not in known:
                raise ConfigurationError(f"{name} names an unknown {what} {part!r}; known: {', '.join(known)}")
            if part and part not in items:
                items.append(part)
        return tuple(items)

    return parse


def one_of(*choices: str) -> Parser:
    """One of ``choices`` (case-insensitive)."""

    def parse(name: str, raw: object) -> str:
        value = str(raw).strip().lower()
        if value not in choices:
            raise ConfigurationError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def flag(name: str, raw: object) -> bool:
    """On for ``1``, ``true`` or ``yes`` (or a bool given by a caller); off otherwise."""
    return raw if isinstance(raw, bool) else str(raw) in ("1", "true", "yes")


def ladder(name: str, raw: object) -> tuple[float, ...]:
    """A retry ladder such as ``"1s, 5s, 30s, 5m, 30m"`` as its rungs in seconds (blank: none)."""
    if isinstance(raw, str) and not raw.strip():
        return ()
    try:
        if isinstance(raw, str):
            return tuple(step.total_seconds() for step in parse_ladder(raw))
        return tuple(NUMBER(name, step) for step in raw)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{name}: {exc}") from None


def base_url(name: str, raw: object) -> str:
    """An absolute URL that paths are appended to: without its trailing slash."""
    return str(raw).rstrip("/")


INT, POSITIVE_INT = integer(), integer(positive=True)
NUMBER, POSITIVE_NUMBER = number(), number(positive=True)
PROVIDER_LIST = names(lower=True, known=EMAIL_PROVIDER_NAMES, what="provider")


# --- the settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting: its config key, how its raw value is parsed, and its (typed) default.

    An unset or empty value takes the default; with ``keep_blank`` an empty value is parsed
    (and so kept) instead. ``env`` names the environment variable when it is not the key.
    """

    key: str
    parse: Parser
    default: object = None  # a value, or a function of the settings parsed before it
    env: str = ""
    keep_blank: bool = False

    @property
    def variable(self) -> str:
        """The environment variable that sets it."""
        return self.env or self.key

    def value(self, raw: object, parsed: Mapping) -> object:
        """The typed value for ``raw``; ``parsed`` holds the settings before this one."""
        if raw is None or (raw == "" and not self.keep_blank):
            return self.default(parsed) if callable(self.default) else self.default
        return self.parse(self.variable, raw)


def _unless_production(value: str) -> Callable[[Mapping], str | None]:
    """A local default for development and tests; production must set the value."""
    return lambda parsed: value if parsed["BACKSTOP_ENV"] != "production" else None


def _checkout_page(path: str) -> Callable[[Mapping], str]:
    return lambda parsed: f"{parsed['PUBLIC_BASE_URL']}/checkout/{path}?purchase_id={{purchase_id}}"


CORE = (
    Setting("BACKSTOP_ENV", text, "production", keep_blank=True),
    Setting("SECRET_KEY", text, _unless_production("dev-only-not-secret")),
    Setting("SQLALCHEMY_DATABASE_URI", text, lambda parsed: default_database_url(), env="DATABASE_URL"),
    # PostgreSQL pool and timeouts (ignored on SQLite).
    Setting("DATABASE_POOL_SIZE", POSITIVE_INT, 10),
    Setting("DATABASE_MAX_OVERFLOW", INT, 5),
    Setting("DATABASE_POOL_TIMEOUT_SECONDS", POSITIVE_NUMBER, 10.0),
    Setting("DATABASE_CONNECT_TIMEOUT_SECONDS", POSITIVE_INT, 5),
    Setting("DATABASE_STATEMENT_TIMEOUT_MS", INT, 30_000),
    Setting("HUEY_URL", text, lambda parsed: default_huey_url()),
    Setting("HUEY_NAME", text, "backstop", keep_blank=True),
    # Connect and read timeout towards Redis: a ring to a stopped or frozen queue fails within it.
    Setting("HUEY_TIMEOUT_SECONDS", POSITIVE_NUMBER, 2.0),
    Setting("PUBLIC_BASE_URL", base_url, "http://127.0.0.1:5000"),
    Setting("LOG_FORMAT", text, "text", keep_blank=True),
    Setting("BACKSTOP_HANDLER_MODULES", names(), ()),
)

ENGINE = (
    Setting("RECONCILE_INTERVAL_SECONDS", POSITIVE_NUMBER, 60.0),
    Setting("RECONCILE_BATCH_SIZE", POSITIVE_INT, 500),
    Setting("RECONCILE_LEASE_SECONDS", POSITIVE_NUMBER, 120.0),
    Setting("REDELIVER_AFTER_SECONDS", NUMBER, 60.0),
    Setting("OPERATION_LEASE_SECONDS", POSITIVE_NUMBER, 300.0),
    Setting("WORKER_THREADS", POSITIVE_INT, 4),
    Setting("WORKER_SHUTDOWN_TIMEOUT", NUMBER, 30.0),
    # Consumers' heartbeats: every few seconds; a consumer silent this long is lost.
    Setting("CONSUMER_HEARTBEAT_SECONDS", POSITIVE_NUMBER, 5.0),
    Setting("CONSUMER_LOST_AFTER_SECONDS", POSITIVE_NUMBER, 30.0),
)

PAYMENTS = (
    Setting("STRIPE_SECRET_KEY", text),
    # Several secrets during a rotation.
    Setting("STRIPE_WEBHOOK_SECRET", names(), ()),
    Setting("STRIPE_API_BASE", text),
    Setting("STRIPE_TIMEOUT_SECONDS", POSITIVE_NUMBER, 10.0),
    Setting("STRIPE_CONNECT_TIMEOUT_SECONDS", POSITIVE_NUMBER, 5.0),
    Setting("STRIPE_MAX_NETWORK_RETRIES", INT, 2),
    Setting("STRIPE_CHECKOUT_SUCCESS_URL", text, _checkout_page("success")),
    Setting("STRIPE_CHECKOUT_CANCEL_URL", text, _checkout_page("cancelled")),
    Setting("WEBHOOK_MAX_BYTES", POSITIVE_INT, 1024 * 1024),
    # Empty: 5 retries with exponential backoff; e.g. "1s, 5s, 30s, 5m, 30m" for a ladder.
    Setting("WEBHOOK_RETRY_LADDER", ladder, ()),
    Setting("API_MAX_BYTES", POSITIVE_INT, 64 * 1024),
    # An Idempotency-Key reserved this long ago with no answer belongs to a request that died
    # (a database outage can stop it from releasing the key): another request may take it over.
    Setting("IDEMPOTENCY_ABANDONED_AFTER_SECONDS", POSITIVE_NUMBER, 120.0),
    # Every other route (admin pages and log-in, admin API, health, metrics): 413 above this.
    Setting("REQUEST_MAX_BYTES", POSITIVE_INT, 256 * 1024),
)

EMAIL = (
    Setting("EMAIL_FROM", text, _unless_production("Backstop <noreply@localhost>")),
    # Empty (not unset): no provider at all, so every send fails and retries until one is named.
    Setting("EMAIL_PROVIDERS", PROVIDER_LIST, ("smtp",), keep_blank=True),
    Setting("SMTP_URL", text, "smtp://127.0.0.1:8025", keep_blank=True),
    # PEM bundle of CAs to trust (instead of the system's) for the SMTP relay's certificate.
    Setting("SMTP_CA_FILE", text),
    Setting("RESEND_API_KEY", text),
    Setting("RESEND_API_BASE", text, "https://api.resend.com"),
    Setting("POSTMARK_SERVER_TOKEN", text),
    Setting("POSTMARK_API_BASE", text, "https://api.postmarkapp.com"),
    # Timeouts, circuit breakers, rate limits (0: no limit), retry ladder (empty: 3 exponential retries).
    Setting("EMAIL_TIMEOUT_SECONDS", POSITIVE_NUMBER, 10.0),
    Setting("EMAIL_CIRCUIT_THRESHOLD", POSITIVE_INT, 5),
    Setting("EMAIL_CIRCUIT_COOLDOWN_SECONDS", POSITIVE_NUMBER, 60.0),
    Setting("EMAIL_RATE_PER_RECIPIENT_PER_MINUTE", INT, 10),
    Setting("EMAIL_RATE_GLOBAL_PER_MINUTE", INT, 100),
    Setting("EMAIL_RETRY_LADDER", ladder, ()),
)

ADMIN_CONSOLE = (
    # Unset: Secure whenever the request came over HTTPS; "1" forces it (behind a proxy).
    Setting("SESSION_COOKIE_SECURE", flag, False),
    # How many reverse proxies stand in front of the app and set X-Forwarded-For/-Proto/-Host/
    # -Port/-Prefix (0: trust none of those headers). With 1+, the client address (used by
    # the login throttle) and HTTPS (Secure cookies) come from the proxy's headers.
    Setting("TRUSTED_PROXY_COUNT", INT, 0),
    Setting("LOGIN_MAX_FAILURES", INT, 5),
    # Failures from one address, whatever the emails, within one lock window (0: no such limit).
    Setting("LOGIN_MAX_FAILURES_PER_ADDRESS", INT, 20),
    Setting("LOGIN_LOCK_MINUTES", INT, 15),
    Setting("ADMIN_PAGE_SIZE", INT, 50),
    # Server-side sessions: unused this long, or open this long in all, a session ends.
    Setting("ADMIN_SESSION_IDLE_MINUTES", POSITIVE_NUMBER, 60.0),
    Setting("ADMIN_SESSION_MAX_HOURS", POSITIVE_NUMBER, 12.0),
)

MONITORING = (
    Setting("SLACK_WEBHOOK_URL", text),
    # Alerts: no more than one per type and key per window; Slack call timeout.
    Setting("ALERT_DEDUPE_SECONDS", NUMBER, 900.0),
    Setting("ALERT_SLACK_TIMEOUT_SECONDS", NUMBER, 10.0),
    # More channels: email to these admin addresses (through EMAIL_PROVIDERS), and a JSON webhook
    # signed with the shared secret, or PagerDuty Events API v2 events (format "pagerduty").
    Setting("ALERT_EMAIL_TO", names(lower=True), ()),
    Setting("ALERT_WEBHOOK_URL", text),
    Setting("ALERT_WEBHOOK_SECRET", text),
    Setting("ALERT_WEBHOOK_FORMAT", one_of("json", "pagerduty"), "json"),
    Setting("ALERT_WEBHOOK_ROUTING_KEY", text),
    Setting("ALERT_WEBHOOK_TIMEOUT_SECONDS", POSITIVE_NUMBER, 10.0),
    # Thresholds (seed 000): unresolved dead letters above, success rates (%) below.
    Setting("ALERT_DLQ_WARNING", INT, 10),
    Setting("ALERT_DLQ_CRITICAL", INT, 50),
    Setting("ALERT_EMAIL_RATE_WARNING", NUMBER, 95.0),
    Setting("ALERT_EMAIL_RATE_CRITICAL", NUMBER, 90.0),
    Setting("ALERT_WEBHOOK_RATE_WARNING", NUMBER, 99.0),
    Setting("ALERT_WEBHOOK_RATE_CRITICAL", NUMBER, 95.0),
    Setting("ALERT_FAILURE_RATE_WINDOW_SECONDS", NUMBER, 3600.0),
    # Backlog (seed 003: alert above 100 waiting, and above 2.0 average attempts): due operations
    # waiting, the oldest due one's age (seconds), average attempts of operations finished in the
    # failure-rate window. Also the health cards' defaults.
    Setting("ALERT_QUEUE_DEPTH_WARNING", INT, 100),
    Setting("ALERT_QUEUE_DEPTH_CRITICAL", INT, 1000),
    Setting("ALERT_OLDEST_DUE_AGE_WARNING", NUMBER, 300.0),
    Setting("ALERT_OLDEST_DUE_AGE_CRITICAL", NUMBER, 900.0),
    Setting("ALERT_AVG_ATTEMPTS_WARNING", NUMBER, 2.0),
    Setting("ALERT_AVG_ATTEMPTS_CRITICAL", NUMBER, 3.0),
    # Fewer finished operations than this in the window say nothing about a rate.
    Setting("ALERT_FAILURE_RATE_MIN_SAMPLE", INT, 20),
    # A job is stale when its heartbeat is older than this many of its own intervals.
    Setting("JOB_STALE_AFTER_INTERVALS", NUMBER, 3.0),
    # Periodic jobs: interval and lease of each.
    Setting("CHECKS_INTERVAL_SECONDS", NUMBER, 60.0),
    Setting("CHECKS_LEASE_SECONDS", NUMBER, 120.0),
    Setting("AUTO_REQUEUE_INTERVAL_SECONDS", NUMBER, 300.0),
    Setting("AUTO_REQUEUE_LEASE_SECONDS", NUMBER, 300.0),
    Setting("CLEANUP_INTERVAL_SECONDS", NUMBER, 3600.0),
    Setting("CLEANUP_LEASE_SECONDS", NUMBER, 900.0),
    Setting("DAILY_REPORT_INTERVAL_SECONDS", NUMBER, 86400.0),
    Setting("DAILY_REPORT_LEASE_SECONDS", NUMBER, 300.0),
    # Auto-requeue: dead with a transient error for this long, once, below the attempt cap.
    Setting("AUTO_REQUEUE_AFTER_SECONDS", NUMBER, 86400.0),
    Setting("AUTO_REQUEUE_MAX_ATTEMPTS", INT, 10),
    Setting("AUTO_REQUEUE_KINDS", names(), ("email", "webhook", "job")),
    Setting("AUTO_REQUEUE_BATCH_SIZE", INT, 100),
    # Cleanup retention (days) and batching: each batch is its own short transaction.
    Setting("RETENTION_SUCCEEDED_DAYS", NUMBER, 30.0),
    Setting("RETENTION_RESOLVED_DEAD_DAYS", NUMBER, 90.0),
    Setting("RETENTION_STRIPE_BODY_DAYS", NUMBER, 30.0),
    Setting("RETENTION_JOB_RUNS_DAYS", NUMBER, 14.0),
    Setting("RETENTION_ALERTS_DAYS", NUMBER, 90.0),
    Setting("RETENTION_CONSUMERS_HOURS", NUMBER, 24.0),
    # "Retry everything matching": an unconfirmed preview expires; finished jobs are kept this long.
    Setting("BULK_DRAFT_EXPIRE_MINUTES", POSITIVE_NUMBER, 60.0),
    Setting("RETENTION_BULK_JOBS_DAYS", NUMBER, 30.0),
    # Failed-login counts untouched this long (and not locked) are forgotten.
    Setting("RETENTION_FAILED_LOGINS_DAYS", NUMBER, 7.0),
    # The audit log is append-only; cleanup deletes entries only once they are this old.
    Setting("RETENTION_AUDIT_DAYS", POSITIVE_NUMBER, 365.0),
    Setting("CLEANUP_BATCH_SIZE", POSITIVE_INT, 200),
    # One run stops after this long; the next run carries on.
    Setting("CLEANUP_MAX_SECONDS", NUMBER, 120.0),
    # A breath between batches so writers waiting on the (SQLite) lock get their turn.
    Setting("CLEANUP_BATCH_PAUSE_SECONDS", NUMBER, 0.01),
    # /metrics: when set, scrapes must send "Authorization: Bearer <token>".
    Setting("METRICS_TOKEN", text),
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
    "queue_depth": ("max", 100.0, 1000.0),
    "oldest_due_age": ("max", 300.0, 900.0),
    "avg_attempts": ("max", 2.0, 3.0),
}

# Health cards that show the number an alert watches, and that alert's setting prefix.
SHARED_WITH_ALERTS = {
    "email_delivery_rate": "ALERT_EMAIL_RATE",
    "webhook_success_rate": "ALERT_WEBHOOK_RATE",
    "dlq_unresolved": "ALERT_DLQ",
    "queue_depth": "ALERT_QUEUE_DEPTH",
    "oldest_due_age": "ALERT_OLDEST_DUE_AGE",
    "avg_attempts": "ALERT_AVG_ATTEMPTS",
}


def _same_as(key: str) -> Callable[[Mapping], float]:
    return lambda parsed: float(parsed[key])


def _health_settings() -> tuple[Setting, ...]:
    settings = []
    for metric, (_, warn, crit) in HEALTH_THRESHOLD_DEFAULTS.items():
        # One knob where alerts and cards watch the same number: an ALERT_* setting is also
        # the card's default, so the page turns red exactly when the alert fires.
        alert = SHARED_WITH_ALERTS.get(metric)
        for suffix, default, alert_suffix in (("WARN", warn, "WARNING"), ("CRIT", crit, "CRITICAL")):
            if alert:
                default = _same_as(f"{alert}_{alert_suffix}")
            settings.append(Setting(f"HEALTH_{metric.upper()}_{suffix}", NUMBER, default))
    return tuple(settings)


# Every setting, in the order they are parsed: a default may depend on settings above it.
SETTINGS: tuple[Setting, ...] = CORE + ENGINE + PAYMENTS + EMAIL + ADMIN_CONSOLE + MONITORING + _health_settings()

# Fixed Flask and Flask-WTF settings of the admin console (overrides may still replace them).
FIXED = {
    "SESSION_COOKIE_HTTPONLY": True,
    "SESSION_COOKIE_SAMESITE": "Lax",
    # The CSRF token lives as long as the session, so a page left open all day still works.
    "WTF_CSRF_TIME_LIMIT": None,
    "WTF_CSRF_CHECK_DEFAULT": False,
}


def default_of(key: str) -> object:
    """The fixed default of setting ``key``, for a library default that must not drift from it."""
    [setting] = [setting for setting in SETTINGS if setting.key == key and not callable(setting.default)]
    return setting.default


def load(env: Mapping | None = None, overrides: Mapping | None = None) -> dict:
    """The Flask config: each setting from ``overrides`` (by key), else the environment, else its default.

    Both sources go through the setting's parser; other overrides (Flask's and extensions'
    own settings) are passed through as given.
    """
    env = os.environ if env is None else env
    rest = dict(overrides or {})
    config = dict(FIXED)
    for setting in SETTINGS:
        raw = rest.pop(setting.key) if setting.key in rest else env.get(setting.variable)
        config[setting.key] = setting.value(raw, config)
    config["HEALTH_THRESHOLDS"] = {
        metric: (direction, config[f"HEALTH_{metric.upper()}_WARN"], config[f"HEALTH_{metric.upper()}_CRIT"])
        for metric, (direction, _, _) in HEALTH_THRESHOLD_DEFAULTS.items()
    }
    pagerduty = config["ALERT_WEBHOOK_FORMAT"] == "pagerduty" and config["ALERT_WEBHOOK_URL"]
    if pagerduty and not config["ALERT_WEBHOOK_ROUTING_KEY"]:
        raise ConfigurationError("ALERT_WEBHOOK_FORMAT=pagerduty needs ALERT_WEBHOOK_ROUTING_KEY")
    config["MISSING_SETTINGS"] = [name for name in REQUIRED_IN_PRODUCTION if not env.get(name)]
    config.update(rest)
    return config


def check_required(config: Mapping) -> None:
    """Fail fast, naming every missing setting, unless running in development or tests."""
    if config["BACKSTOP_ENV"] in ("development", "test") or config.get("TESTING"):
        return
    missing = config["MISSING_SETTINGS"]
    if missing:
        raise ConfigurationError(
            "missing required settings: "
            + ", ".join(missing)
            + " (set them in the environment, or BACKSTOP_ENV=development for local defaults)"
        )

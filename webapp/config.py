"""Configuration from the environment (names from ARCHITECTURE.md's public contract)."""

from __future__ import annotations

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


def default_database_url(instance_dir: Path = INSTANCE_DIR) -> str:
    """The embedded default database: a SQLite file under ``instance/`` (absolute path)."""
    return f"sqlite:///{(instance_dir / 'backstop.sqlite3').resolve()}"


def default_huey_url(instance_dir: Path = INSTANCE_DIR) -> str:
    """The embedded default queue: SqliteHuey in its own file under ``instance/``."""
    return f"sqlite:///{(instance_dir / 'huey.sqlite3').resolve()}"


def _int(env, name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None


def _float(env, name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None


def from_environment(env=None) -> dict:
    """Build the Flask config mapping from environment variables."""
    env = os.environ if env is None else env
    app_env = env.get("BACKSTOP_ENV", "production")
    return {
        "BACKSTOP_ENV": app_env,
        "SECRET_KEY": env.get("SECRET_KEY") or ("dev-only-not-secret" if app_env != "production" else None),
        "SQLALCHEMY_DATABASE_URI": env.get("DATABASE_URL") or default_database_url(),
        "HUEY_URL": env.get("HUEY_URL") or default_huey_url(),
        "HUEY_NAME": env.get("HUEY_NAME", "backstop"),
        "STRIPE_SECRET_KEY": env.get("STRIPE_SECRET_KEY"),
        "STRIPE_WEBHOOK_SECRET": env.get("STRIPE_WEBHOOK_SECRET"),
        "STRIPE_API_BASE": env.get("STRIPE_API_BASE"),
        "EMAIL_PROVIDERS": env.get("EMAIL_PROVIDERS", "smtp"),
        "EMAIL_FROM": env.get("EMAIL_FROM") or ("Backstop <noreply@localhost>" if app_env != "production" else None),
        "SMTP_URL": env.get("SMTP_URL", "smtp://127.0.0.1:8025"),
        "RESEND_API_KEY": env.get("RESEND_API_KEY"),
        "RESEND_API_BASE": env.get("RESEND_API_BASE", "https://api.resend.com"),
        "POSTMARK_SERVER_TOKEN": env.get("POSTMARK_SERVER_TOKEN"),
        "POSTMARK_API_BASE": env.get("POSTMARK_API_BASE", "https://api.postmarkapp.com"),
        "SLACK_WEBHOOK_URL": env.get("SLACK_WEBHOOK_URL"),
        "PUBLIC_BASE_URL": env.get("PUBLIC_BASE_URL", "http://127.0.0.1:5000"),
        # Engine tuning.
        "RECONCILE_INTERVAL_SECONDS": _float(env, "RECONCILE_INTERVAL_SECONDS", 60.0),
        "RECONCILE_BATCH_SIZE": _int(env, "RECONCILE_BATCH_SIZE", 500),
        "RECONCILE_LEASE_SECONDS": _float(env, "RECONCILE_LEASE_SECONDS", 120.0),
        "REDELIVER_AFTER_SECONDS": _float(env, "REDELIVER_AFTER_SECONDS", 60.0),
        "OPERATION_LEASE_SECONDS": _float(env, "OPERATION_LEASE_SECONDS", 300.0),
        "WORKER_THREADS": _int(env, "WORKER_THREADS", 4),
        "WORKER_SHUTDOWN_TIMEOUT": _float(env, "WORKER_SHUTDOWN_TIMEOUT", 30.0),
        "LOG_FORMAT": env.get("LOG_FORMAT", "text"),
        "BACKSTOP_HANDLER_MODULES": env.get("BACKSTOP_HANDLER_MODULES", ""),
        "MISSING_SETTINGS": [name for name in REQUIRED_IN_PRODUCTION if not env.get(name)],
    }


def check_required(config: dict) -> None:
    """Fail fast, naming every missing setting, unless running in development or tests."""
    if config.get("BACKSTOP_ENV") in ("development", "test") or config.get("TESTING"):
        return
    missing = config.get("MISSING_SETTINGS") or []
    if missing:
        raise ConfigurationError(
            "missing required settings: " + ", ".join(missing)
            + " (set them in the environment, or BACKSTOP_ENV=development for local defaults)"
        )

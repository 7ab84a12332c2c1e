"""Configuration from the environment: fail fast in production, embedded defaults in development."""

from __future__ import annotations

from pathlib import Path

import pytest
from huey import RedisHuey, SqliteHuey

import tasks
from tasks.queue import QueueConfigurationError, huey_from_url
from webapp import create_app
from webapp.config import REQUIRED_IN_PRODUCTION, ConfigurationError

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = {
    "SECRET_KEY": "a-long-random-secret-value",
    "STRIPE_SECRET_KEY": "sk_test_123",
    "STRIPE_WEBHOOK_SECRET": "whsec_456",
    "EMAIL_FROM": "Backstop <noreply@example.com>",
}


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean environment: no Backstop settings at all, run from an unrelated directory."""
    for name in (*REQUIRED_IN_PRODUCTION, "BACKSTOP_ENV", "BACKSTOP_HANDLER_MODULES", "SMTP_URL", "EMAIL_PROVIDERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)

    def set_env(**values):
        for name, value in values.items():
            monkeypatch.setenv(name, str(value))

    return set_env


@pytest.mark.parametrize("backstop_env", [None, "production", "staging"])
def test_outside_development_every_missing_setting_is_named(env, backstop_env):
    if backstop_env:
        env(BACKSTOP_ENV=backstop_env)

    with pytest.raises(ConfigurationError) as raised:
        create_app()

    message = str(raised.value)
    for name in (
        "SECRET_KEY",
        "DATABASE_URL",
        "HUEY_URL",
        "STRIPE_SECRET_KEY",
        "STRIPE_WEBHOOK_SECRET",
        "EMAIL_FROM",
        *REQUIRED_IN_PRODUCTION,
    ):
        assert name in message


def test_only_the_missing_settings_are_named_and_no_secret_is_shown(env, tmp_path):
    env(
        BACKSTOP_ENV="production",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        HUEY_URL=f"sqlite:///{tmp_path / 'huey.sqlite3'}",
        **{k: v for k, v in PRODUCTION.items() if k != "STRIPE_WEBHOOK_SECRET"},
    )

    with pytest.raises(ConfigurationError) as raised:
        create_app()

    message = str(raised.value)
    assert "STRIPE_WEBHOOK_SECRET" in message
    assert "SECRET_KEY," not in message and "DATABASE_URL" not in message and "EMAIL_FROM" not in message
    assert all(value not in message for value in PRODUCTION.values())


def test_production_with_every_setting_starts(env, tmp_path):
    env(
        BACKSTOP_ENV="production",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        HUEY_URL=f"sqlite:///{tmp_path / 'huey.sqlite3'}",
        **PRODUCTION,
    )

    app = create_app()

    assert app.config["SECRET_KEY"] == PRODUCTION["SECRET_KEY"]
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'db.sqlite3'}"


def test_development_starts_on_embedded_defaults_with_absolute_paths(env):
    env(BACKSTOP_ENV="development")

    app = create_app()

    database = app.config["SQLALCHEMY_DATABASE_URI"]
    queue = app.config["HUEY_URL"]
    assert database.startswith("sqlite:///") and queue.startswith("sqlite:///")
    database_path, queue_path = Path(database[len("sqlite:///") :]), Path(queue[len("sqlite:///") :])
    # Absolute, under the project's instance/ folder, whatever the working directory; two files.
    assert database_path.is_absolute() and queue_path.is_absolute()
    assert database_path.parent == queue_path.parent == ROOT / "instance"
    assert database_path != queue_path
    assert app.config["SECRET_KEY"] and app.config["EMAIL_FROM"]
    assert app.config["BACKSTOP_ENV"] == "development"


def test_the_test_environment_also_starts_on_defaults(env):
    env(BACKSTOP_ENV="test")
    assert create_app().config["SQLALCHEMY_DATABASE_URI"].endswith("/instance/backstop.sqlite3")


@pytest.mark.parametrize(
    "name, raw, complaint",
    [
        ("RECONCILE_INTERVAL_SECONDS", "soon", "must be a number"),
        ("RECONCILE_INTERVAL_SECONDS", "0", "greater than 0"),
        ("RECONCILE_INTERVAL_SECONDS", "nan", "finite"),
        ("OPERATION_LEASE_SECONDS", "inf", "finite"),
        ("RECONCILE_LEASE_SECONDS", "-5", "greater than 0"),
        ("REDELIVER_AFTER_SECONDS", "-1", "must not be negative"),
        ("WORKER_THREADS", "2.5", "must be an integer"),
        ("WORKER_THREADS", "0", "greater than 0"),
        ("RECONCILE_BATCH_SIZE", "many", "must be an integer"),
    ],
)
def test_bad_numbers_give_a_clear_error(env, name, raw, complaint):
    env(BACKSTOP_ENV="development", **{name: raw})

    with pytest.raises(ConfigurationError) as raised:
        create_app()

    assert name in str(raised.value) and complaint in str(raised.value) and repr(raw) in str(raised.value)


def test_good_numbers_are_parsed(env):
    env(BACKSTOP_ENV="development", RECONCILE_INTERVAL_SECONDS="2.5", WORKER_THREADS="8", REDELIVER_AFTER_SECONDS="0")
    config = create_app().config
    assert (config["RECONCILE_INTERVAL_SECONDS"], config["WORKER_THREADS"], config["REDELIVER_AFTER_SECONDS"]) == (
        2.5,
        8,
        0.0,
    )


# --- HUEY_URL ---------------------------------------------------------------------------------


def test_sqlite_huey_url(tmp_path):
    path = tmp_path / "nested" / "queue.sqlite3"
    huey = huey_from_url(f"sqlite:///{path}", name="q-test")
    assert isinstance(huey, SqliteHuey)
    assert huey.name == "q-test" and huey.storage.filename == str(path)
    assert path.parent.is_dir()  # the folder is made on demand


def test_redis_huey_url_is_lazy_and_keeps_host_port_and_db():
    # Nothing listens on port 1; building the instance must not connect.
    huey = huey_from_url("redis://127.0.0.1:1/3", name="q-redis")
    assert isinstance(huey, RedisHuey)
    kwargs = huey.storage.pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", 1, 3)
    # A dead Redis must fail a ring fast, so the caller's commit is not held up.
    assert kwargs["socket_connect_timeout"] <= 5


@pytest.mark.parametrize(
    "url", ["amqp://guest@127.0.0.1//", "postgresql://x/y", "", "/var/lib/huey.db", "sqlite://", "sqlite:///"]
)
def test_bad_huey_url_is_refused_with_a_reason(url):
    with pytest.raises(QueueConfigurationError) as raised:
        huey_from_url(url)
    assert "HUEY_URL" in str(raised.value)


def test_bad_huey_url_fails_at_start_up(env):
    env(BACKSTOP_ENV="development", HUEY_URL="amqp://127.0.0.1/")
    app = create_app()
    with pytest.raises(QueueConfigurationError):
        tasks.bind(app)


def test_alert_thresholds_are_the_health_cards_defaults_unless_overridden(env):
    env(BACKSTOP_ENV="test", ALERT_EMAIL_RATE_WARNING=97, ALERT_DLQ_CRITICAL=80, HEALTH_DLQ_UNRESOLVED_WARN=3)
    thresholds = create_app().config["HEALTH_THRESHOLDS"]
    assert thresholds["email_delivery_rate"] == ("min", 97.0, 90.0)
    assert thresholds["dlq_unresolved"] == ("max", 3.0, 80.0)
    assert thresholds["webhook_success_rate"] == ("min", 99.0, 95.0)

"""Configuration from the environment: fail fast in production, embedded defaults in development."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from huey import RedisHuey, SqliteHuey

import tasks
from tasks.queue import QueueConfigurationError, huey_from_url
from webapp import create_app
from webapp.config import REQUIRED_IN_PRODUCTION, SETTINGS, ConfigurationError, load
from webapp.services.monitoring import alerts

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
        # Zero where zero means nothing: a timeout, a size limit, a circuit threshold, a batch.
        ("EMAIL_TIMEOUT_SECONDS", "0", "greater than 0"),
        ("EMAIL_CIRCUIT_THRESHOLD", "0", "greater than 0"),
        ("STRIPE_TIMEOUT_SECONDS", "0", "greater than 0"),
        ("WEBHOOK_MAX_BYTES", "0", "greater than 0"),
        ("API_MAX_BYTES", "0", "greater than 0"),
        ("CLEANUP_BATCH_SIZE", "0", "greater than 0"),
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
    # A dead or frozen Redis must fail a ring fast, so the request that rang is not held up.
    assert kwargs["socket_connect_timeout"] == kwargs["socket_timeout"] == 2.0
    # The consumer's blocking read ends before the socket's timeout would break it.
    assert huey.storage.read_timeout < kwargs["socket_timeout"]
    assert huey_from_url("redis://127.0.0.1:1/3", name="q", timeout=0.5).storage.read_timeout == 0.25


@pytest.mark.parametrize(
    "url", ["amqp://guest@127.0.0.1//", "postgresql://x/y", "", "/var/lib/huey.db", "sqlite://", "sqlite:///"]
)
def test_bad_huey_url_is_refused_with_a_reason(url):
    with pytest.raises(QueueConfigurationError) as raised:
        huey_from_url(url, name="q-bad")
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


# --- typed values, whatever their source --------------------------------------------------------

# Raw text as an operator writes it, and the typed value the app's config holds.
RAW = {
    "WORKER_THREADS": "8",
    "REDELIVER_AFTER_SECONDS": "2.5",
    "EMAIL_RATE_PER_RECIPIENT_PER_MINUTE": "3",
    "EMAIL_PROVIDERS": " Resend, smtp,resend ",
    "AUTO_REQUEUE_KINDS": "email, job",
    "STRIPE_WEBHOOK_SECRET": "whsec_old, whsec_new",
    "BACKSTOP_HANDLER_MODULES": "tests.support.handlers",
    "EMAIL_RETRY_LADDER": "200ms, 5s, 1m",
    "WEBHOOK_RETRY_LADDER": "1s",
    "SESSION_COOKIE_SECURE": "1",
    "PUBLIC_BASE_URL": "https://shop.example/",
    "ALERT_DLQ_WARNING": "7",
}
TYPED = {
    "WORKER_THREADS": 8,
    "REDELIVER_AFTER_SECONDS": 2.5,
    "EMAIL_RATE_PER_RECIPIENT_PER_MINUTE": 3,
    "EMAIL_PROVIDERS": ("resend", "smtp"),
    "AUTO_REQUEUE_KINDS": ("email", "job"),
    "STRIPE_WEBHOOK_SECRET": ("whsec_old", "whsec_new"),
    "BACKSTOP_HANDLER_MODULES": ("tests.support.handlers",),
    "EMAIL_RETRY_LADDER": (0.2, 5.0, 60.0),
    "WEBHOOK_RETRY_LADDER": (1.0,),
    "SESSION_COOKIE_SECURE": True,
    "PUBLIC_BASE_URL": "https://shop.example",
    "ALERT_DLQ_WARNING": 7,
    # Defaults that follow other settings follow them from either source.
    "STRIPE_CHECKOUT_SUCCESS_URL": "https://shop.example/checkout/success?purchase_id={purchase_id}",
    "STRIPE_CHECKOUT_CANCEL_URL": "https://shop.example/checkout/cancelled?purchase_id={purchase_id}",
    "HEALTH_DLQ_UNRESOLVED_WARN": 7.0,
}


@pytest.mark.parametrize("source", ["environment", "overrides", "typed overrides"])
def test_settings_are_parsed_alike_from_the_environment_and_from_overrides(env, source):
    if source == "environment":
        env(BACKSTOP_ENV="development", **RAW)
        config = create_app().config
    else:
        env(BACKSTOP_ENV="development")
        overrides = RAW if source == "overrides" else {key: TYPED[key] for key in RAW}
        config = create_app(overrides).config

    assert {key: config[key] for key in TYPED} == TYPED
    assert {key: type(config[key]) for key in TYPED} == {key: type(value) for key, value in TYPED.items()}
    assert config["HEALTH_THRESHOLDS"]["dlq_unresolved"] == ("max", 7.0, 50.0)


def test_every_default_is_a_typed_value(env):
    env(BACKSTOP_ENV="development")
    config = create_app().config
    for setting in SETTINGS:
        value = config[setting.key]
        if setting.default is not None and not callable(setting.default):
            assert type(value) is type(setting.default), setting.key
        if isinstance(value, tuple):
            assert all(isinstance(item, (str, float)) for item in value), setting.key
        assert value is None or isinstance(value, (str, int, float, bool, tuple)), setting.key


def test_an_override_wins_over_the_environment(env):
    env(BACKSTOP_ENV="development", WORKER_THREADS="8")
    assert create_app({"WORKER_THREADS": "2"}).config["WORKER_THREADS"] == 2


def test_alert_links_follow_the_public_base_url_without_a_double_slash(env):
    env(BACKSTOP_ENV="development", PUBLIC_BASE_URL="https://backstop.example.com/")
    with create_app().app_context():
        assert alerts.admin_url("/admin/operations-health") == "https://backstop.example.com/admin/operations-health"


MALFORMED = [
    ("WORKER_THREADS", "many", "WORKER_THREADS must be an integer, got 'many'"),
    ("WORKER_THREADS", 2.5, "WORKER_THREADS must be an integer, got 2.5"),
    ("RECONCILE_INTERVAL_SECONDS", 0, "RECONCILE_INTERVAL_SECONDS must be greater than 0, got 0"),
    ("ALERT_DEDUPE_SECONDS", True, "ALERT_DEDUPE_SECONDS must be a number, got True"),
    ("EMAIL_PROVIDERS", "smtp,sendgrid", "EMAIL_PROVIDERS names an unknown provider 'sendgrid'; known: smtp, "),
    ("EMAIL_RETRY_LADDER", "1s, soon", "EMAIL_RETRY_LADDER: not a duration: 'soon'"),
    ("WEBHOOK_RETRY_LADDER", "1s, -2s", "WEBHOOK_RETRY_LADDER: not a duration: '-2s'"),
    ("WEBHOOK_RETRY_LADDER", [1.0, -2.0], "WEBHOOK_RETRY_LADDER must not be negative, got -2.0"),
]


@pytest.mark.parametrize("name, raw, complaint", [case for case in MALFORMED if isinstance(case[1], str)])
def test_malformed_settings_in_the_environment_fail_at_start_up_naming_the_setting(env, name, raw, complaint):
    env(BACKSTOP_ENV="development", **{name: raw})

    with pytest.raises(ConfigurationError) as raised:
        create_app()

    assert complaint in str(raised.value)


@pytest.mark.parametrize("name, raw, complaint", MALFORMED)
def test_malformed_overrides_fail_at_start_up_naming_the_setting(env, name, raw, complaint):
    env(BACKSTOP_ENV="development")

    with pytest.raises(ConfigurationError) as raised:
        create_app({name: raw})

    assert complaint in str(raised.value)


def test_blank_means_the_default_except_where_blank_is_a_value(env):
    env(BACKSTOP_ENV="development", WORKER_THREADS="", PUBLIC_BASE_URL="", EMAIL_PROVIDERS="", HUEY_NAME="")
    config = create_app().config
    assert (config["WORKER_THREADS"], config["PUBLIC_BASE_URL"]) == (4, "http://127.0.0.1:5000")
    # An empty provider list is a (misconfigured) value: emails retry until one is named.
    assert (config["EMAIL_PROVIDERS"], config["HUEY_NAME"]) == ((), "")


# --- no default and no parsing of a setting outside config.py ------------------------------------

SETTING_NAMES = {setting.key for setting in SETTINGS} | {setting.variable for setting in SETTINGS}
TEXT_PARSING = {"split", "strip", "rstrip", "lower", "from_ladder", "parse_ladder"}
LITERALS = (ast.Constant, ast.JoinedStr, ast.BinOp, ast.List, ast.Tuple, ast.Dict)


def _names_setting(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value in SETTING_NAMES


def _reads_setting(node: ast.AST) -> bool:
    """``anything["SETTING"]`` or ``anything.get("SETTING", ...)``."""
    if isinstance(node, ast.Subscript):
        return _names_setting(node.slice)
    return isinstance(node, ast.Call) and _is_get_of_a_setting(node)


def _is_get_of_a_setting(call: ast.Call) -> bool:
    func = call.func
    return isinstance(func, ast.Attribute) and func.attr == "get" and bool(call.args) and _names_setting(call.args[0])


def _reads_the_environment(call: ast.Call) -> bool:
    """``os.environ.get(...)``: the environment of a child process, not the app's config."""
    return isinstance(call.func, ast.Attribute) and ast.unparse(call.func.value) == "os.environ"


def _call_misuse(call: ast.Call) -> str | None:
    func, args = call.func, call.args
    if _reads_the_environment(call):
        return None
    if _is_get_of_a_setting(call):
        return "read config[NAME]: every setting is always there"
    if any(map(_names_setting, args)) and any(isinstance(arg, LITERALS) and not _names_setting(arg) for arg in args):
        return "a default next to a setting's name"
    if isinstance(func, ast.Name) and func.id in ("int", "float", "bool", "str") and any(map(_reads_setting, args)):
        return "a setting cast again"
    parsing = isinstance(func, ast.Attribute) and func.attr in TEXT_PARSING
    if parsing and (_reads_setting(func.value) or any(map(_reads_setting, args))):
        return "a setting parsed again"
    return None


def _or_misuse(node: ast.BoolOp) -> str | None:
    values = node.values
    if (
        isinstance(node.op, ast.Or)
        and any(map(_reads_setting, values))
        and any(isinstance(v, LITERALS) for v in values)
    ):
        return "a default by `or`"
    return None


def setting_misuses(source: str) -> list[str]:
    """Reads of a setting that bring their own default or parse its value again."""
    found = []
    for node in ast.walk(ast.parse(source)):
        misuse = None
        if isinstance(node, ast.Call):
            misuse = _call_misuse(node)
        elif isinstance(node, ast.BoolOp):
            misuse = _or_misuse(node)
        if misuse:
            found.append(f"line {node.lineno}: {ast.unparse(node)[:80]} ({misuse})")
    return found


def test_no_setting_has_a_default_or_is_parsed_outside_config_py():
    paths = [ROOT / "wsgi.py", *sorted((ROOT / "webapp").rglob("*.py")), *sorted((ROOT / "tasks").rglob("*.py"))]
    misuses = [
        f"{path.relative_to(ROOT)} {found}"
        for path in paths
        if path != ROOT / "webapp" / "config.py"
        for found in setting_misuses(path.read_text())
    ]
    assert misuses == []


@pytest.mark.parametrize(
    "code",
    [
        'config.get("CLEANUP_BATCH_SIZE", 200)',
        'current_app.config.get("METRICS_TOKEN")',
        'settings.get("DATABASE_URL")',
        '_config("ALERT_DEDUPE_SECONDS", 900)',
        'timedelta(seconds=float(config["AUTO_REQUEUE_AFTER_SECONDS"]))',
        'int(app.config.get("TRUSTED_PROXY_COUNT") or 0)',
        '(config["PUBLIC_BASE_URL"] or "http://127.0.0.1:5000").rstrip("/")',
        'config["WEBHOOK_MAX_BYTES"] or 1024 * 1024',
        'config["AUTO_REQUEUE_KINDS"].split(",")',
        'RetryPolicy.from_ladder(config["EMAIL_RETRY_LADDER"])',
    ],
)
def test_the_settings_scan_catches_what_it_forbids(code):
    assert setting_misuses(code)


def test_the_settings_scan_lets_plain_reads_through():
    code = """
hops = app.config["TRUSTED_PROXY_COUNT"]
cutoff = now - timedelta(seconds=config["AUTO_REQUEUE_AFTER_SECONDS"])
env = dict(os.environ, BACKSTOP_ENV=os.environ.get("BACKSTOP_ENV", "development"))
register = periodic_job("cleanup", interval="CLEANUP_INTERVAL_SECONDS", lease="CLEANUP_LEASE_SECONDS", order=20)
policy = RetryPolicy.from_ladder("10s, 1m")
secure = bool(app.config["SESSION_COOKIE_SECURE"] or request.is_secure)
"""
    assert setting_misuses(code) == []


# --- one argument order --------------------------------------------------------------------------


def test_every_function_taking_now_and_config_takes_now_first():
    """Positionally, that is: a keyword-only ``now`` (a collector's fixed clock) cannot be swapped."""
    wrong = []
    for path in [*sorted((ROOT / "webapp").rglob("*.py")), *sorted((ROOT / "tasks").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args
                params = [arg.arg for arg in (*arguments.posonlyargs, *arguments.args)]
                if "now" in params and "config" in params and params.index("now") > params.index("config"):
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}({', '.join(params)})")
    assert wrong == []


def test_load_reads_each_setting_from_its_environment_variable():
    config = load({"DATABASE_URL": "sqlite:////tmp/x.sqlite3", "SQLALCHEMY_DATABASE_URI": "ignored"})
    assert config["SQLALCHEMY_DATABASE_URI"] == "sqlite:////tmp/x.sqlite3"

"""Fixtures: an app on a real backend (SQLite + SqliteHuey, or PostgreSQL + RedisHuey) and real workers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import flask_migrate
import pytest
from hypothesis import settings

import tasks
import tests.support.handlers  # noqa: F401  (registers the test handlers here too)
from tests.support import servers
from webapp import create_app
from webapp.extensions import db

# Property tests assert behaviour, not speed: on six workers sharing two cores an example can
# stall for half a second, which Hypothesis's default 200 ms deadline reports as a failure.
settings.register_profile("backstop", deadline=None)
settings.load_profile("backstop")

# The real SMTP server and gunicorn fixtures for every test module; the lock that lets `alone` tests run by themselves.
pytest_plugins = ["tests.support.smtp", "tests.support.gunicorn", "tests.support.parallel"]

# pytest keeps the assertion-rewritten test modules it compiles only where bytecode may be
# written. Where PYTHONDONTWRITEBYTECODE is set (this project's machines set it), each of the
# six xdist workers would rewrite and compile every test module again, ~5 s of CPU each
# (``tests.prepare`` has them written once, with the project's bytecode). The processes the
# tests start keep the variable.
sys.dont_write_bytecode = False

ROOT = Path(__file__).resolve().parent.parent

# Fast engine timings so the end-to-end tests finish in seconds.
FAST = {
    "RECONCILE_INTERVAL_SECONDS": "1",
    "REDELIVER_AFTER_SECONDS": "1",
    "RECONCILE_LEASE_SECONDS": "10",
    "WORKER_SHUTDOWN_TIMEOUT": "10",
}


@dataclass
class Backend:
    """Where one test's data and queue live, as environment variables for any process."""

    name: str
    database_url: str
    huey_url: str
    huey_name: str
    tmp: Path
    extra: dict = field(default_factory=dict)

    def env(self, **overrides) -> dict:
        """Environment for a worker or CLI process on this backend."""
        env = dict(os.environ)
        env.update(
            BACKSTOP_ENV="test",
            DATABASE_URL=self.database_url,
            HUEY_URL=self.huey_url,
            HUEY_NAME=self.huey_name,
            BACKSTOP_HANDLER_MODULES="tests.support.handlers",
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
            **FAST,
        )
        env.update(self.extra)
        env.update({k: str(v) for k, v in overrides.items()})
        return env

    def config(self, **overrides) -> dict:
        """Flask config overrides matching :meth:`env`."""
        config = {
            "TESTING": True,
            "BACKSTOP_ENV": "test",
            "SECRET_KEY": "test-secret",
            "SQLALCHEMY_DATABASE_URI": self.database_url,
            "HUEY_URL": self.huey_url,
            "HUEY_NAME": self.huey_name,
            "RECONCILE_INTERVAL_SECONDS": 1.0,
            "REDELIVER_AFTER_SECONDS": 1.0,
            "RECONCILE_LEASE_SECONDS": 10.0,
        }
        config.update(overrides)
        return config


def _sqlite_backend(tmp_path: Path) -> Backend:
    return Backend(
        "sqlite",
        f"sqlite:///{tmp_path / 'backstop.sqlite3'}",
        f"sqlite:///{tmp_path / 'huey.sqlite3'}",
        f"q{uuid.uuid4().hex[:8]}",
        tmp_path,
    )


class Templates:
    """Databases migrated to head once per test session (each xdist worker has its own), which
    each test gets a copy of: copying is far cheaper than running every migration again. A
    PostgreSQL copy a test is done with is emptied and handed to the next test when it is as
    good as a new copy (same schema, not grown large), which is cheaper still."""

    # A copy given back larger than this is dropped rather than emptied (a bulk test's tables).
    REUSE_MAX_BYTES = 16 * 1024 * 1024

    def __init__(self, folder: Path):
        self.folder = folder
        self._sqlite: Path | None = None
        self._postgres: str | None = None
        self._postgres_schema: str | None = None  # set when copies may be emptied and used again
        self._idle_postgres: list[str] = []

    def _migrate(self, database_url: str) -> None:
        queue = f"sqlite:///{self.folder / 'huey.sqlite3'}"
        app = make_app(Backend("template", database_url, queue, "template", self.folder))
        with app.app_context():
            db.engine.dispose()  # nobody may stay connected to a template

    def sqlite_copy(self, backend: Backend) -> Backend:
        """Put a copy of the migrated SQLite database where ``backend`` keeps its data."""
        if self._sqlite is None:
            path = self.folder / "template.sqlite3"
            self._migrate(f"sqlite:///{path}")
            # The last connection closed, so the WAL is checkpointed into the file and removed.
            assert not path.with_name(path.name + "-wal").exists()
            self._sqlite = path
        shutil.copyfile(self._sqlite, backend.database_url.removeprefix("sqlite:///"))
        return backend

    def postgres_copy(self) -> str:
        """A PostgreSQL database as the migrated template is: one given back and emptied, or a new copy; its URL."""
        if self._idle_postgres:
            return self._idle_postgres.pop()
        if self._postgres is None:
            url = servers.create_postgres_database()
            try:
                self._migrate(url)
            except BaseException:
                servers.drop_postgres_database(url)
                raise
            self._postgres = url
            # Emptying a copy makes it the template again only if the template has no rows.
            if not servers.tables_with_rows(url):
                self._postgres_schema = servers.postgres_schema(url)
        return servers.create_postgres_database(template_url=self._postgres)

    def give_back_postgres(self, url: str) -> None:
        """A test is done with ``url``: empty it (renamed) for the next test, or drop it if it cannot be as new.

        A new copy costs PostgreSQL ~0.33 s of CPU (the template's pages go through the WAL);
        truncating one, under 0.1 s.
        """
        if self._postgres_schema is None:
            servers.drop_postgres_database(url)
            return
        recycled = servers.recycle_postgres_database(url, self._postgres_schema, self.REUSE_MAX_BYTES)
        if recycled is not None:
            self._idle_postgres.append(recycled)

    def drop(self) -> None:
        """Drop the PostgreSQL template and the emptied copies, if any were made."""
        for url in [*self._idle_postgres, *([self._postgres] if self._postgres else [])]:
            servers.drop_postgres_database(url)
        self._idle_postgres.clear()


@contextmanager
def postgres_backend(templates: Templates, tmp_path: Path):
    """PostgreSQL (a copy of the template) + RedisHuey on the shared Redis under a queue name of its
    own; afterwards the queue is emptied and the copy given back. Skips (fails in CI) without servers."""
    servers.require_server("Redis", servers.REDIS_HOST, servers.REDIS_PORT)
    url = templates.postgres_copy()
    name = f"q{uuid.uuid4().hex[:8]}"
    try:
        yield Backend("postgres", url, f"redis://{servers.REDIS_HOST}:{servers.REDIS_PORT}/0", name, tmp_path)
    finally:
        servers.flush_redis_queue(name)
        templates.give_back_postgres(url)


@pytest.fixture(scope="session")
def templates(tmp_path_factory):
    """The session's migrated template databases."""
    templates = Templates(tmp_path_factory.mktemp("templates"))
    yield templates
    templates.drop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.redis])])
def backend(request, tmp_path, templates):
    """Each end-to-end test runs on SQLite + SqliteHuey and on PostgreSQL + RedisHuey (schema at head)."""
    if request.param == "sqlite":
        yield templates.sqlite_copy(_sqlite_backend(tmp_path))
        return
    with postgres_backend(templates, tmp_path) as backend:
        yield backend


@pytest.fixture
def sqlite_backend(tmp_path, templates):
    """SQLite + SqliteHuey only (schema at head), for tests about the engine's logic rather than the backend."""
    return templates.sqlite_copy(_sqlite_backend(tmp_path))


@contextmanager
def inside(app):
    """Run inside ``app``'s context; afterwards drop its session and close its connections."""
    with app.app_context():
        try:
            yield app
        finally:
            db.session.remove()
            db.engine.dispose()


def make_app(backend: Backend, **overrides):
    """An app on ``backend`` with its schema migrated to head (nothing to do on a template's copy)."""
    app = create_app(backend.config(**overrides))
    tasks.bind(app)
    with app.app_context():
        flask_migrate.upgrade()
    return app


@pytest.fixture
def app(backend):
    """App on the parametrised backend, inside an app context."""
    app = make_app(backend)
    with inside(app):
        yield app


@pytest.fixture
def sqlite_app(sqlite_backend):
    """App on SQLite + SqliteHuey, inside an app context."""
    app = make_app(sqlite_backend)
    with inside(app):
        yield app


class Worker:
    """A real ``flask --app wsgi worker`` process."""

    def __init__(self, backend: Backend, label: str, **env):
        self.log_path = backend.tmp / f"worker-{label}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (open while the worker runs; closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", "worker", "-w", "2"],
            cwd=ROOT,
            env=backend.env(**env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> int:
        """Send ``sig`` and wait for the process to exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def output(self) -> str:
        """Everything the worker printed so far."""
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_worker(request):
    """Start real workers for a backend; stop them (and show their logs on failure) afterwards."""
    started: list[Worker] = []

    def start(backend: Backend, label: str | None = None, **env) -> Worker:
        worker = Worker(backend, label or str(len(started)), **env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(f"--- {worker.log_path.name} ---\n{worker.output()[-5000:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report

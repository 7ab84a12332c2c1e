"""What the benchmarks share: throw-away backends, real processes (gunicorn, consumers), percentiles.

Everything here drives Backstop through its public entry points only: the migrations and CLI
commands (run in process through Flask's CLI runner), ``gunicorn wsgi:app``, ``flask --app wsgi
worker`` / ``huey_consumer``, and plain SQL reads of the tables to check what was recorded.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import servers  # noqa: E402  (needs ROOT on sys.path)

PYTHON = sys.executable
SECRETS = {
    "SECRET_KEY": "bench-secret-key-" + "x" * 24,
    "STRIPE_SECRET_KEY": "sk_test_bench_" + "A1b2C3d4" * 3,
    "STRIPE_WEBHOOK_SECRET": "whsec_bench_" + "Z9y8X7w6" * 3,
    "EMAIL_FROM": "Bench Shop <noreply@shop.example>",
}


@dataclass
class Backend:
    """One throw-away database and queue, as the environment of every process that uses them."""

    name: str  # "sqlite" or "postgres"
    database_url: str
    huey_url: str
    huey_name: str
    tmp: Path
    extra: dict = field(default_factory=dict)

    def env(self, **overrides) -> dict:
        """Environment for gunicorn, a consumer or a CLI process on this backend (production mode)."""
        env = dict(os.environ)
        env.update(
            BACKSTOP_ENV="production",
            DATABASE_URL=self.database_url,
            HUEY_URL=self.huey_url,
            HUEY_NAME=self.huey_name,
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
            **SECRETS,
        )
        env.update({k: str(v) for k, v in self.extra.items()})
        env.update({k: str(v) for k, v in overrides.items()})
        return env

    def raw_url(self) -> str:
        """The database URL without SQLAlchemy's driver suffix (for psycopg / sqlite3)."""
        return self.database_url.replace("postgresql+psycopg://", "postgresql://")

    def sqlite_path(self) -> str:
        """The SQLite file."""
        return self.database_url.removeprefix("sqlite:///")


@contextmanager
def backend(name: str, label: str = "bench", keep: bool = False):
    """A fresh, migrated backend: SQLite + SqliteHuey, or PostgreSQL + RedisHuey; removed afterwards
    (``keep``: the folder with the logs and SQLite files stays, and is printed)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{label}-{name}-"))
    queue = f"bench{uuid.uuid4().hex[:8]}"
    if name == "sqlite":
        made = Backend(name, f"sqlite:///{tmp / 'backstop.sqlite3'}", f"sqlite:///{tmp / 'huey.sqlite3'}", queue, tmp)
    else:
        url = servers.create_postgres_database()
        made = Backend(name, url, f"redis://{servers.REDIS_HOST}:{servers.REDIS_PORT}/0", queue, tmp)
    try:
        migrate(made)
        yield made
    finally:
        if name != "sqlite":
            servers.flush_redis_queue(queue)
            servers.drop_postgres_database(made.database_url)
        if keep:
            print(f"  kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def make_app(backend: Backend, **config):
    """An app on ``backend`` in this process (for migrations, setup commands and in-process benches)."""
    import tasks
    from webapp import create_app

    app = create_app(
        {
            "TESTING": True,
            "BACKSTOP_ENV": "test",
            "SQLALCHEMY_DATABASE_URI": backend.database_url,
            "HUEY_URL": backend.huey_url,
            "HUEY_NAME": backend.huey_name,
            **SECRETS,
            **config,
        }
    )
    tasks.bind(app)
    return app


def migrate(backend: Backend) -> None:
    """Bring the schema to head (Flask-Migrate, as ``flask db upgrade`` does)."""
    import flask_migrate

    from webapp.extensions import db

    app = make_app(backend)
    with app.app_context():
        flask_migrate.upgrade()
        db.session.remove()
        db.engine.dispose()


def cli(backend: Backend, *args: str, **config) -> str:
    """Run a ``flask --app wsgi`` command in this process; return its output (fail on error)."""
    from webapp.extensions import db

    app = make_app(backend, **config)
    with app.app_context():
        result = app.test_cli_runner().invoke(args=list(args))
        db.session.remove()
        db.engine.dispose()
    if result.exit_code != 0:
        raise RuntimeError(f"flask {' '.join(args)} failed: {result.output}{result.exception!r}")
    return result.output


def log_to_file(path: Path) -> None:
    """Send the app's log lines (``backstop`` loggers) to ``path`` instead of the terminal.

    The lines are still formatted and written, as in production; only the table stays readable.
    """
    import logging

    stream = open(path, "a")  # noqa: SIM115  (open until the app's next log_to_file or exit)
    for handler in logging.getLogger("backstop").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.stream = stream  # not setStream(): the previous stream may be closed


# --- processes ------------------------------------------------------------------------------------


def wait_for(condition, *, timeout: float = 90.0, interval: float = 0.02, message: str = "condition"):
    """Poll ``condition`` until truthy (returned) or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(interval)


class Process:
    """A child process whose output goes to a log file in the backend's folder."""

    def __init__(self, args: list[str], env: dict, log_path: Path):
        self.args = args
        self.env = env
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """User and system CPU seconds the process has used so far, all its threads (Linux' /proc)."""
        return cpu_seconds(self.proc.pid)

    def kill9(self) -> None:
        """SIGKILL, as an OOM killer or a lost host would."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit in time."""
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds process ``pid`` has used so far, all its threads (Linux' /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Gunicorn(Process):
    """``gunicorn`` with sync workers on an ephemeral port; ``url`` once every worker has loaded the app."""

    def __init__(self, app_spec: str, env: dict, log_path: Path, workers: int = 2):
        # --timeout 120: on a loaded 2-core machine importing the app in a worker can take over
        # gunicorn's default 30 s, and gunicorn would kill the worker while it boots.
        args = [PYTHON, "-m", "gunicorn", "--workers", str(workers), "--timeout", "120"]
        args += ["--bind", "127.0.0.1:0", "--config", "python:bench.gunicorn_ready", app_spec]
        super().__init__(args, env, log_path)
        port = wait_for(self._port, message="gunicorn to listen")
        self.url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: len(set(re.findall(r"Worker ready with pid: (\d+)", self.output()))) >= workers,
            message="every gunicorn worker to load the app",
        )

    def worker_pids(self) -> list[int]:
        """The sync workers' process ids (gunicorn names each as it becomes ready)."""
        return sorted({int(pid) for pid in re.findall(r"Worker ready with pid: (\d+)", self.output())})

    def workers_cpu_seconds(self) -> float:
        """CPU seconds the workers have used so far (the requests' cost, without wrk's or the database's)."""
        return sum(cpu_seconds(pid) for pid in self.worker_pids())

    def _port(self):
        if not self.alive():
            raise RuntimeError(f"gunicorn exited:\n{self.output()[-3000:]}")
        match = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", self.output())
        return match and int(match.group(1))


CONSUMER_STARTED = re.compile(r"Huey consumer started with")


def huey_consumer(module_attr: str, env: dict, log_path: Path, threads: int = 4, periodic: bool = False) -> Process:
    """``huey_consumer`` with thread workers and 0.1-0.5 s idle polling, the same flags for both sides.

    (README now documents 0.01-0.05 s for production; a drain starts with work queued, so the
    idle poll does not enter these figures.)
    """
    args = [PYTHON, "-m", "huey.bin.huey_consumer", module_attr, "-w", str(threads), "-k", "thread"]
    args += ["-g", "TERM", "-t", "30", "-d", "0.1", "-m", "0.5", "-b", "1.15", "-s", "1"]
    if not periodic:
        args.append("-n")
    return Process(args, env, log_path)


def flask_worker(env: dict, log_path: Path, threads: int = 4, scheduler: bool = True) -> Process:
    """``flask --app wsgi worker``: the documented consumer."""
    args = [PYTHON, "-m", "flask", "--app", "wsgi", "worker", "-w", str(threads)]
    if not scheduler:
        args.append("--no-scheduler")
    return Process(args, env, log_path)


def started_offset(process: Process, since: int = 0) -> bool:
    """Whether the consumer logged that it started (after byte ``since`` of its log)."""
    return bool(CONSUMER_STARTED.search(process.output()[since:]))


# --- numbers --------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (``fraction`` in 0..1); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def sql_engine(backend: Backend):
    """A plain SQLAlchemy engine on the backend's database, for checks (no app, no ORM)."""
    from sqlalchemy import create_engine

    return create_engine(backend.database_url)


def scalar(engine, sql: str, **params):
    """One value from a read."""
    from sqlalchemy import text

    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def rows(engine, sql: str, **params) -> list:
    """All rows from a read."""
    from sqlalchemy import text

    with engine.connect() as conn:
        return list(conn.execute(text(sql), params).all())


def require_servers(postgres: bool) -> None:
    """Exit with a message when PostgreSQL/Redis are needed and absent."""
    if not postgres:
        return
    for name, host, port in (
        ("PostgreSQL", servers.POSTGRES_HOST, servers.POSTGRES_PORT),
        ("Redis", servers.REDIS_HOST, servers.REDIS_PORT),
    ):
        if not servers._listening(host, port):
            sys.exit(f"{name} is not reachable at {host}:{port}")

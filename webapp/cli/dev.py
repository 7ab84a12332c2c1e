"""``flask --app wsgi dev``: migrate, then web app, worker and mail sink together, locally."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from webapp.config import INSTANCE_DIR, PROJECT_ROOT

STOP_GRACE_SECONDS = 35
DEV_ADMIN_EMAIL = "admin@example.com"


@click.command("dev")
@with_appcontext
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True)
@click.option("--smtp-port", default=8025, show_default=True)
@click.option(
    "--demo/--no-demo",
    default=True,
    show_default=True,
    help="Fill an empty database with demo data and make a development admin.",
)
def dev(host: str, port: int, smtp_port: int, demo: bool):
    """Migrate, then run the web app, a worker and a local SMTP sink until Ctrl+C."""
    import flask_migrate

    from webapp.frontend import ensure_installed

    flask_migrate.upgrade()
    ensure_installed()  # npm packages on a fresh clone
    login_hint = _prepare_development_data() if demo else ""
    env = dict(
        os.environ,
        BACKSTOP_ENV=os.environ.get("BACKSTOP_ENV", "development"),
        SMTP_URL=f"smtp://127.0.0.1:{smtp_port}",
        PYTHONUNBUFFERED="1",
    )
    flask = [sys.executable, "-m", "flask", "--app", "wsgi"]
    children = {
        "mail": [
            sys.executable,
            "-m",
            "webapp.mailsink",
            "--port",
            str(smtp_port),
            "--maildir",
            str(INSTANCE_DIR / "mail"),
        ],
        "web": [*flask, "run", "--host", host, "--port", str(port), "--no-reload"],
        "worker": [*flask, "worker"],
    }
    # New sessions: the terminal's Ctrl+C reaches only us, and we stop each child gracefully.
    procs = {
        name: subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, start_new_session=True) for name, cmd in children.items()
    }
    click.secho(
        f"\nBackstop is running: open http://{host}:{port}/\n"
        f"  database  {current_app.config['SQLALCHEMY_DATABASE_URI']}\n"
        f"  queue     {current_app.config['HUEY_URL']}\n"
        f"  mail sink smtp://127.0.0.1:{smtp_port} (messages in {INSTANCE_DIR / 'mail'})\n"
        f"{login_hint}"
        "Press Ctrl+C to stop.\n",
        fg="green",
    )
    exit_code = 0
    # SIGTERM or a closed terminal must stop the children too, exactly like Ctrl+C. SIGINT is
    # set as well: a process started in the background by a shell inherits it ignored, and
    # Python then installs no Ctrl+C handler of its own (``kill -INT`` did nothing).
    for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, _raise_keyboard_interrupt)
    try:
        while True:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    click.secho(f"{name} exited with {proc.returncode}; stopping the rest", fg="red")
                    exit_code = 1
                    raise KeyboardInterrupt
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        _stop_all(procs)
    sys.exit(exit_code)


def _prepare_development_data() -> str:
    """In development: demo data in an empty database, and an admin to log in with.

    The admin's random password is kept under ``instance/dev-admin/`` (git-ignored, mode
    0600, one file per database) so later runs can print it again. Returns the lines to print.
    """
    if current_app.config["BACKSTOP_ENV"] != "development":
        return ""
    from webapp.devdata import demo

    if demo.is_empty():
        summary = demo.fill()
        click.echo("demo data: " + ", ".join(f"{count} {what}" for what, count in summary.items()))
    email, password = _development_admin()
    if password is None:
        return ""
    return f"  log in as {email} / {password} (kept in {_dev_admin_file()})\n"


def _development_admin() -> tuple[str, str | None]:
    """Create the development admin when there is no admin yet; return its login."""
    import secrets

    from sqlalchemy import func, select

    from webapp.extensions import db
    from webapp.models import AdminUser
    from webapp.services.console import admins

    if db.session.execute(select(func.count()).select_from(AdminUser)).scalar_one():
        db.session.rollback()
        return _remembered_development_admin()  # only when it belongs to this database
    password = secrets.token_urlsafe(12)
    admins.create_admin(DEV_ADMIN_EMAIL, password, by="cli:dev")
    path = _dev_admin_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(f"{DEV_ADMIN_EMAIL} {password}\n")
    return DEV_ADMIN_EMAIL, password


def _dev_admin_file() -> Path:
    """Where the development admin's login for *this* database is kept."""
    url = current_app.config["SQLALCHEMY_DATABASE_URI"]
    return INSTANCE_DIR / "dev-admin" / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}.txt"


def _remembered_development_admin() -> tuple[str, str | None]:
    from sqlalchemy import select

    from webapp.extensions import db
    from webapp.models import AdminUser

    path = _dev_admin_file()
    if not path.exists():
        return DEV_ADMIN_EMAIL, None
    email, _, password = path.read_text().strip().partition(" ")
    known = db.session.execute(select(AdminUser.id).where(AdminUser.email == email)).first()
    db.session.rollback()
    return email, (password or None) if known else None


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop_all(procs: dict) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            click.secho(f"{name} did not stop in time; killing it", fg="yellow")
            proc.kill()
            proc.wait()
    click.echo("stopped web, worker and mail sink")

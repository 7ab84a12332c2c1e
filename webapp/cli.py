"""CLI commands: ``flask --app wsgi dev`` (everything, locally) and ``reconcile``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import click
from flask import Flask, current_app

from .config import INSTANCE_DIR, PROJECT_ROOT
from .domain.time import utcnow

STOP_GRACE_SECONDS = 35


def register(app: Flask) -> None:
    """Add Backstop's commands to the app's CLI."""
    app.cli.add_command(dev)
    app.cli.add_command(reconcile_command)


@click.command("dev")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True)
@click.option("--smtp-port", default=8025, show_default=True)
def dev(host: str, port: int, smtp_port: int):
    """Migrate, then run the web app, a worker and a local SMTP sink until Ctrl+C."""
    import flask_migrate

    from .frontend import ensure_installed

    flask_migrate.upgrade()
    ensure_installed()  # npm packages on a fresh clone
    env = dict(os.environ, BACKSTOP_ENV=os.environ.get("BACKSTOP_ENV", "development"),
               SMTP_URL=f"smtp://127.0.0.1:{smtp_port}", PYTHONUNBUFFERED="1")
    flask = [sys.executable, "-m", "flask", "--app", "wsgi"]
    children = {
        "mail": [sys.executable, "-m", "webapp.mailsink", "--port", str(smtp_port),
                 "--maildir", str(INSTANCE_DIR / "mail")],
        "web": [*flask, "run", "--host", host, "--port", str(port), "--no-reload"],
        "worker": [*flask, "worker"],
    }
    # New sessions: the terminal's Ctrl+C reaches only us, and we stop each child gracefully.
    procs = {name: subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, start_new_session=True)
             for name, cmd in children.items()}
    click.secho(f"\nBackstop is running: open http://{host}:{port}/\n"
                f"  database  {current_app.config['SQLALCHEMY_DATABASE_URI']}\n"
                f"  queue     {current_app.config['HUEY_URL']}\n"
                f"  mail sink smtp://127.0.0.1:{smtp_port} (messages in {INSTANCE_DIR / 'mail'})\n"
                "Press Ctrl+C to stop.\n", fg="green")
    exit_code = 0
    # SIGTERM or a closed terminal must stop the children too, exactly like Ctrl+C.
    for stop_signal in (signal.SIGTERM, signal.SIGHUP):
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


@click.command("reconcile")
def reconcile_command():
    """Run one reconciler pass now (it normally runs as a periodic job)."""
    from .services import jobs, reconciler

    config = current_app.config
    run = jobs.run_exclusive(
        reconciler.JOB_NAME,
        lambda now: str(reconciler.reconcile(now, batch_size=config["RECONCILE_BATCH_SIZE"],
                                             redeliver_after=config["REDELIVER_AFTER_SECONDS"])),
        interval_seconds=0, lease_seconds=config["RECONCILE_LEASE_SECONDS"], clock=utcnow)
    if run is None:
        raise click.ClickException("another reconciler holds the lease; try again shortly")
    click.echo(f"{run.outcome}: {run.summary or run.error}")

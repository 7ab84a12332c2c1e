"""The README's run command: ``flask --app wsgi dev`` starts web, worker and mail sink; Ctrl+C stops all."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import smtplib
import subprocess
import sys
import urllib.request
from email.message import EmailMessage

import psutil
import pytest
import requests

from tests.conftest import ROOT
from tests.support.polling import wait_for
from tests.support.ports import free_port


def healthz(port: int):
    """The parsed /healthz answer, or None while the web app is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return json.loads(response.read())
    except OSError:
        return None


# SIGTERM runs with --no-demo: the stop is the same, and the demo's burst of work (the slow part)
# is proven once, under SIGINT.
@pytest.mark.parametrize(("stop_signal", "demo"), [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_dev_runs_everything_and_stops_cleanly(tmp_path, stop_signal, demo):
    web_port, smtp_port = free_port(), free_port()
    env = dict(
        os.environ,
        BACKSTOP_ENV="development",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        HUEY_URL=f"sqlite:///{tmp_path / 'huey.sqlite3'}",
        PYTHONUNBUFFERED="1",
    )
    log = open(tmp_path / "dev.log", "wb")  # noqa: SIM115  (open while the dev command runs; closed at the end)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "dev", "--port", str(web_port), "--smtp-port", str(smtp_port)]
        + ([] if demo else ["--no-demo"]),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        # As a shell's background job starts it: SIGINT ignored (inherited), which must not stop Ctrl+C working.
        preexec_fn=_ignore_sigint if stop_signal == signal.SIGINT else None,
    )
    children: list[psutil.Process] = []
    try:
        # Web up, migrations applied, and the worker's reconciler has beaten.
        report = wait_for(
            lambda: (r := healthz(web_port)) and r["status"] == "ok" and r, timeout=120, message="a healthy dev stack"
        )
        assert report["database"]["ok"] and report["queue"]["ok"]
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "a@example.com", "b@example.com", "sink check"
        message.set_content("hello")
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=5) as smtp:
            smtp.send_message(message)
        if demo:
            assert_demo_pages_open_with_the_printed_login(tmp_path / "dev.log", web_port)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3

        proc.send_signal(stop_signal)
        assert proc.wait(timeout=120) == 0  # a hang guard: a loaded machine drains the demo burst slowly
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
        output = (tmp_path / "dev.log").read_text()
        assert f"open http://127.0.0.1:{web_port}/" in output
        assert "stopped web, worker and mail sink" in output
        assert "subject='sink check'" in output
    finally:
        if proc.poll() is None:
            proc.kill()
        for child in children:  # in their own sessions: a failed stop would leave them running
            if child.is_running():
                child.kill()
        log.close()
        # The login dev kept for this throw-away database.
        digest = hashlib.sha256(env["DATABASE_URL"].encode()).hexdigest()[:12]
        (ROOT / "instance" / "dev-admin" / f"{digest}.txt").unlink(missing_ok=True)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def assert_demo_pages_open_with_the_printed_login(log_path, port: int) -> None:
    """A newcomer logs in with the credentials dev printed and sees the demo dead letters."""
    match = re.search(r"log in as (\S+) / (\S+) ", log_path.read_text())
    assert match, "dev printed no admin login"
    base = f"http://127.0.0.1:{port}"
    with requests.Session() as session:
        form = session.get(f"{base}/admin/login", timeout=5).text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
        response = session.post(
            f"{base}/admin/login",
            timeout=5,
            data={"csrf_token": token, "email": match.group(1), "password": match.group(2), "next": ""},
        )
        assert response.status_code == 200 and "/admin/login" not in response.url
        page = session.get(f"{base}/admin/failed-operations", timeout=5)
        assert page.status_code == 200 and "Recipient address rejected" in page.text

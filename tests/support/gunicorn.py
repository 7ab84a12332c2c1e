"""A real ``gunicorn wsgi:app`` for the tests that need the web side as its own process(es)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.polling import wait_for

ROOT_MODULE = "wsgi:app"
WORKERS = 2  # each worker imports the app (~5 s of CPU here), so two: enough to disagree


class Gunicorn:
    """A real ``gunicorn wsgi:app`` with several workers on an ephemeral port.

    ``threads`` > 1 gives each worker that many request threads (gunicorn's gthread worker),
    so one process can serve concurrent clients.
    """

    def __init__(self, backend, workers: int, threads: int = 1, **env):
        from tests.conftest import ROOT  # the conftest imports this plugin; import it late

        self.log_path = backend.tmp / "gunicorn.log"
        self.access_path = backend.tmp / "access.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (open while gunicorn runs; closed in stop())
        # The access log names the worker (pid) that answered each request (and its query string).
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--workers",
                str(workers),
                "--threads",
                str(threads),
                "--bind",
                "127.0.0.1:0",
                "--access-logfile",
                str(self.access_path),
                "--access-logformat",
                "%(p)s %(U)s %(q)s",
                ROOT_MODULE,
            ],
            cwd=ROOT,
            env=backend.env(**env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        port = wait_for(self._port, timeout=60, message="gunicorn to listen")
        self.url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: len(set(re.findall(r"Booting worker with pid: (\d+)", self.output()))) == workers,
            timeout=60,
            message="every gunicorn worker to boot",
        )

    def _port(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited:\n{self.output()}")
        match = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", self.output())
        return match and int(match.group(1))

    def output(self) -> str:
        """Everything gunicorn and the app printed (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def answered_by(self, probe: str) -> str | None:
        """The pid of the worker that answered the request carrying ``probe`` in its query."""
        if not self.access_path.exists():
            return None
        match = re.search(rf"^<(\d+)> \S+ probe={probe}$", self.access_path.read_text(), re.M)
        return match and match.group(1)

    def stop(self) -> None:
        """SIGTERM, and wait for the workers to exit."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def start_gunicorn(request):
    """Start gunicorn for a backend; stop it (and show its output on failure) afterwards."""
    started: list[Gunicorn] = []

    def start(backend, workers: int = WORKERS, threads: int = 1, **env) -> Gunicorn:
        server = Gunicorn(backend, workers, threads, **env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(f"--- gunicorn ---\n{server.output()[-5000:]}")

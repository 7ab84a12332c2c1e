"""Set-up the test command runs before pytest: front-end packages, Debian's Chromium, bytecode.

``python -m tests.prepare`` is idempotent: it installs only what is missing.
"""

from __future__ import annotations

import compileall
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")


def install_front_end() -> None:
    """``npm ci`` the pinned front-end packages into static/node_modules when missing."""
    static = ROOT / "static"
    if not (static / "package-lock.json").exists() or (static / "node_modules").exists():
        return
    if shutil.which("npm") is None:
        sys.exit("npm is needed to install the front-end packages (apt-get install nodejs npm)")
    subprocess.run(["npm", "ci", "--prefix", str(static), "--no-audit", "--no-fund"], check=True)


def install_chromium() -> None:
    """Install Debian's chromium for the browser tests when we can (root with apt-get)."""
    if CHROMIUM.exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"note: {CHROMIUM} is missing and cannot be installed here; browser tests will skip")
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)


def compile_sources() -> None:
    """Write the project's bytecode once, so every process the suite starts imports it ready-made.

    Where PYTHONDONTWRITEBYTECODE is set (this project's machines set it), Python never caches
    what it compiles: each worker, gunicorn and CLI process the tests start would compile every
    module again, about four seconds of CPU each. ``uv sync --compile-bytecode`` does the same for
    the installed packages."""
    for folder in ("webapp", "tasks", "tests", "migrations", "bench"):
        compileall.compile_dir(ROOT / folder, quiet=1)
    compileall.compile_file(ROOT / "wsgi.py", quiet=1)


def rewrite_test_modules() -> None:
    """Have pytest write its assertion-rewritten test modules once (a collection, no test run).

    Each of the suite's six xdist workers then loads them ready-made instead of rewriting and
    compiling every test module again (``tests/conftest.py`` lets pytest keep them)."""
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0", "-p", "no:cacheprovider"]
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    install_front_end()
    install_chromium()
    compile_sources()
    rewrite_test_modules()

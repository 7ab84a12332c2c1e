"""The front-end packages (htmx, Chart.js): installed from npm into static/node_modules."""

from __future__ import annotations

import shutil
import subprocess

from webapp.config import PROJECT_ROOT

STATIC = PROJECT_ROOT / "static"


class FrontEndError(RuntimeError):
    """The front-end packages are missing and cannot be installed here."""


def ensure_installed(static_dir=STATIC) -> bool:
    """Run ``npm ci`` from the committed lock file when node_modules is missing; True if it ran."""
    if (static_dir / "node_modules").is_dir():
        return False
    if shutil.which("npm") is None:
        raise FrontEndError("npm is needed once to install the admin pages' scripts (apt-get install npm)")
    subprocess.run(["npm", "ci", "--prefix", str(static_dir), "--no-audit", "--no-fund"], check=True)
    return True

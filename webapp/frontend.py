"""Front-end packages (htmx, Chart.js; axe-core for the accessibility test) from npm, in static/node_modules."""

from __future__ import annotations

import json
import shutil
import subprocess

from webapp.config import PROJECT_ROOT

STATIC = PROJECT_ROOT / "static"


class FrontEndError(RuntimeError):
    """The front-end packages are missing and cannot be installed here."""


def ensure_installed(static_dir=STATIC) -> bool:
    """Run ``npm ci`` from the committed lock file when a package is missing; True if it ran.

    Checked per package, so a node_modules made before a package was added gets it too.
    """
    wanted = json.loads((static_dir / "package.json").read_text()).get("dependencies", {})
    if all((static_dir / "node_modules" / name / "package.json").is_file() for name in wanted):
        return False
    if shutil.which("npm") is None:
        raise FrontEndError("npm is needed once to install the admin pages' scripts (apt-get install npm)")
    subprocess.run(["npm", "ci", "--prefix", str(static_dir), "--no-audit", "--no-fund"], check=True)
    return True

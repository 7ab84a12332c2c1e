"""The layers of ARCHITECTURE.md, enforced: import-linter's contracts plus an AST scan."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOWER_LAYERS = ("webapp/services", "webapp/models", "webapp/domain")
REQUEST_STATE = {"request", "g", "session"}
ENTRY_POINTS = {"wsgi.py", "tasks/worker.py"}


def python_files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def project_files() -> list[Path]:
    """Every Python file of the application (not the tests, the venv or migrations)."""
    return [ROOT / "wsgi.py", *python_files("webapp", "tasks")]


def test_import_linter_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Layers import downward only KEPT" in output
    assert "Services never touch the request, the login or the queue KEPT" in output
    assert "0 broken" in output


def _forbidden_imports(path: Path) -> list[str]:
    """Imports in ``path`` that a service, model or domain module must not make."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in ("flask_login", "tasks") or alias.name in {f"flask.{n}" for n in REQUEST_STATE}:
                    found.append(f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top = node.module.split(".")[0]
            if top in ("flask_login", "tasks"):
                found.append(f"from {node.module} import ...")
            elif node.module == "flask":
                found += [f"from flask import {a.name}" for a in node.names if a.name in REQUEST_STATE]
        elif isinstance(node, ast.Attribute) and node.attr in REQUEST_STATE:
            # ``flask.request`` used through ``import flask``.
            if isinstance(node.value, ast.Name) and node.value.id == "flask":
                found.append(f"flask.{node.attr}")
    return found


@pytest.mark.parametrize("folder", LOWER_LAYERS)
def test_lower_layers_never_touch_request_login_or_tasks(folder):
    files = python_files(folder)
    assert files, f"no modules found under {folder}"
    offenders = {str(path.relative_to(ROOT)): hits for path in files if (hits := _forbidden_imports(path))}
    assert offenders == {}


def test_the_scan_catches_what_it_forbids(tmp_path):
    sample = tmp_path / "bad.py"
    sample.write_text(
        "from flask import current_app, request\nimport flask_login\nfrom tasks.queue import x\n"
        "import flask\nflask.g.user = 1\n"
    )
    assert _forbidden_imports(sample) == [
        "from flask import request",
        "import flask_login",
        "from tasks.queue import ...",
        "flask.g",
    ]


def _calls_create_app(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name == "create_app":
                return True
    return False


def test_only_the_entry_points_call_create_app():
    callers = {str(path.relative_to(ROOT)) for path in project_files() if _calls_create_app(path)}
    assert callers == ENTRY_POINTS

"""The layers of ARCHITECTURE.md, enforced: import-linter's contracts plus an AST scan."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOWER_LAYERS = ("webapp/services", "webapp/models", "webapp/domain")
REQUEST_STATE = {"request", "g", "session"}
ENTRY_POINTS = {"wsgi.py", "tasks/worker.py"}
SERVICE_AREAS = {"maintenance", "console", "monitoring", "payments", "email", "access", "engine"}


# Blueprint modules that import their package's ``bp`` while the package imports them to
# register their routes. The blueprints are being reshaped separately: each entry goes with
# that work, and the cycle test fails as soon as one changes (shrinks, grows or disappears).
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
    assert "Service areas import downward only, the engine at the bottom KEPT" in output
    assert "Services never touch the request, the login or the queue KEPT" in output
    assert "0 broken" in output


def test_every_service_area_has_its_layer():
    """A new package or module in webapp/services must be placed in the areas' layers contract."""
    found = {
        path.stem if path.suffix == ".py" else path.name
        for path in (ROOT / "webapp/services").iterdir()
        if path.name != "__init__.py" and (path.suffix == ".py" or (path / "__init__.py").exists())
    }
    assert found == SERVICE_AREAS


# --- import cycles, imports inside functions included -----------------------------------------


def module_name(path: Path, root: Path) -> str:
    """``webapp/services/engine/runner.py`` -> ``webapp.services.engine.runner``; ``pkg/__init__.py`` -> ``pkg``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> Iterator[str]:
    """Every name imported anywhere in ``tree``, function bodies too; ``from x import y`` is ``x.y`` if a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Each module of ``packages`` -> the modules of ``packages`` it imports.

    Only explicit imports count: importing ``a.b.c`` also runs ``a/__init__.py``, but that is
    an edge only if some module names ``a`` itself. So a package's ``__init__`` may import
    its own submodules, as long as none of them imports the package back.
    """
    paths = {module_name(path, root): path for package in packages for path in sorted((root / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = set()
        for name in _imported_names(tree, module, path.name == "__init__.py", set(paths)):
            while name and name not in paths:  # ``from a.b import function``: the module a.b
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def tangles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of ``graph`` with more than one module: each holds a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = {stack.pop()}
            while node not in component:
                component.add(stack.pop())
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted((component for component in components if len(component) > 1), key=min)


def cycle_in(graph: dict[str, set[str]], tangle: set[str]) -> list[str]:
    """The shortest cycle ``[a, b, ..., a]`` from the tangle's first module back to itself."""
    start = min(tangle)
    paths = {target: [start, target] for target in graph[start] & tangle}
    queue = sorted(paths)
    while start not in paths:
        node = queue.pop(0)
        for target in sorted(graph[node] & tangle):
            if target not in paths:
                paths[target] = [*paths[node], target]
                queue.append(target)
    return paths[start]


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per tangle of ``graph``."""
    return [cycle_in(graph, tangle) for tangle in tangles(graph)]


def test_no_import_cycle_in_webapp_or_tasks():
    """Not even one kept alive by an import inside a function."""
    graph = import_graph(ROOT, ("webapp", "tasks"))
    cycles = [
        " -> ".join(cycle_in(graph, tangle)) + f"  (tangled: {', '.join(sorted(tangle))})" for tangle in tangles(graph)
    ]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


def test_the_cycle_scan_sees_imports_inside_functions_and_submodules(tmp_path):
    root = _package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg import jobs  # registers the jobs\n",
            "pkg/jobs.py": "from pkg.checks import check\n",
            "pkg/checks.py": "def check():\n    from pkg import schedule\n    return schedule.TABLE\n",
            "pkg/schedule.py": "import pkg.jobs\nTABLE = ()\n",
            "pkg/fine.py": "from pkg.sub import leaf\n",
            "pkg/sub/__init__.py": "from pkg.sub import leaf\n",
            "pkg/sub/leaf.py": "from pkg.jobs import check\n",
        },
    )
    graph = import_graph(root, ("pkg",))

    assert graph["pkg.checks"] == {"pkg.schedule"}  # inside a function, and a submodule by ``from``
    assert graph["pkg.sub.leaf"] == {"pkg.jobs"}  # a name from a module: the module
    assert find_cycles(graph) == [["pkg.checks", "pkg.schedule", "pkg.jobs", "pkg.checks"]]


def test_a_package_importing_its_submodule_is_a_cycle_only_if_the_submodule_imports_it_back(tmp_path):
    files = {"pkg/__init__.py": "from pkg import views\nbp = object()\n", "pkg/views.py": "x = 1\n"}
    assert find_cycles(import_graph(_package(tmp_path / "a", files), ("pkg",))) == []

    files["pkg/views.py"] = "from pkg import bp\n"
    assert find_cycles(import_graph(_package(tmp_path / "b", files), ("pkg",))) == [["pkg", "pkg.views", "pkg"]]


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
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in REQUEST_STATE
            and isinstance(node.value, ast.Name)
            and node.value.id == "flask"  # ``flask.request`` used through ``import flask``
        ):
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

"""Mutation testing (cosmic-ray) of one module against the fast tests that cover it.

    python3 -m uv sync --locked --group mutation   # first: cosmic-ray is not in the default sync
    nice -n 10 .venv/bin/python -m tests.mutation webapp/services/engine/runner.py
    nice -n 10 .venv/bin/python -m tests.mutation webapp/services/engine/runner.py --survivors

The run happens in a throw-away copy of the working tree (cosmic-ray mutates files on disk), so
the tree you work in is never touched. Steps:

1. Copy the files git knows about (tracked, and untracked-but-not-ignored) to a temporary folder.
2. Run the covering tests once there, recording which tests call which functions of the module
   (the baseline: every test must pass on the unmutated code).
3. ``cosmic-ray init``: every mutant of the module. Mutants that are not valid Python, that only
   touch annotations (never evaluated under ``from __future__ import annotations``) or that come
   swap an operator for one outside ``REPLACEMENTS`` are marked skipped.
4. ``cosmic-ray exec``: for each mutant, run only the tests that call the mutated function
   (all covering tests for a module-level mutant), stopping at the first failure.
5. Print the score (killed / (killed + survived)) and every survivor's diff.

The session is kept in ``.mutation/<module>.sqlite`` (``cr-report`` reads it); ``--survivors``
re-tests only the previous session's survivors against the current tests (same module code).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SESSIONS = ROOT / ".mutation"
MAP_FILE = Path(".mutation-map.json")  # inside the copy
SOCKET = ".mutation.sock"  # inside the copy: the warm test server's address

# Which fast tests (SQLite or PostgreSQL in-process: no worker process, browser or gunicorn)
# cover which module: (path, pytest -m expression) pairs, the first listed run first, so a mutant
# is usually killed by a focused test. The PostgreSQL runs of tests parametrised on both backends
# repeat their SQLite runs for these modules, so they are left out, except for the reconciler and
# the tests of PostgreSQL-only statements (row locking, ON CONFLICT).
SQLITE_ONLY = "not postgres"
# The engine's in-process tests: everything in tests/engine/ but the ones that start workers.
ENGINE_FAST_TESTS = sorted(
    str(path.relative_to(ROOT))
    for path in (ROOT / "tests" / "engine").glob("test_*.py")
    if path.stem not in ("test_engine_e2e", "test_worker_process", "test_pauses")
)
COVERING: dict[str, list[tuple[str, str]]] = {
    "webapp/domain": [("tests/domain", "")],
    # Plus the PostgreSQL runs of the claim and outcome tests: there the claim and the outcome
    # are statements of their own (one round trip each).
    "webapp/services/engine/runner.py": [(path, SQLITE_ONLY) for path in ENGINE_FAST_TESTS]
    + [("tests/engine/test_claim_commit_on_postgres.py", ""), ("tests/engine/test_claims_and_outcomes.py", "postgres")],
    "webapp/services/engine/reconciler.py": [(path, "") for path in ENGINE_FAST_TESTS],
    "webapp/services/engine/sql.py": [
        ("tests/engine/test_run_alone.py", ""),
        ("tests/engine/test_prepared_insert.py", ""),
        ("tests/engine/test_claim_commit_on_postgres.py", ""),
        ("tests/payments/test_stripe_intake.py", ""),
    ],
    "webapp/services/email/ratelimit.py": [
        ("tests/email/test_send_rate_limits.py", ""),
        ("tests/email/test_delivery.py", SQLITE_ONLY),
    ],
    "webapp/services/payments/intake.py": [
        ("tests/payments/test_stripe_intake.py", ""),
        ("tests/payments/test_stripe_intake_on_postgres.py", ""),
        ("tests/payments/test_stripe_webhooks.py", SQLITE_ONLY),
    ],
}
TESTS_FILE = Path(".mutation-tests.txt")  # inside the copy: the node ids to run

# Arithmetic, bitwise and comparison operators are replaced the way PIT's default mutators do:
# + and - swap, * and / swap, // and % and ** become / or *; a boundary moves (< and <=, > and >=)
# or a condition is negated (== and !=, < and >=, > and <=, is and is not). cosmic-ray's other
# swaps (+ to >>, == to is, < to ==, ...) are skipped: a TypeError at once, or noise.
REPLACEMENTS = {
    "Add": {"Sub"},
    "Sub": {"Add"},
    "Mul": {"Div"},
    "Div": {"Mul"},
    "FloorDiv": {"Div"},
    "Mod": {"Mul"},
    "Pow": {"Mul"},
    "BitOr": {"BitAnd"},
    "BitAnd": {"BitOr"},
    "BitXor": {"BitAnd"},
    "LShift": {"RShift"},
    "RShift": {"LShift"},
    "Eq": {"NotEq"},
    "NotEq": {"Eq"},
    "Lt": {"LtE", "GtE"},
    "LtE": {"Lt", "Gt"},
    "Gt": {"GtE", "LtE"},
    "GtE": {"Gt", "Lt"},
    "Is": {"IsNot"},
    "IsNot": {"Is"},
}
_REPLACEMENT = re.compile(r"core/Replace(?:Binary|Comparison)Operator_(\w+)_(\w+)$")

PYTEST_ARGS = [
    "-q",
    "-p",
    "no:cacheprovider",
    "-n",
    "0",  # one process: the repository's addopts spread tests over xdist workers
    "--no-header",
    "-W",
    "ignore",
    "--hypothesis-profile=mutation",
]


# --- the driver (runs in your tree; never imports the project) ---------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run a mutation session for one module and print its score and survivors."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still remove the copy
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.split("\n")[0])
    parser.add_argument("module", nargs="?", help=f"one of: {', '.join(COVERING)}")
    parser.add_argument("--survivors", action="store_true", help="re-test only the last session's survivors")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per mutant (default: 5x the baseline)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    args = parser.parse_args(argv)
    if args.module not in COVERING:
        parser.error(f"module must be one of: {', '.join(COVERING)}")
    if importlib.util.find_spec("cosmic_ray") is None:
        parser.error("cosmic-ray is not installed: run `python3 -m uv sync --locked --group mutation` first")
    module = args.module
    session = SESSIONS / (module.replace("/", "_").removesuffix(".py") + ".sqlite")
    SESSIONS.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="backstop-mutation-"))
    try:
        _copy_tree(work)
        started = time.monotonic()
        tests = _collect(work, module)
        print(f"module {module}: {len(tests)} covering tests", flush=True)
        if not tests:
            print("no covering test collected", file=sys.stderr)
            return 2
        (work / TESTS_FILE).write_text("\n".join(tests))
        command = [sys.executable, "-m", "tests.mutation", "_record", module]
        record = subprocess.run(command, cwd=work, env=_env(), check=False)
        if record.returncode != 0:
            print("the covering tests fail on the unmutated code: fix them first", file=sys.stderr)
            return 2
        baseline = time.monotonic() - started
        timeout = args.timeout or max(120.0, 5 * baseline)
        print(f"baseline {baseline:.0f} s; timeout per mutant {timeout:.0f} s", flush=True)
        command = [sys.executable, "-m", "tests.mutation", "_serve", str(timeout)]
        server = subprocess.Popen(command, cwd=work, env=_env(), stdout=subprocess.PIPE)
        try:
            server.stdout.readline()  # "test server ready"
            _run_session(work, module, session, timeout + 30, survivors_only=args.survivors)
        finally:
            server.kill()
            server.wait()
    finally:
        if args.keep:
            print(f"copy kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return _report(session, module)


def _collect(work: Path, module: str) -> list[str]:
    """The node ids of the module's covering tests, in the order of ``COVERING``."""
    ids: list[str] = []
    for path, markers in COVERING[module]:
        if not (work / path).exists():
            continue
        command = [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "-n",
            "0",
            path,
        ]
        listed = subprocess.run(
            [*command, "-m", markers] if markers else command,
            cwd=work,
            env=_env(),
            text=True,
            capture_output=True,
            check=False,
        ).stdout
        ids += [line for line in listed.splitlines() if "::" in line and line not in ids]
    return ids


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _copy_tree(target: Path) -> None:
    """Copy the files git tracks or would track (not ignored ones) into ``target``."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_symlink() or not source.is_file():
            continue
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)


def _run_session(work: Path, module: str, session: Path, timeout: float, *, survivors_only: bool) -> None:
    from cosmic_ray.commands import execute, init
    from cosmic_ray.config import ConfigDict
    from cosmic_ray.modules import find_modules
    from cosmic_ray.work_db import WorkDB, use_db

    config = ConfigDict(
        {
            "module-path": module,
            "timeout": timeout,
            "excluded-modules": [],
            "test-command": f"{sys.executable} -m tests.mutation _test",
            "distributor": ConfigDict({"name": "local"}),
        }
    )
    os.chdir(work)  # cosmic-ray mutates paths relative to the current directory
    try:
        modules = list(find_modules([Path(module)]))
        if survivors_only:
            # The same mutants (operator and occurrence in each file) must exist in today's code.
            with use_db(str(work / "current.sqlite"), WorkDB.Mode.create) as current:
                init(modules, current, config.operators_config)
                today = _mutant_keys(current)
            with use_db(str(session), WorkDB.Mode.open) as work_db:
                if _mutant_keys(work_db) != today or work_db.num_results < work_db.num_work_items:
                    raise SystemExit("--survivors needs a finished session whose mutants the current code still has")
                _forget_results(work_db, _survivor_ids(work_db))
                execute(work_db, config)
            return
        session.unlink(missing_ok=True)
        with use_db(str(session), WorkDB.Mode.create) as work_db:
            init(modules, work_db, config.operators_config)
            skipped = _skip_uninteresting(work_db)
            print(f"{work_db.num_work_items} mutants, {skipped} skipped", flush=True)
            execute(work_db, config)
    finally:
        os.chdir(ROOT)


def _module_files(base: Path, module: str) -> list[Path]:
    path = base / module
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


def _mutant_keys(work_db) -> list[tuple[str, str, int]]:
    return sorted((str(m.module_path), m.operator_name, m.occurrence) for i in work_db.work_items for m in i.mutations)


def _survivor_ids(work_db) -> list[str]:
    from cosmic_ray.work_item import TestOutcome

    done = work_db.completed_work_items
    return [item.job_id for item, result in done if result.test_outcome == TestOutcome.SURVIVED]


def _forget_results(work_db, job_ids: list[str]) -> None:
    from cosmic_ray.work_db import WorkResultStorage

    with work_db._session_maker.begin() as db:
        db.query(WorkResultStorage).filter(WorkResultStorage.job_id.in_(job_ids)).delete()


def _skip_uninteresting(work_db) -> int:
    """Mark skipped the mutants that are invalid, annotation-only or an operator swap left out."""
    from cosmic_ray.mutating import mutate_code
    from cosmic_ray.plugins import get_operator
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    sources: dict[Path, tuple[str, str]] = {}
    reasons: dict[str, list[str]] = {}
    for item in work_db.work_items:
        [mutation] = item.mutations
        swap = _REPLACEMENT.match(mutation.operator_name)
        if swap and swap[2] not in REPLACEMENTS.get(swap[1], ()):
            reasons.setdefault("operator swap left out", []).append(item.job_id)
            continue
        if mutation.module_path not in sources:
            code = mutation.module_path.read_text()
            sources[mutation.module_path] = (code, _shape(code))
        code, shape = sources[mutation.module_path]
        operator = get_operator(mutation.operator_name)(**(mutation.operator_args or {}))
        mutated = mutate_code(code, operator, mutation.occurrence)
        try:
            mutated_shape = _shape(mutated) if mutated is not None else shape
        except SyntaxError:
            reasons.setdefault("not valid Python", []).append(item.job_id)
            continue
        if mutated_shape == shape:
            reasons.setdefault("changes only annotations", []).append(item.job_id)
        elif "BinaryOperator" in mutation.operator_name and _arithmetic(mutated) == _arithmetic(code):
            # parso reads the ``*`` of keyword-only parameters and ``**kwargs`` as operators.
            reasons.setdefault("a parameter marker, not an operator", []).append(item.job_id)
    for reason, job_ids in reasons.items():
        work_db.set_multiple_results(job_ids, WorkResult(output=reason, worker_outcome=WorkerOutcome.SKIPPED))
    return sum(len(job_ids) for job_ids in reasons.values())


def _arithmetic(code: str) -> list[str]:
    """The binary operators of ``code``, in order."""
    nodes = (node for node in ast.walk(ast.parse(code)) if isinstance(node, (ast.BinOp, ast.AugAssign)))
    return [type(node.op).__name__ for node in nodes]


def _shape(code: str) -> str:
    """The module's AST without annotations (unevaluated under ``from __future__ import annotations``)."""
    tree = ast.parse(code)
    lazy = any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(a.name == "annotations" for a in node.names)
        for node in tree.body
    )
    if lazy:
        for node in ast.walk(tree):
            if isinstance(node, ast.arg):
                node.annotation = None
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                node.returns = None
            elif isinstance(node, ast.AnnAssign):
                node.annotation = ast.Constant(None)
    return ast.dump(tree)


def _report(session: Path, module: str) -> int:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    killed, survivors, skipped = 0, [], 0
    with use_db(str(session), WorkDB.Mode.open) as work_db:
        for item, result in work_db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                skipped += 1
            elif result.test_outcome == TestOutcome.SURVIVED:
                survivors.append((item, result))
            else:
                killed += 1
        pending = work_db.num_work_items - work_db.num_results
    for item, result in sorted(
        survivors, key=lambda pair: (str(pair[0].mutations[0].module_path), pair[0].mutations[0].start_pos)
    ):
        mutation = item.mutations[0]
        print(f"\nSURVIVED {mutation.module_path}:{mutation.start_pos[0]} {mutation.operator_name} (job {item.job_id})")
        print(
            "\n".join(
                line for line in (result.diff or "").splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")
            )
        )
    total = killed + len(survivors)
    score = 100.0 * killed / total if total else 100.0
    print(f"\n{module}: {total} mutants, {killed} killed, {len(survivors)} survived, score {score:.1f}%", end="")
    print(f" ({skipped} skipped{f', {pending} not run' if pending else ''}); session {session.relative_to(ROOT)}")
    return 0


# --- inside the copy: record which tests call what, and run the tests a mutant needs ---------------


def _functions(code: str) -> list[tuple[int, int, int]]:
    """``(code object's first line, first body line, last line)`` of every function in ``code``."""
    spans = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            spans.append((first, node.body[0].lineno, node.end_lineno))
    return spans


def _hypothesis_profile() -> None:
    from hypothesis import settings

    # Same examples every run, and no example database carried from one mutant to the next.
    settings.register_profile("mutation", derandomize=True, database=None, deadline=None)


def _record(module: str) -> int:
    """Run the covering tests once (paths and pytest options), noting which functions of ``module`` each calls."""
    import threading

    import pytest

    targets = {str(path.resolve()): str(path) for path in _module_files(Path("."), module)}
    calls: dict[str, set[tuple[str, int]]] = {}
    order: list[str] = []
    current: set[tuple[str, int]] = set()

    def tracer(frame, event, arg):
        filename = targets.get(frame.f_code.co_filename)
        if filename is not None and event == "call":
            current.add((filename, frame.f_code.co_firstlineno))

    class Recorder:
        @pytest.hookimpl(wrapper=True)
        def pytest_runtest_protocol(self, item, nextitem):
            current.clear()
            _clear_caches(targets)
            sys.settrace(tracer)
            threading.settrace(tracer)
            try:
                return (yield)
            finally:
                sys.settrace(None)
                threading.settrace(None)
                order.append(item.nodeid)
                calls[item.nodeid] = set(current)

    _hypothesis_profile()
    status = pytest.main([*PYTEST_ARGS, *TESTS_FILE.read_text().splitlines()], plugins=[Recorder()])
    files = {name: Path(name).read_text() for name in targets.values()}
    MAP_FILE.write_text(
        json.dumps(
            {
                "files": files,
                "functions": {name: _functions(code) for name, code in files.items()},
                "tests": order,
                "calls": {nodeid: sorted(called) for nodeid, called in calls.items()},
                "preload": _third_party_modules(),
            }
        )
    )
    return int(status)


def _clear_caches(targets: dict[str, str]) -> None:
    """Empty the ``functools`` caches of the mutated module's functions before each recorded test.

    A cached function (a prepared statement builder, say) runs in the first test that needs it
    only: without this, its mutants would be mapped to that one test and survive the others."""
    for module in list(sys.modules.values()):
        if str(Path(getattr(module, "__file__", None) or "/").resolve()) not in targets:
            continue
        for value in list(vars(module).values()):
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()


def _changed_lines(original: str, current: str) -> set[int]:
    lines: set[int] = set()
    matcher = difflib.SequenceMatcher(a=original.splitlines(), b=current.splitlines(), autojunk=False)
    for tag, i1, i2, _, _ in matcher.get_opcodes():
        if tag != "equal":
            lines.update(range(i1 + 1, max(i2, i1 + 1) + 1))
    return lines


def _tests_for_mutant(saved: dict) -> list[str]:
    """The tests that call the function holding the mutation; all of them for module-level code."""
    wanted: set[tuple[str, int]] = set()
    for name, original in saved["files"].items():
        for line in _changed_lines(original, Path(name).read_text()):
            enclosing = [span for span in saved["functions"][name] if span[1] <= line <= span[2]]
            if not enclosing:
                return list(saved["tests"])  # module-level: constants, defaults, class bodies
            innermost = max(enclosing, key=lambda span: span[1])
            wanted.add((name, innermost[0]))
    return [t for t in saved["tests"] if wanted & {tuple(c) for c in saved["calls"][t]}]


def _third_party_modules() -> list[str]:
    """Modules imported so far that are not the project's (the warm server imports them once)."""
    own = {"webapp", "tasks", "tests", "wsgi", "bench", "__main__"}
    return sorted(name for name in list(sys.modules) if name.partition(".")[0] not in own)


def _serve(timeout: float) -> int:
    """Answer test runs for mutants: fork a child per run from a process with the libraries imported.

    Importing Flask, SQLAlchemy, Stripe and the rest takes seconds, far longer than most mutants'
    tests; each child still imports the project itself fresh from disk, so it sees the mutant.
    """
    import importlib
    import socket

    for name in json.loads(MAP_FILE.read_text())["preload"]:
        try:
            importlib.import_module(name)
        except Exception:  # a module that only imports in some context: the child will import it
            pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(SOCKET)
    server.listen(1)
    print("test server ready", flush=True)
    while True:
        connection, _ = server.accept()
        with connection:
            args = json.loads(_receive(connection))
            with tempfile.TemporaryFile() as output:
                child = os.fork()
                if child == 0:
                    _run_child(args, output.fileno())
                code = _wait(child, timeout)
                output.seek(0)
                text = output.read().decode(errors="replace")
            connection.sendall(json.dumps({"code": code, "output": text}).encode() + b"\n")


def _run_child(args: list[str], output: int) -> None:
    """In the forked child: run pytest with its output in ``output``, then exit with pytest's status."""
    os.setsid()
    os.dup2(output, 1)
    os.dup2(output, 2)
    code = 3
    try:
        _hypothesis_profile()
        import pytest

        code = int(pytest.main(args))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(child: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1
        if time.monotonic() > deadline:
            os.killpg(child, signal.SIGKILL)
            os.waitpid(child, 0)
            return 1  # a mutant that hangs the tests is killed, as cosmic-ray counts timeouts
        time.sleep(0.05)


def _receive(connection) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _test_mutant() -> int:
    """Run the tests the current mutant can affect; exit 0 (survived) when no test reaches it."""
    import socket

    saved = json.loads(MAP_FILE.read_text())
    selected = _tests_for_mutant(saved)
    if not selected:
        print("no test calls the mutated code")
        return 0
    args = [*PYTEST_ARGS, "-x", *selected]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(SOCKET)
        client.sendall(json.dumps(args).encode() + b"\n")
        answer = json.loads(_receive(client))
    print(answer["output"])
    return answer["code"]


if __name__ == "__main__":
    if sys.argv[1:2] == ["_record"]:
        sys.exit(_record(sys.argv[2]))
    if sys.argv[1:2] == ["_test"]:
        sys.exit(_test_mutant())
    if sys.argv[1:2] == ["_serve"]:
        sys.exit(_serve(float(sys.argv[2])))
    sys.exit(main())

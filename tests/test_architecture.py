"""The shape of the code: the core never imports KFP, and has no import cycles (function-level imports too)."""

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import kdpipe

CORE = Path(kdpipe.__file__).parent


def core_modules() -> list[str]:
    return ["kdpipe"] + [f"kdpipe.{m.name}" for m in pkgutil.walk_packages([str(CORE)]) if not m.ispkg]


def test_importing_every_core_module_imports_no_kfp():
    code = ("import importlib, json, sys\n"
            f"for m in {core_modules()!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in ('kfp', 'kdpipe_kfp'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kdpipe.cli" in core_modules() and "kdpipe.steps" in core_modules()
    assert json.loads(done.stdout.splitlines()[-1]) == []


def kdpipe_imports(path: Path) -> set[str]:
    """Every kdpipe module a file imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "kdpipe":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "kdpipe")
    return found


def test_no_import_cycles_in_the_core():
    graph = {}
    for name in core_modules():
        path = CORE / "__init__.py" if name == "kdpipe" else CORE.joinpath(*name.split(".")[1:]).with_suffix(".py")
        graph[name] = {m for m in kdpipe_imports(path) if m != name}
    assert graph["kdpipe.task"] == set(), "the task type imports nothing else from kdpipe"
    visiting, done = [], set()

    def visit(node):
        if node in visiting:
            raise AssertionError("import cycle: " + " -> ".join(visiting[visiting.index(node):] + [node]))
        if node in done:
            return
        visiting.append(node)
        for nxt in graph.get(node, ()):
            visit(nxt)
        visiting.pop()
        done.add(node)

    for node in graph:
        visit(node)

"""The shape of the code: the core never imports KFP or the KFP layer (module-level and function-level imports
alike, read from the source), folders match packages, no import cycles, and each step is one name everywhere."""

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import kdpipe
import kdpipe_kfp

CORE = Path(kdpipe.__file__).parent
KFP_LAYER = Path(kdpipe_kfp.__file__).parent
ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_CORE = ("kfp", "kdpipe_kfp")


def core_modules(folder: Path = CORE) -> dict[str, Path]:
    found = {"kdpipe": folder / "__init__.py"}
    for m in pkgutil.walk_packages([str(folder)]):
        if not m.ispkg:
            found[f"kdpipe.{m.name}"] = folder.joinpath(*m.name.split(".")).with_suffix(".py")
    return found


def imports(path: Path) -> list[tuple[str, int]]:
    """Every module a file imports (absolute names), at module level or inside a function, with its line;
    `from kdpipe import parallel` counts as importing kdpipe.parallel."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            found.extend((f"{node.module}.{a.name}", node.lineno) for a in node.names
                         if node.module in ("kdpipe", "kdpipe_kfp"))
        elif isinstance(node, ast.Import):
            found.extend((a.name, node.lineno) for a in node.names)
    return found


def forbidden_core_imports(folder: Path = CORE) -> list[str]:
    """`module:line imports name` for each import of KFP or the KFP layer in the core."""
    return [f"{name}:{line} imports {module}" for name, path in core_modules(folder).items()
            for module, line in imports(path) if module.split(".")[0] in FORBIDDEN_IN_CORE]


def test_the_core_imports_no_kfp_anywhere():
    assert "kdpipe.steps" in core_modules() and "kdpipe.cli" not in core_modules()
    assert forbidden_core_imports() == []


def test_a_function_level_kfp_import_in_the_core_is_caught(tmp_path):
    """Mutation: a copy of the core with `import kfp` inside one function fails the check, naming the line."""
    import shutil

    copy = tmp_path / "kdpipe"
    shutil.copytree(CORE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    source = (copy / "summary.py").read_text()
    mutated = source.replace("def run_outcome(results: dict, failed: bool) -> str:\n",
                             "def run_outcome(results: dict, failed: bool) -> str:\n    from kfp import dsl  # noqa\n", 1)
    assert mutated != source
    (copy / "summary.py").write_text(mutated)
    found = forbidden_core_imports(copy)
    assert len(found) == 1 and found[0].startswith("kdpipe.summary:") and found[0].endswith("imports kfp")


def test_importing_every_core_module_loads_no_kfp():
    code = ("import importlib, json, sys\n"
            f"for m in {sorted(core_modules())!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in ('kfp', 'kdpipe_kfp'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_folders_match_packages():
    """Each package lives where its name says (src/<package>); the top-level pipelines/ and components/ hold
    the compiled specs, not code."""
    assert CORE == ROOT / "src" / "kdpipe" and KFP_LAYER == ROOT / "src" / "kdpipe_kfp"
    assert not list((ROOT / "pipelines").glob("*.py")) and not list((ROOT / "components").glob("*.py"))


def test_no_import_cycles_in_the_core():
    graph = {name: {m for m, _ in imports(path) if m.split(".")[0] == "kdpipe" and m != name}
             for name, path in core_modules().items()}
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


def test_each_step_is_one_name_and_one_declaration():
    """Every component calls the core step of its own name, every core step has a component with its task
    options, and every task of the compiled pipeline gets them (caching off, the Secret, retries)."""
    import yaml

    from kdpipe import steps
    from kdpipe_kfp import components

    core = {name for name, fn in vars(steps).items() if getattr(fn, "step_name", None) == name}
    declared = {name.replace("-", "_") for name in components.OPTIONS}
    assert core == declared and len(core) == 11
    for name in core:
        body = ast.get_source_segment(components.__file__ and Path(components.__file__).read_text(),
                                      next(n for n in ast.parse(Path(components.__file__).read_text()).body
                                           if isinstance(n, ast.FunctionDef) and n.name == name))
        assert f'run_step("{name}"' in body, name
    spec, platform = yaml.safe_load_all((ROOT / "pipelines" / "kdpipe_pipeline.yaml").read_text())
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(k8s) == set(spec["deploymentSpec"]["executors"]) == {f"exec-{n.replace('_', '-')}" for n in core}

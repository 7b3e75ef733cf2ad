"""The package's shape: no import cycles, recipes are leaves, every kind implements the protocol,
short modules, and docs/spec.md matches the spec's models."""

import ast
import inspect
from pathlib import Path

import pytest

from bigmodel_ray import kinds

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bigmodel_ray"
MAX_MODULE_LINES = 300


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every bigmodel_ray module a file imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in found if name.split(".")[0] == "bigmodel_ray"}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}

    def resolve(name):          # `from pkg import name` names a module or something in pkg
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    return {m: {resolve(t) for t in _imports(p)} - {m} for m, p in modules.items()}


def _parts(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between the package's parts (bigmodel_ray.data, bigmodel_ray.spec, ...)."""
    part = lambda m: ".".join(m.split(".")[:2])
    out = {part(m): set() for m in graph}
    for m, targets in graph.items():
        out[part(m)] |= {part(t) for t in targets} - {part(m), "bigmodel_ray"}
    return out


@pytest.mark.parametrize("level", ["modules", "parts"])
def test_the_import_graph_has_no_cycle(level):
    graph, state, cycles = _graph(), {}, []
    graph = graph if level == "modules" else _parts(graph)

    def visit(m, path):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


@pytest.mark.parametrize("folder", ["bigmodel_ray", "tests", "benchmarks"])
def test_nothing_outside_recipes_imports_a_recipe(folder):
    recipes = PACKAGE / "recipes"
    leaning = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n.startswith("bigmodel_ray.recipes"))
               for p in (ROOT / folder).rglob("*.py") if recipes not in p.parents}
    assert {file: names for file, names in leaning.items() if names} == {}


def test_every_registered_kind_implements_the_protocol():
    wanted = {name for name, _ in inspect.getmembers(kinds.JobKind, inspect.isfunction)}
    for name in kinds.KINDS:
        kind = kinds.get(name)
        missing = sorted(m for m in wanted if not callable(getattr(kind, m, None)))
        assert missing == [], f"kind {name} lacks {missing}"


def test_library_modules_stay_short():
    long = {_module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_docs_spec_md_is_generated_from_the_models():
    from bigmodel_ray.spec.reference import DOC, render

    assert DOC.read_text() == render(), "docs/spec.md is stale: run `python -m bigmodel_ray.spec.reference`"


HEAVY = ("torch", "ray", "numpy", "cv2", "sklearn", "pandas")


def test_the_cli_answers_without_importing_heavy_libraries(tmp_path):
    """`--help` and `validate` (once a model's answer is cached) import none of HEAVY: they answer
    in a fraction of a second (benchmarks/startup.py measures it)."""
    import os
    import subprocess
    import sys

    probe = ("import sys, contextlib, io\nfrom bigmodel_ray.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n    code = main(sys.argv[1:])\n"
             f"print(code, sorted(m for m in {HEAVY!r} if m in sys.modules))")
    env = {**os.environ, "BIGMODEL_RAY_CACHE": str(tmp_path)}

    def imported(*argv: str) -> str:
        out = subprocess.run([sys.executable, "-c", probe, *argv], env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
        return out.stdout.strip() or out.stderr[-500:]

    assert imported("data", "--help") == "" and imported("--help") == ""       # argparse exits before the print
    job = str(ROOT / "jobs" / "quickstart.yaml")
    assert "'torch'" in imported("validate", job)             # the first time: the model is built on meta
    assert imported("validate", job) == "0 []"
    bad = imported("validate", job, "--set", "model.args.channels=[8,-1]")      # a new model: built, refused
    assert bad.startswith("2 [") and "'torch'" in bad

"""The shape of bench/: no import cycle, Ray and MLflow only behind bench.exec and bench.track, typed objects
across the driver/executor/trial boundary, and a README that lists every module."""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

from .conftest import REPO

BENCH = REPO / "bench"
#: import cycles known and owned elsewhere: the report package's __init__ and its submodules import each other
#: (its owner is splitting report/__init__.py, which removes it); nothing else may join this list
KNOWN_CYCLES: list[set[str]] = []  # none left: the report package's went with md_table into escape.py


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted(BENCH.rglob("*.py")):
        parts = list(f.relative_to(REPO).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every absolute import in a file, module level and function level alike."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
    return out


def import_graph() -> dict[str, set[str]]:
    """bench module -> the bench modules it imports (``from bench.x import y`` counts y when it is a module)."""
    mods = modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in mods.items():
        deps = set()
        for name, names in imports(path):
            if name == "bench" or name.startswith("bench."):
                subs = [f"{name}.{n}" for n in names if f"{name}.{n}" in mods]
                deps |= set(subs) or {owner(name)}
        graph[mod] = deps - {mod, None, "bench"}  # every module's package is imported first anyway
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_cycle_in_bench():
    """Function-level imports count too: a cycle hidden by a late import is still a cycle."""
    found = [c for c in cycles(import_graph()) if c not in KNOWN_CYCLES]
    assert found == []


def test_every_bench_module_imports_in_a_fresh_interpreter():
    code = ("import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n")
    out = subprocess.run([sys.executable, "-c", code, *modules()], cwd=REPO, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]


def test_ray_and_mlflow_only_behind_exec_and_track():
    outside = []
    for mod, path in modules().items():
        if mod.startswith(("bench.exec", "bench.track")):
            continue
        outside += [f"{mod}: {name}" for name, _ in imports(path) if name.split(".")[0] in ("ray", "mlflow")]
    assert outside == []


def test_readme_layout_lists_every_module():
    """The README's layout names every module by its path under bench/ (``cli.py``, ``exec/driver.py``) and every
    package by its folder (``exec/``)."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("```", readme.index("## Layout"))
    layout = readme[start:readme.index("```", start + 3)]
    missing = []
    for path in sorted(BENCH.rglob("*.py")):
        rel = path.relative_to(BENCH)
        if rel == Path("__init__.py"):
            continue
        name = f"{rel.parent.as_posix()}/" if rel.name == "__init__.py" else rel.as_posix()
        if not re.search(rf"(?<![\w/.]){re.escape(name)}(?![\w/])", layout):
            missing.append(name)
    assert missing == []


def _frozen(cls: type) -> bool:
    return dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen


def test_typed_objects_cross_the_driver_executor_trial_boundary():
    """What the driver hands an executor and an executor the body are frozen dataclasses and a function, never
    dicts read by string keys: packs of typed trials, the suite context, members' reports."""
    from bench.exec import local, ray_tune
    from bench.exec.driver import Execution, SuiteOutcome
    from bench.exec.plan import PackMode
    from bench.exec.trial import MemberReport, Pack, SuiteContext, run_pack
    from bench.spec import RunIdentity, RunSpec
    from bench.suite import Suite, Trial

    for cls in (SuiteContext, Trial, Suite, RunIdentity, RunSpec, Execution, SuiteOutcome, Pack, PackMode,
                MemberReport):
        assert _frozen(cls), cls
    hints = typing.get_type_hints(run_pack)
    assert hints["pack"] is Pack and hints["ctx"] is SuiteContext
    assert typing.get_args(typing.get_type_hints(Pack)["trials"])[0] is Trial
    for fn in (local.run_local, ray_tune.run_on_ray):
        h = typing.get_type_hints(fn)
        assert h["ctx"] is SuiteContext and "body" in h and typing.get_args(h.get("packs", h.get("todo")))[0] is Pack
    assert not any(f.type in (dict, "dict") for f in dataclasses.fields(SuiteContext))

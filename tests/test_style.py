"""The code base stays ruff clean."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed (pip install -e '.[test]')")
def test_ruff_clean():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "bench", "estimators", "tests", "examples"], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]


def _bench_files():
    return sorted((REPO / "bench").rglob("*.py"))


def test_no_estimator_name_in_the_core():
    """The core reads what it needs from the Estimator contract: no registered estimator's name appears in the
    code of bench/ (strings and docstrings included; comments may cite papers)."""
    import io
    import re
    import tokenize

    import bench

    names = [n for n in bench.list_estimators() if not n.startswith("test_")]
    assert len(names) >= 5  # the built-in estimators are registered
    pattern = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(map(re.escape, names)) + r")(?![A-Za-z0-9_])", re.I)
    hits = []
    for path in _bench_files():
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if tok.type == tokenize.COMMENT:
                continue
            for m in pattern.finditer(tok.string):
                # a dataclass's frozen=True is Python's keyword, not the control estimator
                if not (tok.type == tokenize.NAME and tok.string == "frozen"):
                    hits.append(f"{path.relative_to(REPO)}:{tok.start[0]}: {m.group(0)}")
    assert hits == []


def test_core_functions_are_short():
    """No function in bench/ is longer than 60 lines, but the declarative argument parser."""
    import ast

    allowed = {("bench/cli.py", "build_parser")}
    long = []
    for path in _bench_files():
        rel = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (rel, node.name) not in allowed:
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    assert long == []

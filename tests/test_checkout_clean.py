"""The quick start from a fresh copy of the repository leaves the checkout as it was: a user's runs, reports and
single runs go to ``runs/`` (git-ignored), and the committed reference results are only read."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, Interpreter

pytestmark = pytest.mark.timeout(600)

TINY = {"name": "tiny", "grid": {"estimators": ["ste"], "models": ["mlp"], "datasets": ["digits"], "seeds": [0]},
        "defaults": {"epochs": 1, "model_args": {"hidden": [16]}}}


def _git(where: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=where, env=env, check=True, capture_output=True, text=True).stdout


def _fresh_copy(dest: Path) -> Path:
    """The repository's files as a checkout of them holds them (tracked, and new ones not ignored), committed in
    a repository of their own."""
    files = _git(REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    _git(dest, "init", "-q")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "fresh copy")
    return dest


@pytest.fixture
def checkout(tmp_path):
    """(a fresh copy, an interpreter that runs binbench commands in it with the copy's code): one process for the
    test's commands, as a user's shell runs them there (a new one for each spent seconds importing torch)."""
    copy = _fresh_copy(tmp_path / "checkout")
    env = {k: v for k, v in os.environ.items() if k != "BINBENCH_RUN_STORE"}  # binbench run's own default
    with Interpreter(copy, {**env, "PYTHONPATH": str(copy)}, tmp_path / "binbench.log") as py:
        yield copy, py


def test_runs_from_a_checkout_leave_git_status_clean(tmp_path, checkout):
    copy, py = checkout
    reference = copy / "results" / "smoke" / "mlflow.db"
    digest = hashlib.sha256(reference.read_bytes()).hexdigest()
    suite = tmp_path / "tiny.yaml"  # outside the checkout: a user's own suite file
    suite.write_text(yaml.safe_dump(TINY))
    # the user's runs are where report looks by default; a committed reference store is named, not read unasked
    none_yet = py.cli("report", "smoke")
    assert none_yet.returncode == 2 and none_yet.stderr.count("\n") == 1, none_yet.stderr
    assert "runs/smoke/mlflow.db" in none_yet.stderr
    assert none_yet.stderr.strip().endswith("the committed reference results: --results-dir results/smoke")
    ran = py.cli("suite", "run", str(suite))
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert (copy / "runs" / "tiny" / "mlflow.db").is_file()
    reported = py.cli("report", str(suite))
    assert reported.returncode == 0, reported.stderr[-2000:]
    assert (copy / "runs" / "tiny" / "leaderboard.md").is_file()
    single = py.cli("run", "--bits", "FP32", "--epochs", "1", "--set", "model.hidden=[16]")  # no export
    assert single.returncode == 0, single.stderr[-2000:]
    assert f"in sqlite:///{(copy / 'runs' / 'mlflow.db').resolve()}" in single.stdout
    py.close()  # what the process writes as it exits counts too
    assert _git(copy, "status", "--porcelain", "--untracked-files=all") == ""
    assert hashlib.sha256(reference.read_bytes()).hexdigest() == digest

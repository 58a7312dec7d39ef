"""bench.env: a copy of the code without .git (a working tree sent to a GPU machine) still names its commit."""

from __future__ import annotations

import shutil
import subprocess
import sys

from .conftest import REPO


def _commit_in(folder, env_extra: dict[str, str]) -> str:
    code = "from bench.env import git_commit; print(git_commit())"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(folder), **env_extra}
    res = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip()


def test_a_copy_without_git_names_the_commit_it_was_given_and_says_so(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(REPO / "bench", copy / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    assert _commit_in(copy, {}) == "unknown"
    given = _commit_in(copy, {"BINBENCH_GIT_COMMIT": "0123abc"})
    assert given.startswith("0123abc ") and "BINBENCH_GIT_COMMIT" in given


def test_a_checkout_ignores_the_variable():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert _commit_in(REPO, {"BINBENCH_GIT_COMMIT": "0123abc"}).startswith(head)

"""An estimator from an installed package (entry point) works exactly like a built-in one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target",
           str(target), str(REPO / "examples" / "plugin_package")]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return target


def _run(site, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, env=env)


def test_plugin_listed_with_its_origin(plugin_site):
    out = _run(plugin_site, "list", "estimators", "sign*")
    assert out.returncode == 0, out.stderr
    assert "sign_swish" in out.stdout and "entry point sign_swish (binbench-signswish 0.1.0)" in out.stdout


def test_plugin_runs_and_probes_like_builtin(plugin_site):
    out = _run(plugin_site, "run", "-e", "sign_swish", "--epochs", "3", "--json", "--set", "model.hidden=[64,64]",
               "--set", "threads=1")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["top1"] > 50.0
    code = ("import bench, math; f, g = bench.probe('sign_swish', [0.0, 1.0], beta=5.0); "
            "print(f.tolist(), round(g[0].item(), 4))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), str(REPO)])}
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert probe.stdout.strip() == "[1.0, 1.0] 5.0", probe.stderr


def test_registry_tests_cover_plugin(plugin_site):
    """The registry-parametrized tests pick the plugin up without being edited."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), str(REPO)])}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(REPO / "tests" / "test_estimators_registry.py"), "-k", "sign_swish"],
                         capture_output=True, text=True, env=env, cwd=REPO)
    assert out.returncode == 0, out.stdout[-2000:]
    import re

    passed = int(re.search(r"(\d+) passed", out.stdout).group(1))
    assert passed >= 6  # forward/gradient x 2 kinds, sign(0), one epoch, 2 recipes

"""A tiny suite run once through the CLI: its live progress lines and what it leaves in MLflow."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bench.suite_progress import SuiteProgress, expected_trials, format_duration

from .test_suites import cli

BODY = {"name": "recordme", "grid": {"estimators": ["ste", "clipped_ste"], "models": ["mlp"], "datasets": ["digits"],
                                    "seeds": [0]},
        "defaults": {"epochs": 1, "model_args": {"hidden": [16, 16]}}}


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory) -> tuple[object, Path, Path]:
    tmp = tmp_path_factory.mktemp("suite")
    path = tmp / "suite.yaml"
    path.write_text(yaml.safe_dump(BODY))
    out = cli("suite", "run", str(path), "--results-dir", str(tmp / "res"), timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out, path, tmp / "res"


def test_progress_lines_per_trial(suite_run):
    out, path, _ = suite_run
    from bench.suite import load_suite

    labels = {t.label: t.key for t in load_suite(str(path)).trials}
    starts = re.findall(r"^trial (\d)/2 start (\S+) \((\w+)\)$", out.stdout, re.M)
    ends = re.findall(r"^trial (\d)/2 end (\S+) \((\w+)\) top-1 (\d+\.\d\d) \(finished\) in [\d.]+ s", out.stdout,
                      re.M)
    assert sorted(s[0] for s in starts) == ["1", "2"] and sorted(e[0] for e in ends) == ["1", "2"]
    assert {(s[1], s[2]) for s in starts} == set(labels.items()) == {(e[1], e[2]) for e in ends}
    assert {s[0]: s[1] for s in starts} == {e[0]: e[1] for e in ends}  # an end line carries its start's number
    # Ray's banners and tables stay off the console
    assert "Configuration for experiment" not in out.stdout and "View detailed results" not in out.stdout
    assert "Token authentication" not in out.stderr


def test_expected_trials_and_durations():
    search = {"num_samples": 2, "space": {"lr": {"loguniform": [0.01, 0.1]}, "optimizer": {"grid": ["sgd", "adam"]}}}
    assert expected_trials(3, None) == 3 and expected_trials(3, search) == 12
    assert [format_duration(s) for s in (12.34, 600, 7200)] == ["12.3 s", "10.0 min", "2.0 h"]


def test_progress_survives_pickling():
    import pickle

    cb = SuiteProgress(2, tty=False)
    assert pickle.loads(pickle.dumps(cb)).total == 2  # Tune keeps its callbacks in the experiment state

"""The binbench command: listings, show, run, and one-line errors instead of tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_estimators_shows_source(capsys):
    code, out, _ = run_cli(capsys, "list", "estimators")
    assert code == 0
    assert "biper" in out and "builtin" in out and "vispa" in out
    code, out, _ = run_cli(capsys, "list", "estimators", "re*")
    assert [line.split()[0] for line in out.splitlines()] == ["recu", "reste"]


def test_list_models_and_datasets(capsys):
    assert "resnet20" in run_cli(capsys, "list", "models")[1]
    assert "cifar10" in run_cli(capsys, "list", "datasets")[1]


def test_show_estimator(capsys):
    code, out, _ = run_cli(capsys, "show", "estimator", "biper")
    assert code == 0 and "w0 = 20.0" in out and "published" in out and "Backward" in out


def test_run_json(capsys):
    code, out, _ = run_cli(capsys, "run", "-e", "ste", "-d", "digits", "--epochs", "2", "--json",
                           "--set", "model.hidden=[32]", "--set", "threads=1")
    assert code == 0
    res = json.loads(out)
    assert res["status"] == "finished" and len(res["history"]) == 2 and res["config"]["model_args"] == {"hidden": [32]}


@pytest.mark.parametrize(("argv", "needle"), [
    (["run", "-e", "stee"], "unknown estimator 'stee'"),
    (["run", "-e", "ste", "--set", "lr"], "--set expects key=value"),
    (["run", "-e", "ste", "--set", "foo=1"], "unknown config key 'foo'"),
    (["run", "-e", "ste", "--set", "estimator.bogus=1"], "unknown hyperparameter 'bogus'"),
    (["run", "-e", "ste", "-d", "cifar10", "--data-root", "/nonexistent/x"], "not found in /nonexistent/x"),
    (["show", "estimator", "nope"], "unknown estimator 'nope'"),
    (["run", "-e", "ste", "--bits", "W2A2"], "--bits must be"),
])
def test_user_errors_are_one_line(capsys, argv, needle):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "bench.cli", "list", "models"], capture_output=True, text=True)
    assert out.returncode == 0 and "vgg_small" in out.stdout

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
    assert res["status"] == "finished" and len(res["history"]) == 2
    assert res["config"]["model_args"] == {"binarize_first_last": True, "hidden": [32]}  # the default: all binary


@pytest.mark.parametrize(("argv", "needle"), [
    (["run", "-e", "stee"], "unknown estimator 'stee'"),
    (["run", "-e", "ste", "--set", "lr"], "--set expects key=value"),
    (["run", "-e", "ste", "--set", "foo=1"], "unknown config key 'foo'"),
    (["run", "-e", "ste", "--set", "estimator.bogus=1"], "unknown hyperparameter 'bogus'"),
    (["run", "-e", "ste", "-d", "cifar10", "--data-root", "/nonexistent/x"], "not found in /nonexistent/x"),
    (["show", "estimator", "nope"], "unknown estimator 'nope'"),
    (["run", "-e", "ste", "--bits", "W2A2"], "--bits must be"),
    (["run", "-e", "stee", "--dry-run", "--json"], "unknown estimator 'stee'"),
    (["run", "-e", "biper", "--epochs", "1", "--dry-run"], "give --epochs >= 2"),
    (["run", "-e", "irnet", "--recipe", "published", "--set", "estimator.tmin=0.1", "--dry-run"],
     "unknown hyperparameter 'tmin'"),
])
def test_user_errors_are_one_line(capsys, argv, needle):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_console_script_entry_point(capsys):
    """``binbench`` is the installed console script: its entry point names bench.cli:main, which runs, and the
    script on the PATH runs too (what a user types, not ``python -m bench.cli``)."""
    import os
    import shutil
    import sysconfig
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="console_scripts") if ep.name == "binbench"]
    if not eps:
        pytest.skip("binbench is not installed (pip install -e .)")
    assert [ep.value for ep in eps] == ["bench.cli:main"]
    assert eps[0].load()(["list", "models"]) == 0 and "vgg_small" in capsys.readouterr().out
    # an installed entry point has its script: in this interpreter's scripts folder (a venv's bin/) or on the PATH;
    # none is a failure, not a silent pass
    exe = shutil.which("binbench", path=os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")]))
    assert exe is not None, f"the binbench script is in neither {sysconfig.get_path('scripts')} nor the PATH"
    out = subprocess.run([exe, "list", "models"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "vgg_small" in out.stdout, out.stderr[-2000:]


def _published_section(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  published"))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("    ")), len(lines))
    return lines[start:end]


@pytest.mark.parametrize("name", ["biper", "irnet", "recu", "reste", "vispa"])
def test_show_prints_a_source_beside_every_published_value(capsys, name):
    from bench.estimator import get_estimator_class
    from bench.recipes import published_rules

    code, out, _ = run_cli(capsys, "show", "estimator", name)
    assert code == 0
    section = _published_section(out)
    value_lines = [line for line in section if line.startswith("      ")]
    rules = published_rules(get_estimator_class(name))
    n_values = sum(len(r.values) + sum(max(0, len(v) - 1) for v in r.values.values() if isinstance(v, dict))
                   for r in rules)
    assert len(value_lines) == n_values
    for line in value_lines:
        assert " = " in line and "  <- " in line, line
        assert any(line.split("  <- ", 1)[1].startswith(r.source) for r in rules), line


def test_show_marks_extrapolated_values(capsys):
    _, out, _ = run_cli(capsys, "show", "estimator", "biper")
    section = "\n".join(_published_section(out))
    assert "published for dataset=cifar10, model=resnet18, a_bits=1; extrapolated elsewhere" in section
    assert "epochs = 900  <- edmav4/BiPer" in section and "[extrapolated outside" in section


@pytest.mark.parametrize("name", ["ste", "clipped_ste", "dsq"])
def test_show_estimator_without_published_recipe_says_so(capsys, name):
    code, out, _ = run_cli(capsys, "show", "estimator", name)
    assert code == 0
    assert "published: none: the estimator declares no published recipe (published = None)" in out
    assert "  <- " not in out  # nothing is cited as published


def test_dry_run_json_irnet_w1a32(capsys):
    # the 1w32a trainer: T_min 0.1, no warm-up; a dry run loads no data (the data root does not exist)
    code, out, err = run_cli(capsys, "run", "-e", "irnet", "-m", "resnet20", "-d", "cifar10", "--bits", "W1A32",
                             "--recipe", "published", "--dry-run", "--json", "--data-root", "/nonexistent/x")
    assert code == 0, err
    res = json.loads(out)  # one JSON object is all of stdout
    assert res["dry_run"] is True
    assert res["config"]["estimator_hparams"]["t_min"] == 0.1 and res["config"]["warmup_epochs"] == 0
    assert [(s["name"], s["epochs"], s["warmup_epochs"], s["lr"]) for s in res["stages"]] == [("main", 400, 0, 0.1)]
    prov = {p["key"]: p for p in res["recipe"]["provenance"]}
    assert "1w32a/trainer.py:129" in prov["estimator_hparams.t_min"]["source"]
    assert not prov["estimator_hparams.t_min"]["extrapolated"]
    assert all(p["source"] for p in prov.values()) and res["recipe"]["note"] == ""


def test_dry_run_text_and_user_overrides(capsys):
    code, out, _ = run_cli(capsys, "run", "-e", "ste", "-m", "resnet20", "-d", "cifar10", "--recipe", "published",
                           "--set", "lr=0.05", "--dry-run")
    assert code == 0
    assert "nothing started" in out and "declares no published recipe" in out
    assert "0 main: 600 epochs, sgd lr 0.05" in out
    assert "lr = 0.1  <- binbench common recipe" in out and "[overridden by you]" in out


def test_dry_run_json_marks_extrapolated_and_dataset_defaults(capsys):
    code, out, _ = run_cli(capsys, "run", "-e", "biper", "-m", "resnet20", "-d", "cifar10", "--recipe", "published",
                           "--dry-run", "--json")
    assert code == 0
    res = json.loads(out)
    prov = {p["key"]: p for p in res["recipe"]["provenance"]}
    assert prov["epochs"]["extrapolated"] and prov["stages"]["extrapolated"]
    assert [s["epochs"] for s in res["stages"]] == [600, 300]
    code, out, _ = run_cli(capsys, "run", "-e", "irnet", "-d", "digits", "--dry-run", "--json")
    prov = {p["key"]: p for p in json.loads(out)["recipe"]["provenance"]}
    assert prov["epochs"]["source"] == "dataset 'digits' default"


@pytest.mark.parametrize("argv", [
    ["report", "smoke", "--results-dir", "{d}", "--out", "{f}"],
    ["report", "smoke", "--results-dir", "{f}"],
    ["benchmark", "--out", "{f}", "--quick"],
    ["suite", "run", "smoke", "--results-dir", "{f}"],
])
def test_output_folder_that_is_a_file_fails_first(tmp_path, capsys, argv):
    f = tmp_path / "taken"
    f.write_text("mine")
    code, _, err = run_cli(capsys, *[a.format(d=tmp_path, f=f) for a in argv])
    assert code == 2 and "is a file, not a folder" in err and err.count("\n") == 1
    assert f.read_text() == "mine"


def test_listing_is_cached_without_torch_and_rebuilt_when_a_source_changes(tmp_path, monkeypatch):
    """`binbench list` after the first run imports no torch (< 1 s); a changed source file rebuilds it."""
    env = {**__import__("os").environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    code = ("import sys; from bench.cli import main; rc = main(['list', 'estimators']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)")
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert first.stdout.strip().endswith("TORCH 0") and second.stdout.strip().endswith("NO-TORCH 0"), second
    assert first.stdout.rsplit("\n", 2)[0] == second.stdout.rsplit("\n", 2)[0]  # the same listing
    import bench.listing as listing

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c2"))
    src = tmp_path / "plugin.py"
    src.write_text("# v1\n")
    monkeypatch.setattr(listing, "_source_files", lambda: [src])
    calls = []
    assert listing.cached_listing("estimators", lambda: calls.append(1) or [{"name": "a"}]) == [{"name": "a"}]
    listing.cached_listing("estimators", lambda: calls.append(1) or [{"name": "a"}])
    assert len(calls) == 1
    src.write_text("# v2, longer\n")
    assert listing.cached_listing("estimators", lambda: calls.append(1) or [{"name": "b"}]) == [{"name": "b"}]


def test_list_with_no_match_is_an_error(capsys):
    code, out, err = run_cli(capsys, "list", "estimators", "zz*")
    assert code == 2 and out == "" and "no estimator matches 'zz*'" in err


@pytest.mark.parametrize(("argv", "needle"), [
    (["show", "estimator", "ste", "--plot", "x.unknownext"], "matplotlib writes"),
    (["run", "--set", "estimator.clip=abc", "--dry-run"], "'clip' of estimator 'ste' must be a number"),
    (["run", "--set", "model.hidden=[1000000000]", "--epochs", "1", "--no-track"], "parameters"),
])
def test_user_mistakes_are_one_line(capsys, argv, needle):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_report_of_a_store_that_is_not_a_database(capsys, tmp_path):
    (tmp_path / "mlflow.db").write_text("not a database\n")
    code, _, err = run_cli(capsys, "report", "smoke", "--results-dir", str(tmp_path))
    assert code == 2 and "not an SQLite database" in err and len(err.strip().splitlines()) == 1

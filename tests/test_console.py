"""What a person reads on the console: epoch numbers, suite listings, cost estimates, the ui command's errors."""

from __future__ import annotations

import io
import json
import re

from bench.cli import main
from bench.progress import Reporter, format_duration, format_flop
from bench.spec import resolve
from bench.suite import list_suites, load_suite

from .conftest import TINY


def test_best_epoch_counts_from_one_on_console_and_in_json():
    from bench.train import train

    console = io.StringIO()
    res = train(resolve({**TINY, "model_args": {"hidden": [16]}, "epochs": 3, "threads": 1, "diagnostics": False}),
                reporter=Reporter(stream=console))
    tops = [h["test_top1"] for h in res.history]
    assert res.best_epoch == tops.index(max(tops)) + 1  # the first epoch with the best top-1, counted from 1
    assert json.loads(json.dumps(res.to_dict(), default=str))["best_epoch"] == res.best_epoch
    best_line = re.search(r"best top1 ([\d.]+) \(epoch (\d+)\)", console.getvalue())
    assert int(best_line.group(2)) == res.best_epoch
    printed = re.findall(r"epoch +(\d+) .* test top1 +([\d.]+)", console.getvalue())
    assert dict(printed)[str(res.best_epoch)] == f"{max(tops):.2f}"  # the epoch the console showed with that top-1


def test_step_bar_is_tqdm_on_a_terminal_and_silent_elsewhere():
    from types import SimpleNamespace

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stage = SimpleNamespace(name="binary", epochs=3)
    tty = Terminal()
    bar = Reporter(stream=tty).epoch_bar(stage, 1, 10)
    for n in range(1, 11):  # the loop passes the steps done so far
        bar.update(n)
    assert bar.bar.n == 10 and bar.bar.total == 10
    bar.close()
    assert "binary 2/3" in tty.getvalue() and "0/10" in tty.getvalue()
    plain = io.StringIO()
    quiet = Reporter(stream=plain).epoch_bar(stage, 1, 10)
    quiet.update(5)
    quiet.close()
    assert quiet.bar is None and plain.getvalue() == ""


def test_suite_list_cuts_descriptions_at_a_word(capsys):
    assert main(["suite", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(list_suites())
    cut = 0
    for name, line in zip(list_suites(), lines, strict=True):
        shown = re.match(rf"{re.escape(name)} +\d+ trials  (.*)$", line).group(1)
        full = " ".join(load_suite(name).description.split())
        if shown.endswith(" …"):
            cut += 1
            head = shown[:-2]
            assert full.startswith(head) and full[len(head)] == " ", f"{name}: cut inside a word: {shown!r}"
        else:
            assert shown == full
        assert len(shown) <= 90
    assert cut  # the shipped suites have descriptions longer than a line


def test_cost_estimate_in_readable_units(capsys):
    assert [format_flop(x) for x in (1.01e11, 3.2e12, 1.5e15, 2e19, 5e3)] == [
        "101 GFLOP", "3.2 TFLOP", "1.5 PFLOP", "20 EFLOP", "5e+03 FLOP"]
    assert [format_duration(x) for x in (3.35, 0.025, 600, 7200)] == ["3.4 s", "0.025 s", "10.0 min", "2.0 h"]
    assert main(["suite", "show", "smoke"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("cost estimate"))
    assert re.match(r"cost estimate: [\d.]+ [GTPE]?FLOP, ~[\d.]+ (s|min|h) on a 2-core CPU, ~[\d.e-]+ (s|min|h) on "
                    r"one GPU", line), line


def test_ui_needs_a_suite_and_lists_the_stores(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["ui"]) == 2
    err = capsys.readouterr().err
    assert "needs a suite name" in err and err.strip().endswith("none yet")
    for where, name in (("runs", "alpha"), ("runs", "beta"), ("results", "smoke")):
        (tmp_path / where / name).mkdir(parents=True)
        (tmp_path / where / name / "mlflow.db").touch()
    (tmp_path / "runs" / "benchmark").mkdir()  # a folder without a store is not offered
    assert main(["ui"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.strip().endswith("suites with a store under runs/: alpha, beta; reference results (--results-dir "
                                "results/NAME): smoke")
    # the default folder is the user's own: a committed reference store is named, not served unasked
    assert main(["ui", "smoke"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no MLflow store at {tmp_path}/runs/smoke/mlflow.db:" in err
    assert err.strip().endswith("the committed reference results: --results-dir results/smoke")


def test_list_models_summaries_end_at_a_word(capsys):
    from bench.models import MODELS

    assert main(["list", "models"]) == 0
    for line in capsys.readouterr().out.splitlines():
        name, _, shown = re.match(r"(\S+) +(\S+) +(.*)$", line).groups()
        full = " ".join((MODELS.get(name).__doc__ or "").strip().split("\n\n")[0].split())
        assert len(shown) <= 110
        if shown.endswith(" …"):
            head = shown[:-2]
            assert full.startswith(head) and full[len(head)] == " ", f"{name}: cut inside a word: {shown!r}"
        else:
            assert shown == full  # the whole first paragraph, not its first line only

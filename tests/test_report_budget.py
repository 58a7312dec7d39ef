"""Budget curves: a suite with ``budgets:`` runs each trial once per budget (a full run at round(b x epochs), its
own key and tag), and its report draws accuracy against budget and gives Kendall's tau of each budget's ranking
with the largest's. Notes given to one report stay in every later one of the same folder."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import yaml
from scipy import stats

from .conftest import cli_here as cli

EPOCHS = 4
BUDGETS = [0.25, 0.5, 1]
METHODS = ["ste", "dsq", "recu"]
SEEDS = [0, 1]
SUITE = {"name": "budgety", "grid": {"estimators": METHODS, "models": ["mlp"], "datasets": ["digits"],
                                     "bits": ["W1A1"], "seeds": SEEDS},
         "defaults": {"epochs": EPOCHS, "model_args": {"hidden": [32, 32]}}, "budgets": BUDGETS}


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("budget")
    path = tmp / "budgety.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    res = tmp / "res"
    # in this process, the trials too (one at a time): the budgets' runs and their report are checked, not workers
    out = cli("suite", "run", str(path), "--results-dir", str(res), "--max-concurrent", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    out = cli("report", str(path), "--results-dir", str(res), "--note", "kept note: made in a test")
    assert out.returncode == 0, out.stderr[-2000:]
    return path, res


def _runs(res) -> pd.DataFrame:
    """Independently, straight from MLflow: each finished trial's budget tag, epochs param and final top-1."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{res / 'mlflow.db'}")
    exp = client.get_experiment_by_name("budgety")
    runs = client.search_runs([exp.experiment_id], "tags.`binbench.kind` = 'trial'", max_results=1000)
    return pd.DataFrame([{"estimator": r.data.tags["estimator"], "seed": int(r.data.tags["seed"]),
                          "budget": float(r.data.tags["binbench.budget"]), "epochs": int(r.data.params["epochs"]),
                          "stage_epochs": r.data.tags.get("stage_epochs"), "key": r.data.tags["binbench.key"],
                          "top1": r.data.metrics["top1"]} for r in runs if r.info.status == "FINISHED"])


def test_each_budget_is_a_full_run_of_its_own(budgeted):
    _path, res = budgeted
    runs = _runs(res)
    assert len(runs) == len(METHODS) * len(SEEDS) * len(BUDGETS) and runs.key.is_unique
    for b in BUDGETS:
        at = runs[runs.budget == b]
        assert set(at.epochs) == {max(1, round(b * EPOCHS))}  # its own epoch count, not a truncated run
        assert set(at.stage_epochs) == {f"main: {max(1, round(b * EPOCHS))}"}  # stages resolved for it


def test_report_writes_the_budget_figure_and_kendall_tau_table(budgeted):
    _path, res = budgeted
    assert (res / "budget_curves.png").is_file() and (res / "budget_curves.pdf").is_file()
    ra = pd.read_csv(res / "rank_agreement.csv")
    runs = _runs(res)
    means = runs.groupby(["budget", "estimator"]).top1.mean()
    assert sorted(ra.budget) == BUDGETS[:-1] and set(ra.reference_budget) == {1.0}
    for r in ra.itertuples():
        a, b = means[r.budget].reindex(METHODS), means[1.0].reindex(METHODS)
        want = stats.kendalltau(a, b).statistic
        assert (math.isnan(r.tau) and math.isnan(want)) or r.tau == pytest.approx(want)
        assert r.methods == len(METHODS) and r.seeds == len(SEEDS)
        assert not r.ci95_low == r.ci95_low or -1 <= r.ci95_low <= r.ci95_high <= 1
    md = (res / "leaderboard.md").read_text()
    assert "Rank agreement across budgets" in md and "Kendall's tau" in md
    assert "Rank agreement across budgets" in (res / "report.html").read_text(encoding="utf-8")


def test_tables_count_the_largest_budget_only(budgeted):
    _path, res = budgeted
    lb = pd.read_csv(res / "leaderboard.csv")
    runs = _runs(res)
    full = runs[runs.budget == 1.0].groupby("estimator").top1.mean()
    for r in lb.itertuples():
        assert r.n == len(SEEDS) and r.top1_mean == pytest.approx(full[r.estimator])


def test_bootstrap_over_seeds_is_reproducible_and_paired():
    from bench.report.budget import bootstrap

    at = pd.DataFrame({0: [1.0, 2.0, 3.0], 1: [1.5, 2.5, 2.0], 2: [1.0, 3.0, 2.5]}, index=["a", "b", "c"])
    ref = pd.DataFrame({0: [1.0, 2.0, 3.0], 1: [1.0, 2.0, 3.0], 2: [1.0, 2.0, 3.0]}, index=["a", "b", "c"])
    one, two = bootstrap(at, ref, reps=300), bootstrap(at, ref, reps=300)
    assert one == two  # a fixed generator seed
    assert one[0] == pytest.approx(stats.kendalltau(at.mean(axis=1), ref.mean(axis=1)).statistic)
    assert bootstrap(ref, ref, reps=50) == (1.0, 1.0, 1.0)  # the same ranking in every resample


def test_notes_survive_a_regeneration(budgeted):
    path, res = budgeted
    assert "kept note: made in a test" in (res / "notes.txt").read_text()
    out = cli("report", str(path), "--results-dir", str(res))  # no --note this time
    assert out.returncode == 0, out.stderr[-2000:]
    for f in ("leaderboard.md", "leaderboard.tex", "report.html"):
        assert "kept note: made in a test" in (res / f).read_text(encoding="utf-8"), f
    assert (res / "notes.txt").read_text().count("kept note") == 1  # not stored twice


@pytest.mark.parametrize("budgets, why", [([0, 1], "in (0, 1]"), ([1.5], "in (0, 1]"), ("half", "in (0, 1]"),
                                          ([0.3, 0.35], "both give 1 epoch(s)")])
def test_bad_budgets_are_one_line_errors(tmp_path, budgets, why):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**SUITE, "name": "bad", "budgets": budgets}))
    out = cli("suite", "show", str(path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert why in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def _budget_runs(control: list[float]) -> pd.DataFrame:
    """Finished runs of one cell: two methods near 90 at every budget and the control at ``control`` (per budget),
    three seeds each, spread by 0.5."""
    rows = []
    for budget, epochs, ctrl in zip(BUDGETS, [1, 2, 4], control, strict=True):
        for est, role, level in (("ste", "method", 88 + 2 * budget), ("dsq", "method", 91 + 2 * budget),
                                 ("frozen", "control", ctrl)):
            rows += [{"dataset": "digits", "model": "mlp", "bits": "W1A1", "recipe": "common", "estimator": est,
                      "role": role, "budget": budget, "epochs": epochs, "status": "finished", "top1": level + d}
                     for d in (-0.5, 0.0, 0.5)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("control, drawn", [([20.0, 22.0, 25.0], False), ([87.5, 88.0, 88.5], True)],
                         ids=["far-below", "near"])
def test_budget_panel_range_is_the_methods_and_the_control_is_drawn_or_named(control, drawn):
    """The y-range is set by the methods (a control far below them squeezed ten methods into a sliver); a control
    within reach is drawn inside the range, one far away is left out and named in the title."""
    from bench.report.figures import _fig_budget, styles

    runs = _budget_runs(control)
    runs["display"] = runs.estimator
    (ax,) = [a for a in _fig_budget(runs, styles(runs)).axes if a.get_title()]
    lo, hi = ax.get_ylim()
    methods = runs[runs.role == "method"].top1
    assert lo <= methods.min() - 1 and methods.max() + 0.5 <= hi and hi - lo < 15
    labels = {c.get_label() for c in ax.containers}
    if drawn:
        assert "control (frozen)" in labels and lo <= min(control) - 0.5 and "off the axis" not in ax.get_title()
    else:
        assert "control (frozen)" not in labels
        assert f"control {control[0]:.3g}–{control[-1]:.3g} ↓" in ax.get_title()

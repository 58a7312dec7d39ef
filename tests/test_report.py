"""binbench report: numbers in the tables equal what the MLflow runs hold; each trial counts once."""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest
import yaml
from scipy import stats

from .conftest import cli_here as cli

# longer than the default timeout (pyproject): its module fixtures run a suite three times and report it
# (a fixture's set-up counts against the first test that uses it)
pytestmark = pytest.mark.timeout(900)


def _frozen_registered() -> bool:
    from bench.estimator import list_estimators

    return "frozen" in list_estimators()


#: with the control registered, the real suite also runs it, on a validation split (what the report checks)
CONTROL = _frozen_registered()
SUITE = {"name": "reportme", "grid": {"estimators": ["ste", "reste", "vispa", *(["frozen"] if CONTROL else [])],
                                      "models": ["mlp"], "datasets": ["digits"], "seeds": [0, 1, 2]},
         "fp_baseline": True, "defaults": {"epochs": 4 if CONTROL else 3, "model_args": {"hidden": [64, 64]},
                                           **({"val_split": 0.2} if CONTROL else {})},
         "overrides": {"biper": {"epochs": 4}, "vispa": {"estimator_hparams": {"samples": 3}}}}
TRIALS = 3 * (len(SUITE["grid"]["estimators"]) + 1)  # every estimator and FP, three seeds
STDOUT: dict[str, str] = {}  # what the real suite's commands printed: "run", "report"


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    path = tmp / "reportme.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    res = tmp / "res"
    # in this process, the trials too (one at a time: what is checked here is the record and the report, not the
    # workers, which tests/test_executor_local.py and test_suites.py's diverging suite run)
    for extra in ([], [], ["--resume"]):  # run, repeat (every trial twice), then resume (nothing left)
        out = cli("suite", "run", str(path), "--results-dir", str(res), "--max-concurrent", "1", *extra)
        assert out.returncode == 0, out.stderr[-2000:]
        STDOUT.setdefault("run", out.stdout)
    assert "already ended, 0 to run" in out.stdout
    out = cli("report", str(path), "--results-dir", str(res))
    assert out.returncode == 0, out.stderr[-2000:]
    STDOUT["report"] = out.stdout
    return res


def _truth(res):
    """Independently: the latest finished run of each trial key, straight from MLflow."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{res / 'mlflow.db'}")
    exp = client.get_experiment_by_name("reportme")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`binbench.kind` = 'trial'", max_results=1000)
    rows = [{"key": r.data.tags["binbench.key"], "estimator": r.data.tags["estimator"],
             "seed": int(r.data.tags["seed"]), "top1": r.data.metrics["top1"], "start": r.info.start_time,
             "sample": r.data.metrics.get("top1_sample")} for r in runs if r.info.status == "FINISHED"]
    df = pd.DataFrame(rows)
    assert len(df) == 2 * TRIALS  # every trial ran twice (the repeat), none ran in the resume
    return df.sort_values("start").groupby("key").tail(1)


def test_files_written(reported):
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.tex", "paired.csv", "diagnostics.csv",
                 "accuracy_curves.png", "accuracy_curves.pdf", "final_top1.png", "flip_ratio.png", "estimators.png"):
        assert (reported / name).exists(), name
    md = (reported / "leaderboard.md").read_text()
    assert "git commit" in md and "seeds: 0, 1, 2" in md and "binbench suite run" in md and "hardware" in md


def test_leaderboard_numbers_match_mlflow(reported):
    truth = _truth(reported)
    lb = pd.read_csv(reported / "leaderboard.csv")
    for est, g in truth.groupby("estimator"):
        row = lb[lb.estimator == est].iloc[0]
        assert row.n == 3 == len(g)  # each trial once, despite the repeat and the resume
        assert row.top1_mean == pytest.approx(g.top1.mean())
        assert row.top1_std == pytest.approx(g.top1.std(ddof=1))
    vispa = lb[lb.estimator == "vispa"].iloc[0]
    assert vispa.eval_mode.startswith("ensemble (L=3")
    sample_mean = truth[truth.estimator == "vispa"]["sample"].mean()
    assert f"sample {sample_mean:.2f}" in vispa.other_modes


def test_paired_ci_matches_mlflow(reported):
    truth = _truth(reported)
    pr = pd.read_csv(reported / "paired.csv")
    ste = truth[truth.estimator == "ste"].set_index("seed").top1
    fp = truth[truth.estimator == "fp"].top1.mean()
    for est in ("reste", "vispa"):
        e = truth[truth.estimator == est].set_index("seed").top1
        d = (e - ste).dropna()
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        row = pr[pr.estimator == est].iloc[0]
        assert row.n_pairs == 3
        assert row.diff_vs_ste == pytest.approx(d.mean())
        if half > 0:
            assert row.ci95_low == pytest.approx(d.mean() - half) and row.ci95_high == pytest.approx(d.mean() + half)
        assert row.ratio_to_fp == pytest.approx(e.mean() / fp)


def test_report_of_unknown_store_is_clear(tmp_path):
    out = cli("report", "smoke", "--results-dir", str(tmp_path / "none"))
    assert out.returncode == 2 and "no MLflow store at" in out.stderr and "Traceback" not in out.stderr


# -- the control (frozen), the lift over it, late gain and the validation-selected top-1 ------------------------
# Runs written straight into a tmp MLflow store, as runner._trial_fn logs them: three binary cells of mlp on digits
#   W1A1 common: the control equals ste (ste's mean is even lower)    -> cannot discriminate
#   W1A32 common: ste and reste clearly beat the control (no role tag:  -> discriminates
#                 an old store; frozen is the control by name)
#   W1A1 long:   ste beats the control by 10 points on a single seed   -> cannot discriminate (fewer than 2 pairs)
TOP1 = {("W1A1", "common"): {"frozen": [80.0, 81.0, 82.0], "ste": [79.8, 81.1, 81.9]},
        ("W1A32", "common"): {"frozen": [70.0, 71.0, 72.5], "ste": [75.1, 75.8, 77.6], "reste": [74.0, 76.5, 77.0]},
        ("W1A1", "long"): {"frozen": [60.0], "ste": [70.0]},
        ("FP32", "common"): {"fp": [90.0, 90.5, 91.0]}}
LATE = {("W1A32", "common", "ste"): [1.0, 0.8, 0.9]}  # others gain 0.1 over their last quarter
NO_VAL = {("W1A1", "long")}  # runs without a validation split: no selected_top1
LAYERS = {"params_binary_weights": 4096, "params_layer_weights": 4096 + 4096 + 640, "params_binary_layers": 1,
          "params_layers": 3, "params_total": 9000}


def _write_trial(client, exp_id: str, cell: tuple[str, str], est: str, seed: int, top1: float) -> None:
    bits, recipe = cell
    role = {"fp": "baseline", "frozen": "control"}.get(est, "method")
    tags = {"binbench.kind": "trial", "binbench.key": f"digits-mlp-{bits}-{recipe}-{est}-s{seed}",
            "binbench.status": "finished", "suite": "ctl", "estimator": est, "recipe": recipe, "model": "mlp",
            "dataset": "digits", "bits": bits, "seed": str(seed), "cell": f"digits/mlp/{bits}/{recipe}",
            "git_commit": "abc123", "headline_mode": "default", "stage_epochs": "main: 4",
            "dataset_source": "digits (sklearn)"}
    if not (est == "frozen" and bits == "W1A32"):  # an old store's control: no role tag
        tags["role"] = role
    from mlflow.entities import Metric, Param

    run = client.create_run(exp_id, run_name=tags["binbench.key"], tags=tags)
    rid, val, now = run.info.run_id, cell not in NO_VAL, int(time.time() * 1000)
    params = [Param(k, v) for k, v in {"epochs": "4", "batch_size": "64", "train_subset": "None",
                                       "val_split": "0.1" if val else "None", "model_args.hidden": "[64, 64]",
                                       "lr": "0.1", "optimizer": "sgd", "lr_schedule": "cosine"}.items()]
    metrics = []
    for step in range(4):
        metrics.append(Metric("test_top1", top1 - 3 + step, now, step))
        if val:
            metrics.append(Metric("val_top1", top1 - 2 + step, now, step))
    final = {"top1": top1, "best_top1": top1 + 0.5, "best_epoch": 2, "epochs_run": 4,
             "late_gain": LATE.get((*cell, est), [0.1] * 3)[seed], **LAYERS}
    if val:
        final.update(selected_top1=top1 - 0.3, selected_epoch=2)
    metrics += [Metric(k, v, now, 4) for k, v in final.items()]
    client.log_batch(rid, metrics=metrics, params=params)  # one store write per run, not one per value
    client.set_terminated(rid, "FINISHED")


@pytest.fixture(scope="module")
def control_store(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    res = tmp_path_factory.mktemp("control")
    client = MlflowClient(tracking_uri=f"sqlite:///{res / 'mlflow.db'}")
    exp_id = client.create_experiment("ctl")
    for cell, per_est in TOP1.items():
        for est, values in per_est.items():
            for seed, top1 in enumerate(values):
                _write_trial(client, exp_id, cell, est, seed, top1)
    return res


@pytest.fixture(scope="module")
def control_report(control_store):
    from bench.report import collect, write_tables

    c = collect(f"sqlite:///{control_store / 'mlflow.db'}", "ctl")
    write_tables(c, control_store)
    return c, control_store


def _lb_row(lb: pd.DataFrame, bits: str, recipe: str, est: str) -> pd.Series:
    return lb[(lb.bits == bits) & (lb.recipe == recipe) & (lb.estimator == est)].iloc[0]


def test_control_equal_to_ste_is_flagged(control_report):
    from bench.report import flagged_cells, summary_lines

    c, res = control_report
    assert sorted(flagged_cells(c)) == [("digits", "mlp", "W1A1", "common"), ("digits", "mlp", "W1A1", "long")]
    lines = summary_lines(c)
    flag = "this cell cannot discriminate estimators"
    assert any("W1A1 common" in x and flag in x for x in lines)
    assert any("W1A1 long" in x and flag in x and "1 paired seed" in x for x in lines)
    assert not any("W1A32" in x and flag in x for x in lines)
    assert any("W1A32 common: discriminates" in x for x in lines)
    lb = pd.read_csv(res / "leaderboard.csv")
    assert _lb_row(lb, "W1A1", "common", "ste").cell_check == "cannot discriminate"
    assert _lb_row(lb, "W1A32", "common", "ste").cell_check == "discriminates"
    md = (res / "leaderboard.md").read_text()
    assert f"† digits mlp W1A1 common: {flag}" in md and "| common † |" in md and "| long † |" in md
    assert "W1A32 common: discriminates" in md


def test_control_is_labelled_and_never_ranked(control_report):
    _c, res = control_report
    lb = pd.read_csv(res / "leaderboard.csv")
    ctl = _lb_row(lb, "W1A1", "common", "frozen")  # the control's mean (81.0) beats ste's (80.93) here
    assert ctl.role == "control" and ctl.method == "control (frozen)" and not ctl.best
    assert _lb_row(lb, "W1A1", "common", "ste").best
    assert _lb_row(lb, "W1A32", "common", "frozen").role == "control"  # no role tag: recognised by name
    assert _lb_row(lb, "W32A32", "common", "fp").role == "baseline"
    md = (res / "leaderboard.md").read_text()
    assert "| control (frozen) |" in md and "**control (frozen)**" not in md


def test_lift_is_mean_of_paired_differences(control_report):
    import numpy as np

    _c, res = control_report
    lb = pd.read_csv(res / "leaderboard.csv")
    pr = pd.read_csv(res / "paired.csv")
    ctl = np.array(TOP1[("W1A32", "common")]["frozen"])
    for est in ("ste", "reste"):
        d = np.array(TOP1[("W1A32", "common")][est]) - ctl
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        row = _lb_row(lb, "W1A32", "common", est)
        assert row.lift_n_pairs == 3
        assert row.lift_vs_control == pytest.approx(d.mean())
        assert row.lift_ci95_low == pytest.approx(d.mean() - half)
        assert row.lift_ci95_high == pytest.approx(d.mean() + half)
        p = pr[(pr.bits == "W1A32") & (pr.estimator == est)].iloc[0]
        assert p.diff_vs_control == pytest.approx(d.mean()) and p.control_n_pairs == 3
    d = np.array(TOP1[("W1A1", "common")]["ste"]) - np.array(TOP1[("W1A1", "common")]["frozen"])
    assert _lb_row(lb, "W1A1", "common", "ste").lift_vs_control == pytest.approx(d.mean())
    assert math.isnan(_lb_row(lb, "W1A1", "common", "frozen").lift_vs_control)
    md = (res / "leaderboard.md").read_text()
    assert "Lift vs control" in md and "Δ vs control" in md


def test_late_gain_and_selected_columns(control_report):
    _c, res = control_report
    lb = pd.read_csv(res / "leaderboard.csv")
    ste = _lb_row(lb, "W1A32", "common", "ste")
    assert ste.late_gain_mean == pytest.approx(0.9) and ste.still_learning
    assert not _lb_row(lb, "W1A32", "common", "reste").still_learning
    assert ste.selected_top1_mean == pytest.approx(sum(TOP1[("W1A32", "common")]["ste"]) / 3 - 0.3)
    assert ste.best_top1_mean == pytest.approx(sum(TOP1[("W1A32", "common")]["ste"]) / 3 + 0.5)
    assert math.isnan(_lb_row(lb, "W1A1", "long", "ste").selected_top1_mean)  # no validation split
    md, tex = (res / "leaderboard.md").read_text(), (res / "leaderboard.tex").read_text()
    for head in ("Final-epoch Top-1", "Val-selected Top-1", "Best test epoch (selected on test)", "Late gain"):
        assert head in md
    assert "0.90 ↑" in md and "% still learning at the end" in tex and "W1A32 common ste (+0.90)" in tex
    assert "still learning at the end" in md and "digits mlp W1A32 common ste (+0.90)" in md


def test_table_header_states_setup(control_report):
    _c, res = control_report
    md, tex = (res / "leaderboard.md").read_text(), (res / "leaderboard.tex").read_text()
    share = f"{100 * 4096 / (4096 + 4096 + 640):.1f}%"
    for part in ("mlp on digits: binary conv/linear layers: 1 of 3 (first and last full precision)",
                 f"binary weights: {share} of the conv/linear weights", "widths: [64, 64]", "batch size: 64",
                 "training subset: all 1437", "epochs per stage: main: 4", "data: digits (sklearn)",
                 "seeds: 0, 1, 2", "git commit"):
        assert part in md, part
    assert "validation split: 0.1 (" in md and "none (control (frozen), ste)" in md  # the long cell has none
    assert "% mlp on digits: binary conv/linear layers: 1 of 3" in tex and f"binary weights: {share}" in tex


def test_figures_draw_the_control(control_report):
    from bench.report import write_figures

    c, res = control_report
    made = write_figures(c, res)
    assert {p.name for p in made} >= {"accuracy_curves.png", "final_top1.png", "estimators.png"}


def test_cli_report_prints_the_checks(control_store, tmp_path):
    out = cli("report", "ctl", "--results-dir", str(control_store), "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "digits mlp W1A1 common: this cell cannot discriminate estimators" in out.stdout
    assert "control check: 2 of 3 cell(s) cannot discriminate estimators" in out.stdout


@pytest.mark.skipif(not CONTROL, reason="the frozen control estimator is not registered yet")
def test_real_suite_with_control(reported):
    """End to end: the real suite ran the control on a validation split; its runs carry what the report reads."""
    lb = pd.read_csv(reported / "leaderboard.csv")
    ctl, ste = lb[lb.estimator == "frozen"].iloc[0], lb[lb.estimator == "ste"].iloc[0]
    assert ctl.role == "control" and ctl.method == "control (frozen)" and not ctl.best
    assert ste.role == "method" and lb[lb.estimator == "fp"].iloc[0].role == "baseline"
    assert ste.lift_n_pairs == 3 and not math.isnan(ste.lift_vs_control)
    assert ste.cell_check in ("discriminates", "cannot discriminate")
    assert not math.isnan(ste.selected_top1_mean) and not math.isnan(ste.late_gain_mean)
    md = (reported / "leaderboard.md").read_text()
    assert "binary weights: ?" not in md and "binary conv/linear layers: 1 of 3 (first and last full precision)" in md
    assert "validation split: 0.2" in md and "epochs per stage: main: 4" in md and "widths: [64, 64]" in md
    for cmd in ("run", "report"):
        assert "control check: " in STDOUT[cmd] and "digits mlp W1A1 common: " in STDOUT[cmd]


@pytest.mark.skipif(not CONTROL, reason="the frozen control estimator is not registered yet")
def test_real_suite_lift_matches_the_runs(reported):
    """The lift column of a real tiny suite equals the paired differences of the MLflow runs it was made from."""
    import numpy as np

    truth = _truth(reported)
    ctl = truth[truth.estimator == "frozen"].set_index("seed").top1
    lb = pd.read_csv(reported / "leaderboard.csv")
    for est in ("ste", "reste", "vispa"):
        mine = truth[truth.estimator == est].set_index("seed").top1
        d = (mine - ctl).dropna().to_numpy()
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        row = lb[lb.estimator == est].iloc[0]
        assert row.lift_n_pairs == len(d) == 3
        assert row.lift_vs_control == pytest.approx(float(np.mean(d)))
        assert (row.lift_ci95_low, row.lift_ci95_high) == pytest.approx((d.mean() - half, d.mean() + half))

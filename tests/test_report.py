"""binbench report: numbers in the tables equal what the MLflow runs hold; each trial counts once."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from scipy import stats

from .conftest import REPO

SUITE = {"name": "reportme", "grid": {"estimators": ["ste", "reste", "vispa"], "models": ["mlp"],
                                      "datasets": ["digits"], "seeds": [0, 1, 2]},
         "fp_baseline": True, "defaults": {"epochs": 3, "model_args": {"hidden": [64, 64]}},
         "overrides": {"biper": {"epochs": 4}, "vispa": {"estimator_hparams": {"samples": 3}}}}


def cli(*args):
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ), timeout=600)


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    path = tmp / "reportme.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    res = tmp / "res"
    for extra in ([], [], ["--resume"]):  # run, repeat (every trial twice), then resume (nothing left)
        out = cli("suite", "run", str(path), "--results-dir", str(res), *extra)
        assert out.returncode == 0, out.stderr[-2000:]
    assert "already ended, 0 to run" in out.stdout
    out = cli("report", str(path), "--results-dir", str(res))
    assert out.returncode == 0, out.stderr[-2000:]
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
    assert len(df) == 2 * 12  # every trial ran twice (the repeat), none ran in the resume
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

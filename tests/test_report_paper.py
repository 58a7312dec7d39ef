"""The report as a paper takes it: leaderboard.tex compiles in a two-column article, every value is escaped,
the paired table's p-values are scipy's paired t-tests with Holm's adjustment, methods go by display name."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from .conftest import REPO

#: a suite name that would be live LaTeX, Markdown and HTML if any writer forgot to escape it
EVIL = "evil\n\\input{/etc/hostname} $x^2$ 100% _#&~ <script>alert(1)</script> | *b*"
SEEDS = (0, 1, 2)
#: final top-1 per (bits, estimator) and seed; resnet20 on cifar10 has published numbers for irnet and reste
TOP1 = {("W1A1", "frozen"): [60.0, 61.0, 59.5], ("W1A1", "ste"): [80.1, 81.3, 79.9],
        ("W1A1", "irnet"): [82.0, 82.4, 81.1], ("W1A1", "reste"): [80.3, 81.0, 80.8],
        ("W1A1", "clipped_ste"): [81.0, 80.2, 80.0],
        ("W1A32", "frozen"): [85.0, 85.5, 84.9], ("W1A32", "ste"): [88.0, 88.4, 87.5],
        ("W1A32", "irnet"): [88.9, 89.0, 88.1], ("FP32", "fp"): [91.0, 91.4, 90.8]}


def _trial(client, exp_id: str, suite: str, bits: str, est: str, seed: int, top1: float) -> None:
    role = {"fp": "baseline", "frozen": "control"}.get(est, "method")
    tags = {"binbench.kind": "trial", "binbench.key": f"c-r20-{bits}-{est}-s{seed}", "binbench.status": "finished",
            "suite": suite, "estimator": est, "recipe": "common", "model": "resnet20", "dataset": "cifar10",
            "bits": bits, "seed": str(seed), "role": role, "git_commit": "abc123", "headline_mode": "default",
            "stage_epochs": "main: 2", "hardware.cpu": "CPU & {co}", "hardware.gpu": "none"}
    rid = client.create_run(exp_id, run_name=tags["binbench.key"], tags=tags).info.run_id
    for k, v in {"epochs": "2", "batch_size": "64", "lr": "0.1", "optimizer": "sgd", "lr_schedule": "cosine"}.items():
        client.log_param(rid, k, v)
    for step in range(2):
        client.log_metric(rid, "test_top1", top1 - 2 + 2 * step, step=step)
        client.log_metric(rid, "stage", 0, step=step)
        if role != "baseline":
            for layer in (1, 4):
                client.log_metric(rid, f"diag/{layer}/flip", 0.01 / (step + 1) * layer, step=step)
                client.log_metric(rid, f"diag/{layer}/qe", 0.1 * (step + 1) + layer, step=step)
    client.log_metric(rid, "top1", top1, step=2)
    client.set_terminated(rid, "FINISHED")


@pytest.fixture(scope="module")
def paper(tmp_path_factory) -> tuple[object, Path]:
    from mlflow.tracking import MlflowClient

    from bench.report import collect, write_tables

    res = tmp_path_factory.mktemp("paper")
    uri = f"sqlite:///{res / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(EVIL)
    for (bits, est), values in TOP1.items():
        for seed, top1 in zip(SEEDS, values, strict=True):
            _trial(client, exp_id, EVIL, bits, est, seed, top1)
    c = collect(uri, EVIL)
    write_tables(c, res)
    return c, res


def _tabular(tex: str) -> str:
    return tex[tex.index("\\begin{tabular}"):tex.index("\\end{tabular}")]


def test_tex_is_a_booktabs_siunitx_pivot_with_display_names(paper):
    _c, res = paper
    tex = (res / "leaderboard.tex").read_text()
    assert tex.startswith("% needs \\usepackage{booktabs}\n% needs \\usepackage{siunitx}\n")
    body = _tabular(tex)
    assert "\\toprule" in body and "\\midrule" in body and "\\bottomrule" in tex
    for name in ("STE", "Clipped STE (BNN)", "IR-Net", "ReSTE", "control (frozen)", "FP"):
        assert f"\n{name} &" in body, name
    assert "clipped\\_ste" not in body and "irnet" not in body
    # rows: methods; columns: network then bits; S columns for mean +- std, one published column per bits
    assert "{resnet20}" in body and "{W1A1}" in body and "{W1A32" in body
    assert body.count("S[table-format=3.2(2.2)]") == 2 and body.count("S[table-format=3.2]") == 2
    irnet = [x for x in body.splitlines() if x.startswith("IR-Net &")][0]
    mean, sd = sum(TOP1[("W1A1", "irnet")]) / 3, pd.Series(TOP1[("W1A1", "irnet")]).std()
    assert f"\\bfseries {mean:.2f} \\pm {sd:.2f}" in irnet and "86.5" in irnet  # best of W1A1; BiPer Table 3
    assert "\\caption{" in tex and "3 seeds (0, 1, 2)" in tex and "budget resnet20: 2 epochs" in tex
    assert "CPU \\& \\{co\\}" in tex and "\\label{tab:binbench-evil-input-etc-hostname" in tex
    assert "made by: " in tex  # the provenance comment lines stay


def test_no_live_markup_from_a_suite_name(paper):
    _c, res = paper
    tex = (res / "leaderboard.tex").read_text()
    live = "\n".join(x for x in tex.splitlines() if not x.startswith("% "))  # comment lines stay comments
    assert "\\input{" not in live and "\\textbackslash{}input\\{/etc/hostname\\}" in live
    for line in tex.splitlines():  # a newline in the name must not end a comment line and start a live one
        assert not line.startswith("\\input") and not line.startswith("evil")
    md = (res / "leaderboard.md").read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert md.splitlines()[0].startswith("# evil \\\\input{/etc/hostname}") and "\\| \\*b\\*" in md.splitlines()[0]


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex is not installed (apt-get install texlive-latex-extra texlive-science): the "
                           "two-column compile check of leaderboard.tex did not run")
@pytest.mark.parametrize("variant", ["as written", "one column", "three networks"])
def test_tex_compiles_in_a_two_column_article_without_overfull_boxes(paper, tmp_path, variant):
    """As written (two bits columns with their published columns: too wide for one column, so table*); without
    published numbers (fits one column: table); with two more networks (table*, still within the page)."""
    from bench.report import latex, leaderboard

    c, res = paper
    lb = leaderboard(c)
    if variant == "one column":
        lb = lb.assign(published=math.nan)
    elif variant == "three networks":
        lb = pd.concat([lb, lb.assign(network="vgg\\_small & {x}", published=math.nan), lb.assign(network="r18")])
    if variant == "as written":
        shutil.copy(res / "leaderboard.tex", tmp_path / "leaderboard.tex")
    else:
        (tmp_path / "leaderboard.tex").write_text(latex.render(lb, EVIL, "a caption", [], []))
    text = (tmp_path / "leaderboard.tex").read_text()
    assert ("\\begin{table*}" in text) == (variant != "one column")
    (tmp_path / "paper.tex").write_text(
        "\\documentclass[twocolumn]{article}\n\\usepackage{booktabs}\n\\usepackage{siunitx}\n\\begin{document}\n"
        "Text before the table.\n\\input{leaderboard.tex}\nText after it.\n\\end{document}\n")
    out = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape",
                          "paper.tex"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    log = (tmp_path / "paper.log").read_text(errors="replace")
    assert out.returncode == 0, log[-3000:]
    assert "Overfull \\hbox" not in log, re.findall(r"Overfull \\hbox.*", log)
    assert "(/etc/hostname" not in log  # pdflatex opened no file but the table


def test_holm_adjustment():
    from bench.report import holm

    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # 3 x 0.01; 2 x 0.03; max(0.06, 0.04)
    assert holm([0.5, math.nan, 0.4]) == pytest.approx([0.8, math.nan, 0.8], nan_ok=True)  # nan: out of family
    assert holm([0.9, 0.8]) == [1.0, 1.0]


def test_paired_p_values_are_scipy_paired_t_tests_holm_adjusted(paper):
    from bench.report import holm

    _c, res = paper
    pr = pd.read_csv(res / "paired.csv")
    cell = pr[pr.bits == "W1A1"].set_index("estimator")
    methods = ["clipped_ste", "irnet", "reste"]  # the family vs ste: every method but ste (and not the control)
    raw = [stats.ttest_rel(TOP1[("W1A1", e)], TOP1[("W1A1", "ste")]).pvalue for e in methods]
    assert list(cell.loc[methods, "p_vs_ste"]) == pytest.approx(raw)
    assert list(cell.loc[methods, "p_holm_vs_ste"]) == pytest.approx(holm(raw))
    fam = ["clipped_ste", "irnet", "reste", "ste"]
    raw_ctl = [stats.ttest_rel(TOP1[("W1A1", e)], TOP1[("W1A1", "frozen")]).pvalue for e in fam]
    assert list(cell.loc[fam, "p_holm_vs_control"]) == pytest.approx(holm(raw_ctl))
    assert math.isnan(cell.loc["frozen", "p_holm_vs_control"]) and math.isnan(cell.loc["ste", "p_vs_ste"])
    md = (res / "leaderboard.md").read_text()
    assert "p (Holm)" in md and "Holm-adjusted across the methods of the cell" in md


def test_no_estimator_name_is_hard_coded_in_the_report():
    from bench.estimator import ESTIMATORS

    src = "".join(p.read_text() for p in (REPO / "bench" / "report").glob("*.py"))
    for name in ESTIMATORS.names():
        shown = ESTIMATORS.get(name).display_name
        if shown != name:  # as a string literal: prose (docstrings, BiPer's own QE figure) may name a method
            assert f'"{shown}"' not in src and f"'{shown}'" not in src, shown

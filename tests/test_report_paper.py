"""The report as a paper takes it: leaderboard.tex in BiPer's layout compiles in a two-column article, bold only
where a paired interval says so, every value is escaped, no machine path in any file, the paired table's p-values
are scipy's paired t-tests with Holm's adjustment, methods go by display name; the figures' inputs (sizes, fonts,
ranges, scales, styles) as a reviewer checks them."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from .conftest import REPO

#: a suite name that would be live LaTeX, Markdown and HTML if any writer forgot to escape it
EVIL = "evil\n\\input{/etc/hostname} $x^2$ 100% _#&~ <script>alert(1)</script> | *b*"
SEEDS = (0, 1, 2)
HIST = {"edges": [-0.2, -0.1, 0.0, 0.1, 0.2], "epochs": {"1": [1, 5, 5, 1], "2": [3, 2, 2, 3]}}
#: final top-1 per (bits, estimator) and seed; resnet20 on cifar10 has published numbers for irnet and reste
TOP1 = {("W1A1", "frozen"): [60.0, 61.0, 59.5], ("W1A1", "ste"): [80.1, 81.3, 79.9],
        ("W1A1", "irnet"): [82.0, 82.4, 81.1], ("W1A1", "reste"): [80.3, 81.0, 80.8],
        ("W1A1", "clipped_ste"): [81.0, 80.2, 80.0],
        ("W1A32", "frozen"): [85.0, 85.5, 84.9], ("W1A32", "ste"): [88.0, 88.4, 87.5],
        ("W1A32", "irnet"): [88.9, 89.0, 88.1], ("FP32", "fp"): [91.0, 91.4, 90.8]}


#: per-layer diagnostics the fake runs log: a layer's scale in the values -> its path in resnet20 (logged in the
#: reverse of the model's order, so the heatmap must order them itself)
LAYERS = {4: "layers.8.conv2", 1: "layers.0.conv1"}


def _trial(client, exp_id: str, suite: str, bits: str, est: str, seed: int, top1: float) -> None:
    role = {"fp": "baseline", "frozen": "control"}.get(est, "method")
    tags = {"binbench.kind": "trial", "binbench.key": f"c-r20-{bits}-{est}-s{seed}", "binbench.status": "finished",
            "suite": suite, "estimator": est, "recipe": "common", "model": "resnet20", "dataset": "cifar10",
            "bits": bits, "seed": str(seed), "role": role, "git_commit": "abc123", "headline_mode": "default",
            "stage_epochs": "main: 2", "hardware.cpu": "CPU & {co}", "hardware.gpu": "none"}
    from mlflow.entities import Metric, Param

    rid = client.create_run(exp_id, run_name=tags["binbench.key"], tags=tags).info.run_id
    now = int(time.time() * 1000)
    params = [Param(k, v) for k, v in {"epochs": "2", "batch_size": "64", "lr": "0.1", "optimizer": "sgd",
                                       "lr_schedule": "cosine"}.items()]
    metrics = []
    for step in range(2):
        metrics += [Metric("test_top1", top1 - 2 + 2 * step, now, step), Metric("stage", 0, now, step)]
        if role != "baseline":
            # the mean flip ratio over layers: 0 for the control (its signs never move), decades apart otherwise
            metrics.append(Metric("diag/flip", 0.0 if role == "control" else 0.01 / 10 ** step, now, step))
            for layer, name in LAYERS.items():  # by layer path, as runs log them (diag/<path>/<metric>)
                metrics += [Metric(f"diag/{name}/flip", 0.01 / (step + 1) * layer, now, step),
                            Metric(f"diag/{name}/qe", 0.1 * (step + 1) + layer, now, step)]
        metrics.append(Metric("lr", 2.78e-07 * (2 - step), now, step))  # the schedule's lr, ~0 at the end
    metrics.append(Metric("top1", top1, now, 2))
    client.log_batch(rid, metrics=metrics, params=params)  # one store write per run, not one per value
    client.set_terminated(rid, "FINISHED")


@pytest.fixture(scope="module")
def paper(tmp_path_factory) -> tuple[object, Path]:
    from mlflow.tracking import MlflowClient

    from bench.report import collect, write_tables

    res = tmp_path_factory.mktemp("paper")
    uri = f"sqlite:///{res / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(EVIL, artifact_location=(res / "artifacts").as_uri())
    for (bits, est), values in TOP1.items():
        for seed, top1 in zip(SEEDS, values, strict=True):
            _trial(client, exp_id, EVIL, bits, est, seed, top1)
    irnet = client.search_runs([exp_id], "tags.estimator = 'irnet'")[0].info.run_id
    client.log_dict(irnet, HIST, "latent_hist.json")
    parent = client.create_run(exp_id, tags={"binbench.kind": "suite", "command": f"binbench suite run x "
                                             f"--results-dir {res}/store --data-root /srv/data/cifar10"})
    client.set_terminated(parent.info.run_id, "FINISHED")
    c = collect(uri, EVIL)
    write_tables(c, res)
    return c, res


def _tabular(tex: str) -> str:
    return tex[tex.index("\\begin{tabular}"):tex.index("\\end{tabular}")]


def _bold_set(bits: str) -> set[str]:
    """Independently: the best method by mean, and every method it does not beat with a paired 95% t-interval
    above 0 (scipy), as the display names the table prints."""
    names = {"irnet": "IR-Net", "ste": "STE", "reste": "ReSTE", "clipped_ste": "Clipped STE (BNN)"}
    methods = [e for (b, e) in TOP1 if b == bits and e in names]
    best = max(methods, key=lambda e: sum(TOP1[(bits, e)]))
    out = {best}
    for e in methods:
        d = [x - y for x, y in zip(TOP1[(bits, best)], TOP1[(bits, e)], strict=True)]
        if e != best and not stats.t.interval(0.95, 2, loc=sum(d) / 3, scale=stats.sem(d))[0] > 0:
            out.add(e)
    return {names[e] for e in out}


def _rows(tabular: str) -> list[list[str]]:
    return [[x.strip() for x in line.rstrip(" \\").split(" & ")] for line in tabular.splitlines() if " & " in line]


def test_tex_is_bipers_table_layout_with_display_names(paper):
    _c, res = paper
    tex = (res / "leaderboard.tex").read_text()
    assert tex.startswith("% needs \\usepackage{booktabs}\n")
    body = _tabular(tex)
    rows = _rows(body)
    assert rows[0] == ["Network", "Method", "W/A", "Top-1 (\\%)", "Pub."]  # BiPer's Table 2 columns
    assert rows[1][:3] == ["resnet20", "FP", "32/32"]  # FP first, the network named on its first row only
    assert all(r[0] == "" for r in rows[2:])
    assert [r[1] for r in rows[2:]] == ["control (frozen)", "Clipped STE (BNN)", "IR-Net", "ReSTE", "STE",
                                        "control (frozen)", "IR-Net", "STE"]
    assert [r[2] for r in rows[2:]] == ["1/1"] * 5 + ["1/32"] * 3
    assert "\\toprule" in body and "\\midrule" in body and "\\cmidrule" in body and "\\bottomrule" in tex
    assert "clipped\\_ste" not in body and "irnet" not in body
    mean, sd = sum(TOP1[("W1A1", "irnet")]) / 3, pd.Series(TOP1[("W1A1", "irnet")]).std()
    irnet = [r for r in rows if r[1] == "IR-Net" and r[2] == "1/1"][0]
    assert irnet[3] == f"{{\\boldmath${mean:.2f} \\pm {sd:.2f}$}}"  # one weight for mean, ± and std
    assert irnet[4] == "86.50"  # BiPer Table 3's IR-Net (published.csv)
    for r in rows[1:]:  # "93.75 ± 0.12": one space each side, no padding inside
        assert re.fullmatch(r"(\{\\boldmath)?\$(\\phantom\{0\})?\d+\.\d\d \\pm \d+\.\d\d\$\}?", r[3]), r[3]


def test_tex_bolds_only_what_a_paired_interval_separates(paper):
    _c, res = paper
    tex = (res / "leaderboard.tex").read_text()
    rows = _rows(_tabular(tex))
    for bits, wa in (("W1A1", "1/1"), ("W1A32", "1/32")):
        bold = {r[1] for r in rows[1:] if r[2] == wa and "boldmath" in r[3]}
        assert bold == _bold_set(bits), bits
    assert _bold_set("W1A32") == {"IR-Net"} and len(_bold_set("W1A1")) > 1  # the data has one of each
    note = tex[tex.index("Bold: the best method"):]
    assert "tied leaders share the bold (resnet20 1/1: " in note and "1/32" not in note.split("\n")[0]


def test_tex_caption_says_budget_and_seeds_never_the_machine(paper):
    _c, res = paper
    tex = (res / "leaderboard.tex").read_text()
    captions = re.findall(r"\\caption\{(.*)\}", tex)
    assert len(captions) == 2  # the BiPer-style table and the pivot
    for cap in captions:
        assert "3 seeds (0, 1, 2)" in cap and "budget resnet20: 2 epochs" in cap
        assert "CPU" not in cap and "hardware" not in cap
    comments = "\n".join(x for x in tex.splitlines() if x.startswith("% "))
    assert "hardware: CPU & {co}" in comments and "made by: " in comments  # provenance in the comment block
    assert "\\label{tab:binbench-evil-input-etc-hostname" in tex and "-pivot}" in tex
    pivot = _tabular(tex[tex.index("-pivot}"):])
    assert "\\multicolumn{2}{c}{resnet20}" in pivot and "Method & 1/1 & 1/32" in pivot


def test_no_absolute_path_in_any_report_file(paper, figures):
    from bench.report import tables, write_html

    c, res = paper
    write_html(c, tables(c, res), res, list(figures.values()))
    for f in res.rglob("*"):
        if f.suffix in (".md", ".tex", ".csv", ".html", ".txt"):
            text = f.read_text(encoding="utf-8")
            assert str(res) not in text and "/srv/data" not in text, f.name
    md = (res / "leaderboard.md").read_text()
    assert "--results-dir store --data-root .../cifar10" in md  # relative to the results folder, else elided
    assert "tracking store: sqlite:///mlflow.db" in md


def test_no_live_markup_from_a_suite_name(paper):
    _c, res = paper
    tex = (res / "leaderboard.tex").read_text()
    live = "\n".join(x for x in tex.splitlines() if not x.startswith("% "))  # comment lines stay comments
    assert "\\input{" not in live and "\\textbackslash{}input\\{/etc/hostname\\}" in live
    for line in tex.splitlines():  # a newline in the name must not end a comment line and start a live one
        assert not line.startswith("\\input") and not line.startswith("evil")
    md = (res / "leaderboard.md").read_text()
    assert "<script>" not in md and "&lt;script>" in md
    assert md.splitlines()[0].startswith("# evil \\\\input{/etc/hostname}") and "\\| \\*b\\*" in md.splitlines()[0]


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex is not installed (apt-get install texlive-latex-base texlive-latex-recommended "
                           "texlive-science; .ci/run does so where it can): the two-column compile check of "
                           "leaderboard.tex did not run")
@pytest.mark.parametrize("variant", ["as written", "one column", "three networks"])
def test_tex_compiles_in_a_two_column_article_without_overfull_boxes(paper, tmp_path, variant):
    """As written (the BiPer-style table and the pivot with published numbers); without published numbers (one
    column: table); with two more networks, one with a long name of LaTeX specials."""
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
    if variant == "one column":
        assert "\\begin{table*}" not in text
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


# -- figures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def figures(paper):
    from bench.report import write_figures

    c, res = paper
    return {p.name: p for p in write_figures(c, res / "figs")}


def _finished(c):
    from bench.report.figures import _labelled

    return _labelled(c.runs[c.runs.status == "finished"])


def test_final_top1_bars_are_the_tables_t_intervals(paper):
    from bench.report.figures import _fig_final, styles

    c, _res = paper
    runs = _finished(c)
    fig = _fig_final(runs, styles(runs))
    panels = {ax.get_title().split("\n")[0]: ax for ax in fig.axes}
    ax = panels["resnet20 W1A1"]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    for k, bars in enumerate(ax.containers):
        (lo, _), (hi, _) = bars.lines[2][0].get_segments()[0]
        est = {"IR-Net": "irnet", "STE": "ste", "ReSTE": "reste", "Clipped STE (BNN)": "clipped_ste",
               "control (frozen)": "frozen"}[labels[k]]  # the control's row only where it lies near the methods
        v = TOP1[("W1A1", est)]
        want = stats.t.interval(0.95, len(v) - 1, loc=sum(v) / 3, scale=stats.sem(v))  # not a bootstrap
        assert (lo, hi) == pytest.approx(want)
    assert len(ax.containers) == len(labels) == 4  # the four methods; the control lies far off (named instead)


def test_every_final_top1_panel_shows_or_names_its_references(paper):
    """Each panel has its own x-range set by its methods (a shared x-axis lost the FP line); FP and the control
    are drawn where they lie near it, else named in the panel's title, never silently cut off."""
    from bench.report.figures import _fig_final, styles

    c, _res = paper
    runs = _finished(c)
    fig = _fig_final(runs, styles(runs))
    fp = sum(TOP1[("FP32", "fp")]) / 3
    legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    for ax in fig.axes:
        bits = ax.get_title().split("\n")[0].split()[-1]
        lo, hi = ax.get_xlim()
        ests = [e for (b, e) in TOP1 if b == bits and e not in ("frozen", "fp")]
        assert lo <= min(min(TOP1[(bits, e)]) for e in ests) - 1 and max(max(TOP1[(bits, e)]) for e in ests) <= hi
        for name, v in (("FP", fp), ("control", sum(TOP1[(bits, "frozen")]) / 3)):
            drawn = [ln for ln in ax.get_lines() if ln.get_label() == f"{name} mean"]
            if drawn:
                assert lo <= v <= hi and drawn[0].get_xdata()[0] == pytest.approx(v)
                assert f"{name} mean" in legend, (name, legend)  # a drawn line is named
            else:
                assert f"{name} {v:.3g}" in ax.get_title(), (name, ax.get_title())
        assert ax.get_shared_x_axes().get_siblings(ax) == [ax]
    assert any("control" in ax.get_title() for ax in fig.axes)  # the data's control lies far below: named


def test_a_reference_line_drawn_in_a_final_top1_panel_is_named_in_the_legend(paper):
    """The FP baseline moved among the methods: its dotted line is drawn, and named under the panels."""
    from bench.report.figures import _fig_final, styles

    c, _res = paper
    runs = _finished(c)
    near = runs[runs.role == "method"].top1.median()
    runs = runs.assign(top1=runs.top1.where(runs.role != "baseline", near))
    fig = _fig_final(runs, styles(runs))
    assert any(ln.get_label() == "FP mean" for ax in fig.axes for ln in ax.get_lines())
    assert "FP mean" in [t.get_text() for lg in fig.legends for t in lg.get_texts()]


def test_curves_show_two_epoch_runs_as_points_on_integer_ticks(paper):
    from bench.report.figures import _curves, _fig_lines, styles

    c, _res = paper
    runs = _finished(c)
    cur = _curves(c, runs)
    fig = _fig_lines(cur[cur.test_top1.notna()], "test_top1", "top-1", styles(runs))
    ax = fig.axes[0]
    ste = [line for line in ax.get_lines() if line.get_label() == "STE"][0]
    assert list(ste.get_xdata()) == [1, 2] and ste.get_marker() not in ("None", "", None)
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_accuracy_range_is_set_by_the_methods_and_references_stay_visible(paper):
    """The control (60%) sits 20 points under the methods (80-82% at the end): the y-range is the methods', the
    FP line (91%) is drawn where it is close enough or named at the panel's edge, the control is named there."""
    from bench.report.figures import _curves, _fig_lines, styles

    c, _res = paper
    runs = _finished(c)
    cur = _curves(c, runs)
    fig = _fig_lines(cur[cur.test_top1.notna()], "test_top1", "top-1", styles(runs))
    ax = [a for a in fig.axes if a.get_title().startswith("resnet20 W1A1")][0]
    lo, hi = ax.get_ylim()
    final = {e: sum(TOP1[("W1A1", e)]) / 3 for e in ("ste", "irnet", "reste", "clipped_ste")}
    assert lo <= min(final.values()) - 2 and max(final.values()) <= hi  # every method's curve (epoch 2 at -0)
    control = sum(TOP1[("W1A1", "frozen")]) / 3
    assert lo > control  # the control does not set the range ...
    title = " ".join(ax.get_title().split())
    assert f"control {control:.3g} ↓" in title  # ... and is named in the title (text in the panel covers data)
    fp = sum(TOP1[("FP32", "fp")]) / 3
    fp_lines = [ln for ln in ax.get_lines() if ln.get_label() == "FP (final)"]
    assert (fp_lines and fp_lines[0].get_ydata()[0] == pytest.approx(fp)) or f"FP {fp:.3g} ↑" in title
    assert not ax.texts


def test_stage_boundaries_come_from_the_recorded_stages():
    import matplotlib

    matplotlib.use("Agg")
    from bench.report.figures import _fig_lines

    rows = [{"display": "Two stages", "role": "method", "model": "m", "bits": "W1A1", "seed": 0, "epoch": e,
             "test_top1": 10.0 * e, "stage": float(e > 3), "stage_epochs": "warm: 3, cold: 2"} for e in range(1, 6)]
    rows += [{**r, "display": "One stage", "stage": 0.0, "stage_epochs": "main: 5"} for r in rows]
    sty = {"Two stages": {"color": "C0", "marker": "o", "ls": "-"}, "One stage": {"color": "C1", "marker": "s",
                                                                                  "ls": "--"}}
    ax = _fig_lines(pd.DataFrame(rows), "test_top1", "top-1", sty).axes[0]
    verticals = [(line.get_xdata()[0], line.get_label()) for line in ax.get_lines()
                 if len(set(line.get_xdata())) == 1]
    # between epoch 3 (warm) and 4 (cold), named in the legend; nothing for the one-stage method
    assert verticals == [(3.5, "Two stages stages: warm | cold")]


def test_each_method_keeps_one_style_in_every_report():
    """A method's style comes from its estimator and the registry, never from which methods a suite ran; the
    built-in methods differ in hue and in marker (BiPer/DSQ and ReCU/ReSTE shared hues before)."""
    from bench.estimator import ESTIMATORS
    from bench.report.figures import styles

    methods = [n for n in ESTIMATORS.names() if ESTIMATORS.entry(n).source == "builtin"
               and ESTIMATORS.get(n).role == "method" and not n.startswith("test_")]
    full = pd.DataFrame({"display": methods, "role": "method", "estimator": methods})
    sty = styles(full)
    assert len({s["color"] for s in sty.values()}) == len(methods)
    assert len({s["marker"] for s in sty.values()}) == len(methods)
    few = styles(full[full.estimator.isin(["ste", "recu"])])  # another suite with two of them
    assert few["ste"] == sty["ste"] and few["recu"] == sty["recu"]
    a, b = sty["ste"], sty["clipped_ste"]
    assert a["color"] != b["color"] and a["marker"] != b["marker"] and a["ls"] != b["ls"]
    plugin = styles(pd.DataFrame({"display": ["Mine"], "role": ["method"], "estimator": ["my_plugin"]}))["Mine"]
    again = styles(pd.DataFrame({"display": ["Mine"], "role": ["method"], "estimator": ["my_plugin"]}))["Mine"]
    assert plugin == again and plugin["fill"] is False  # deterministic, hollow: told apart from a built-in


def test_layer_heatmap_holds_the_per_layer_metrics_by_layer_name(paper, figures):
    from bench.report.figures import _curves, _fig_layers
    from bench.report.layers import layer_frame

    c, _res = paper
    assert "layer_diagnostics_resnet20_W1A1.png" in figures and "layer_diagnostics_resnet20_W1A32.png" in figures
    lay = layer_frame(_curves(c, _finished(c)))
    fig = _fig_layers(lay, "resnet20", "W1A1")
    heat = [ax for ax in fig.axes if ax.images]
    row = [ax for ax in heat if ax.get_ylabel() == "IR-Net"] + [heat[heat.index(
        [ax for ax in heat if ax.get_ylabel() == "IR-Net"][0]) + 1]]
    flip, qe = (ax.images[0].get_array() for ax in row[:2])
    # as logged: flip 0.01 / (step + 1) * layer, qe 0.1 * (step + 1) + layer; layers in the model's order
    assert flip.ravel().tolist() == pytest.approx([0.01, 0.005, 0.04, 0.02])
    assert qe.ravel().tolist() == pytest.approx([1.1, 1.2, 4.1, 4.2])
    assert [t.get_text() for t in row[0].get_yticklabels()] == ["layers.0.conv1", "layers.8.conv2"]
    for metric_col in (0, 1):  # one colour scale per metric for the whole figure, on a log norm
        norms = {(ax.images[0].norm.vmin, ax.images[0].norm.vmax, type(ax.images[0].norm).__name__)
                 for ax in heat if heat.index(ax) % 2 == metric_col}
        assert len(norms) == 1 and next(iter(norms))[2] == "LogNorm"
    assert len([ax for ax in fig.axes if not ax.images and ax.get_label() == "<colorbar>"]) == 2


def test_old_stores_numeric_layer_keys_map_to_the_models_layer_names():
    from bench.report.layers import binary_layer_paths, layer_names

    paths = binary_layer_paths("mlp", "mnist", "W1A1", '{"hidden": "[256, 256]", "binarize_first_last": "True"}')
    assert [p for _n, p in paths] == ["linear1", "linear2", "linear3"]
    assert layer_names(["7", "1", "4"], paths) == {"1": (0, "linear1"), "4": (1, "linear2"), "7": (2, "linear3")}
    assert layer_names(["linear2", "linear1"], paths) == {"linear1": (0, "linear1"), "linear2": (1, "linear2")}


def test_final_lr_metric_does_not_overwrite_the_lr_param_and_no_search_draws_no_sensitivity(paper, figures):
    c, _res = paper
    assert set(c.runs["lr"]) == {"0.1"}  # the param, not the last epoch's 2.78e-07
    assert "sensitivity.png" not in figures  # a suite without a search has no sensitivity figure


def test_figures_are_print_sized_with_legible_text_and_no_legend_over_data(paper):
    """Every figure one or two columns wide, no text under 7 pt, legends outside the panels; flip ratio and the
    heatmaps on log scales."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.text import Text

    from bench.report import figures as F
    from bench.report import style

    c, res = paper
    drawn: dict[str, object] = {}
    F.style.apply()
    F._draw_all(c, lambda fig, name: drawn.setdefault(name, fig))
    assert {"accuracy_curves", "final_top1", "flip_ratio", "estimators", "layer_diagnostics_resnet20_W1A1",
            "surrogates"} <= set(drawn)
    for name, fig in drawn.items():
        assert round(fig.get_figwidth(), 2) in (style.ONE_COLUMN, style.TWO_COLUMN), name
        small = [t.get_text() for t in fig.findobj(Text) if t.get_text() and t.get_fontsize() < 7]
        assert not small, (name, small[:5])
        assert all(ax.get_legend() is None for ax in fig.axes), name
    assert all(ax.get_yscale() == "log" for ax in drawn["flip_ratio"].axes)


def test_surrogates_over_stored_histograms_only(paper, figures):
    from bench.report.figures import latent_histograms

    c, _res = paper
    runs = _finished(c)
    hists = latent_histograms(c, runs)
    assert set(hists) == {"IR-Net"} and hists["IR-Net"]["first"] == ("1", [1, 5, 5, 1])
    assert hists["IR-Net"]["last"] == ("2", [3, 2, 2, 3])
    assert "surrogates.png" in figures


# -- complexity --------------------------------------------------------------------------------------------------
def test_complexity_counts_match_the_layer_formulas():
    """convnet on CIFAR-10 (32x32x3): a full-precision 3x3 conv 3->32, binary 3x3 convs 32->64 at 16x16 and
    64->128 at 8x8 (each after a 2x2 max-pool), a full-precision linear 128->10; batch norms after each conv."""
    from bench.report import complexity

    fp_conv, b1, b2, fc = 32 * 32 * 32 * 3 * 9, 16 * 16 * 64 * 32 * 9, 8 * 8 * 128 * 64 * 9, 128 * 10
    for bits, bops, flops in (("W1A1", b1 + b2, fp_conv + fc), ("W1A32", 0, fp_conv + b1 + b2 + fc)):
        net, shape = complexity.build("convnet", "cifar10", bits, {})
        t = complexity.totals(complexity.layers(net, shape))
        assert t["bops"] == bops and t["flops"] == flops and t["ops"] == pytest.approx(bops / 64 + flops)
        assert t["binary_layers"] == 2 and t["fp_layers"] == 2
        assert t["params_binary"] == (32 * 64 + 64 * 128) * 9
        fp_params = 3 * 32 * 9 + 2 * (32 + 64 + 128) + 128 * 10 + 10  # first conv, batch-norm affine, fc
        assert t["params_fp"] == fp_params and t["memory_bits"] == t["params_binary"] + 32 * fp_params
    net, shape = complexity.build("convnet", "cifar10", "FP32", {})
    assert complexity.totals(complexity.layers(net, shape))["binary_layers"] == 0


def test_complexity_table_is_written_per_network(paper):
    _c, res = paper
    cx = pd.read_csv(res / "complexity.csv")
    assert set(cx.bits) == {"W1A1", "W1A32", "W32A32"} and set(cx.network) == {"resnet20"}
    w1a1 = cx[cx.bits == "W1A1"].iloc[0]
    assert w1a1.bops > 0 and w1a1.ops == pytest.approx(w1a1.bops / 64 + w1a1.flops)
    assert cx[cx.bits == "W32A32"].iloc[0].bops == 0
    md = (res / "complexity.md").read_text()
    assert "| resnet20 | W1A1 |" in md and "OPs = BOPs/64 + FLOPs" in md and "<script>" not in md


# -- report.html --------------------------------------------------------------------------------------------------
def test_html_report_is_self_contained_sortable_and_escaped(paper, figures):
    from html.parser import HTMLParser

    from bench.report import tables, write_html
    from bench.report.html import SORT_JS

    c, res = paper
    path = write_html(c, tables(c, res), res, list(figures.values()))
    page = path.read_text(encoding="utf-8")

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.srcs, self.hrefs, self.ids, self.scripts = [], [], [], set(), []
            self.captions, self._in = [], None

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            a = dict(attrs)
            self.srcs += [a["src"]] if "src" in a else []
            self.hrefs += [a["href"]] if "href" in a else []
            self.ids |= {a["id"]} if "id" in a else set()
            self._in = tag

        def handle_data(self, data):
            if self._in == "script":
                self.scripts.append(data)
            if self._in == "figcaption":
                self.captions.append(data)

        def handle_endtag(self, tag):
            self._in = None

    p = Tags()
    p.feed(page)
    assert "link" not in p.tags and p.tags.count("script") == 1 and p.scripts == [SORT_JS]  # ours, inline
    pngs = [f for f in figures.values() if f.suffix == ".png"]
    assert len(p.srcs) == len(pngs) and all(s.startswith("data:image/png;base64,") for s in p.srcs)
    assert p.hrefs and all(h.startswith("#") and h[1:] in p.ids for h in p.hrefs)  # contents: in-page links only
    assert "nav" in p.tags and page.count('class="sortable"') >= 3
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert len(p.captions) == len(pngs)
    assert all(not cap.strip().endswith(".png") and len(cap) > 40 for cap in p.captions)  # says what it shows
    assert any(cap.startswith("Per-layer flip ratio and QE per epoch (resnet20 W1A1)") for cap in p.captions)
    for part in ("made by: ", "git commit(s): abc123", "seeds: 0, 1, 2", "hardware: CPU &amp; {co}", "IR-Net",
                 "Model complexity", "OPs", "p (Holm)", "layer_diagnostics_resnet20_W1A1.png"):
        assert part in page, part


def test_escapes_leave_no_markup():
    from bench.report import escape

    raw = "a\\b{c}$d&e%f#g_h^i~j\nk\rl\u2028m é 中"
    assert escape.latex(raw) == ("a\\textbackslash{}b\\{c\\}\\$d\\&e\\%f\\#g\\_h\\textasciicircum{}i"
                                 "\\textasciitilde{}j k l m e ?")
    assert escape.latex_comment("x\ny\rz\u2029w") == "% x y z w"
    assert escape.markdown("a|b\nc`d*e<f](g)\\") == "a\\|b c\\`d\\*e&lt;f]\\(g)\\\\"
    assert escape.html('<a href="x">&') == "&lt;a href=&quot;x&quot;&gt;&amp;"


def test_complexity_of_a_network_not_installed_is_a_note_not_a_traceback():
    from bench.report import complexity

    runs = pd.DataFrame({"dataset": ["cifar10"], "model": ["no_such_net"], "bits": ["W1A1"], "model_args": ["{}"]})
    summ = complexity.summary(runs)
    assert "no_such_net" in summ.iloc[0]["error"]
    md = complexity.markdown(summ, "s")
    assert "| cifar10 | no_such_net | W1A1 | – |" in md and "unknown model" in md

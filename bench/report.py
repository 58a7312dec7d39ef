"""Reports: tables and figures like the papers', computed from a suite's MLflow runs and nothing else.

Each trial key counts once (its latest finished run), so resumed or repeated suites never double-count.
Tables: ``leaderboard.{md,csv,tex}`` (mean +- std over seeds, n, best-epoch top-1, published numbers and the
delta to them), ``paired.csv`` (each estimator minus ``ste`` over the same seeds, 95% t-interval; ratio to the
FP baseline), ``diagnostics.csv`` (QE, Laplace b, flip ratio at the end of each stage). Figures: accuracy
curves, final top-1 with intervals, BiPer's QE against w0 and the flip ratio, the estimators sheet and, for
suites with a search, the sensitivity spread.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import BinbenchError

#: method names in published.csv for binbench estimators where they differ
PUBLISHED_NAME = {"clipped_ste": "bnn"}
DIAG = ("diag/qe", "diag/laplace_b", "diag/flip")


@dataclass
class Collected:
    suite: str
    uri: str
    runs: pd.DataFrame  # one row per counted trial (finished or diverged)
    curves: pd.DataFrame  # per epoch: run_id, step, stage, test_top1, diag metrics
    parents: list[dict[str, Any]]
    ignored: int  # runs not counted: duplicates, failed, killed, still running


def published_table() -> pd.DataFrame:
    with resources.files("bench.reference").joinpath("published.csv").open() as fh:
        return pd.read_csv(fh)


def collect(uri: str, suite: str, search_keys: tuple[str, ...] = ()) -> Collected:
    """Trial runs of ``suite``: each (cell, seed, searched values) once, its latest finished run (else its latest
    diverged one). Counting by identity rather than by trial key keeps a resumed, repeated or re-keyed suite
    (a newer binbench resolving configs differently) from counting a trial twice."""
    from mlflow.tracking import MlflowClient

    from bench.tracking import KEY_TAG, KIND_TAG, STATUS_TAG, trial_runs

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(suite)
    if exp is None:
        raise BinbenchError(f"no runs of suite {suite!r} in {uri}: run `binbench suite run {suite}` first, or pass "
                            "--results-dir / --tracking-uri where it ran")
    rows = []
    for r in trial_runs(uri, exp.experiment_id):
        t, m, p = r.data.tags, r.data.metrics, r.data.params
        status = "finished" if r.info.status == "FINISHED" else t.get(STATUS_TAG)
        if status not in ("finished", "diverged"):
            continue
        row = {"run_id": r.info.run_id, "key": t.get(KEY_TAG), "estimator": t.get("estimator"), "model": t.get("model"),
               "dataset": t.get("dataset"), "bits": t.get("bits"), "recipe": t.get("recipe"),
               "seed": int(t.get("seed", 0)), "status": status, "start": r.info.start_time, "end": r.info.end_time,
               "headline_mode": t.get("headline_mode", "default"), "git_commit": t.get("git_commit", "?"),
               "cpu": t.get("hardware.cpu", "?"), "gpu": t.get("hardware.gpu", "?"),
               "torch": t.get("version.torch", "?"), "epochs": int(float(p.get("epochs", "nan") or 0)),
               "samples": p.get("estimator_hparams.samples"), "w0": p.get("estimator_hparams.w0"),
               "lr": p.get("lr"), "optimizer": p.get("optimizer"), "lr_schedule": p.get("lr_schedule")}
        for k, v in m.items():
            if "/" not in k or k in DIAG:
                row[k] = v
        row["search_point"] = "|".join(f"{k}={p.get(k)}" for k in search_keys)
        rows.append(row)
    df = pd.DataFrame(rows)
    total = len(trial_runs(uri, exp.experiment_id))
    if df.empty:
        raise BinbenchError(f"suite {suite!r} in {uri} has no finished trial yet")
    # one row per trial key: its latest finished run, else its latest diverged one
    df["rank"] = (df["status"] == "finished").astype(int)
    ident = ["estimator", "model", "dataset", "bits", "recipe", "seed", "search_point"]
    df = df.sort_values(["rank", "start"]).groupby(ident, as_index=False).tail(1).drop(columns="rank")
    curves = []
    for run_id in df["run_id"]:
        per: dict[int, dict[str, float]] = {}
        for metric in ("test_top1", "stage", "epoch", *DIAG):
            for h in client.get_metric_history(run_id, metric):
                per.setdefault(h.step, {})[metric] = h.value
        for step, vals in per.items():
            curves.append({"run_id": run_id, "step": step, **vals})
    curves_df = pd.DataFrame(curves, columns=sorted({"run_id", "step", *(k for c in curves for k in c)}))
    parents = [{"tags": r.data.tags, "start": r.info.start_time}
               for r in client.search_runs([exp.experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'suite'")]
    return Collected(suite, uri, df.reset_index(drop=True), curves_df, parents, total - len(df))


# -- statistics --------------------------------------------------------------------------------------------
def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the two ends of a Student-t confidence interval (nan ends for n < 2)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def method_label(row: pd.Series | dict) -> str:
    if row["estimator"] == "fp":
        return "FP"
    return row["estimator"]


def leaderboard(c: Collected) -> pd.DataFrame:
    df = c.runs
    pub = published_table()
    out = []
    cell = ["dataset", "model", "bits", "recipe", "estimator"]
    for (ds, model, bits, recipe, est), g in df.groupby(cell, sort=False):
        fin = g[g["status"] == "finished"]
        vals = fin["top1"].tolist()
        n = len(vals)
        mean = sum(vals) / n if n else math.nan
        std = pd.Series(vals).std(ddof=1) if n > 1 else math.nan
        w, a = {"W1A1": (1, 1), "W1A32": (1, 32), "FP32": (32, 32)}[bits]
        name = "fp" if est == "fp" else PUBLISHED_NAME.get(est, est)
        hit = pub[(pub.dataset == ds) & (pub.arch == model) & (pub.method == name) & (pub.w_bits == w)
                  & (pub.a_bits == a)]
        published = float(hit.iloc[0]["top1"]) if len(hit) else math.nan
        row = {"dataset": ds, "network": model, "method": method_label({"estimator": est}), "estimator": est,
               "bits": "W32A32" if bits == "FP32" else bits, "recipe": recipe, "n": n, "diverged": int(
                   (g["status"] == "diverged").sum()), "top1_mean": mean, "top1_std": std,
               "best_top1_mean": fin["best_top1"].mean() if n else math.nan,
               "top5_mean": fin["top5"].mean() if "top5" in fin and n else math.nan,
               "published": published, "published_source": hit.iloc[0]["source"] if len(hit) else "",
               "delta": mean - published if not math.isnan(published) else math.nan,
               "eval_mode": fin["headline_mode"].iloc[0] if n else "", "other_modes": ""}
        if n and fin["headline_mode"].iloc[0] != "default":
            head = fin["headline_mode"].iloc[0]
            others = [col[5:] for col in fin.columns if col.startswith("top1_") and col[5:] != head
                      and fin[col].notna().any()]
            row["other_modes"] = "; ".join(f"{m} {fin['top1_' + m].mean():.2f} +- {fin['top1_' + m].std(ddof=1):.2f}"
                                           if n > 1 else f"{m} {fin['top1_' + m].mean():.2f}" for m in others)
            samples = fin["samples"].dropna()
            row["eval_mode"] = f"{head} (L={samples.iloc[0]})" if head == "ensemble" and len(samples) else head
        out.append(row)
    lb = pd.DataFrame(out)
    lb["fp_first"] = (lb["estimator"] != "fp").astype(int)
    lb = lb.sort_values(["dataset", "network", "fp_first", "bits", "recipe", "estimator"]).drop(columns="fp_first")
    lb["best"] = False
    for _, g in lb[lb.estimator != "fp"].groupby(["dataset", "network", "bits", "recipe"]):
        if g["top1_mean"].notna().any():
            lb.loc[g["top1_mean"].idxmax(), "best"] = True
    return lb.reset_index(drop=True)


def paired(c: Collected, baseline: str = "ste") -> pd.DataFrame:
    df = c.runs[c.runs.status == "finished"]
    out = []
    for (ds, model, bits, recipe), g in df.groupby(["dataset", "model", "bits", "recipe"]):
        base = g[g.estimator == baseline].set_index("seed")["top1"]
        fp = df[(df.dataset == ds) & (df.model == model) & (df.estimator == "fp")]["top1"]
        fp_mean = fp.mean() if len(fp) else math.nan
        for est, ge in g.groupby("estimator"):
            if est == "fp":
                continue
            s = ge.set_index("seed")["top1"]
            common = sorted(set(s.index) & set(base.index))
            diffs = [float(s[k] - base[k]) for k in common]
            mean, lo, hi = t_interval(diffs) if diffs and est != baseline else (math.nan, math.nan, math.nan)
            out.append({"dataset": ds, "network": model, "bits": bits, "recipe": recipe, "estimator": est,
                        "n_pairs": len(common) if est != baseline else 0, "diff_vs_" + baseline: mean,
                        "ci95_low": lo, "ci95_high": hi, "ratio_to_fp": s.mean() / fp_mean if fp_mean else math.nan})
    return pd.DataFrame(out)


def diagnostics_table(c: Collected) -> pd.DataFrame:
    if c.curves.empty or "diag/qe" not in c.curves:
        return pd.DataFrame()
    cur = c.curves.merge(c.runs[["run_id", "estimator", "model", "dataset", "bits", "recipe"]], on="run_id")
    cur = cur[cur["diag/qe"].notna()]
    ends = cur.sort_values("step").groupby(["run_id", "stage"], as_index=False).tail(1)
    keys = ["dataset", "model", "bits", "recipe", "estimator", "stage"]
    agg = ends.groupby(keys)[[m for m in DIAG if m in ends]].mean().reset_index()
    return agg.rename(columns={"model": "network", "diag/qe": "qe", "diag/laplace_b": "laplace_b",
                               "diag/flip": "flip_ratio"})


# -- writing -----------------------------------------------------------------------------------------------
def provenance(c: Collected, results_dir: Path) -> list[str]:
    df = c.runs
    fmt = "%Y-%m-%d %H:%M UTC"
    start = time.strftime(fmt, time.gmtime(df["start"].min() / 1000))
    end = time.strftime(fmt, time.gmtime((df["end"].max() or df["start"].max()) / 1000))
    commands = sorted({p["tags"].get("command", "") for p in c.parents if p["tags"].get("command")})
    epochs = "; ".join(f"{m}: {', '.join(map(str, sorted(g['epochs'].unique())))}" for m, g in df.groupby("model"))
    vispa = df[df.estimator == "vispa"]["samples"].dropna().unique()
    lines = [
        f"suite: {c.suite}; recipes: {', '.join(sorted(df.recipe.unique()))}; epochs per run: {epochs}",
        f"seeds: {', '.join(map(str, sorted(df.seed.unique())))}; runs counted: {len(df)} (one per cell and seed; "
        f"{c.ignored} other runs ignored: repeats, failed, killed or unfinished)",
        f"git commit(s): {', '.join(sorted(df.git_commit.unique()))}; torch {', '.join(sorted(df.torch.unique()))}",
        f"hardware: {'; '.join(sorted(set(df.cpu + ' / GPU: ' + df.gpu)))}; runs from {start} to {end}",
        "made by: " + (" && ".join(commands) if commands else f"binbench suite run {c.suite}")
        + f", then: binbench report {c.suite} --results-dir {results_dir}",
        f"tracking store: {c.uri}",
    ]
    points = df["search_point"].replace("", pd.NA).dropna().unique() if "search_point" in df else []
    if len(points):
        lines.append(f"searched: {len(points)} points of ({df['search_point'].iloc[0].split('=')[0]}, ...); Top-1 "
                     "aggregates every finished point and seed of a cell (sensitivity.png shows them one by one)")
    if len(vispa):
        lines.append(f"VISPA ensemble size L = {', '.join(map(str, vispa))} (published: 40)")
    return lines


def _fmt(v: float, nd: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _lb_display(lb: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in lb.iterrows():
        top1 = f"{_fmt(r.top1_mean)} ± {_fmt(r.top1_std)} (n={r.n})" if r.n else "–"
        rows.append({"Network": r.network, "Method": r.method + (f" [{r.eval_mode}]" if r.eval_mode not in
                                                                   ("default", "") else ""),
                     "W/A": r.bits.replace("W", "").replace("A", "/"), "Recipe": r.recipe, "Top-1": top1,
                     "Best-epoch Top-1": _fmt(r.best_top1_mean), "Top-5": _fmt(r.top5_mean),
                     "Published": _fmt(r.published), "Δ": _fmt(r.delta),
                     "Other eval modes": r.other_modes or "", "Diverged": str(r.diverged) if r.diverged else "",
                     "_best": bool(r.best)})
    return pd.DataFrame(rows)


def write_tables(c: Collected, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    lb, pr, dg = leaderboard(c), paired(c), diagnostics_table(c)
    show_top5 = lb["dataset"].isin(["cifar100", "tiny-imagenet", "imagenet"]).any()
    disp = _lb_display(lb)
    if not show_top5:
        disp = disp.drop(columns="Top-5")
    head = provenance(c, out)
    lb.to_csv(out / "leaderboard.csv", index=False)
    pr.to_csv(out / "paired.csv", index=False)
    dg.to_csv(out / "diagnostics.csv", index=False)
    md = [f"# {c.suite}: leaderboard", ""] + [f"- {h}" for h in head] + [""]
    for ds, g in disp.groupby(lb["dataset"], sort=False):
        md += [f"## {ds}", "", _md_table(g), ""]
    md += ["Top-1: final-epoch test accuracy, mean ± sample std over seeds (n runs). Best-epoch: mean over seeds of "
           "the best epoch of the last stage (what the official repos report; it selects on the test set). Bold: "
           "best binary method of its network, bits and recipe. Published: ../shared/reference/published.csv "
           "(bench/reference/published.csv); Δ = ours − published, only where the dataset and network match "
           "(clipped_ste is compared with BNN).", ""]
    md += ["## Paired difference to ste (same seeds) and ratio to FP", "", _md_table(_paired_display(pr)), "",
           "diff: mean over shared seeds of (estimator − ste) top-1, 95% Student-t interval; ratio: mean top-1 / FP "
           "mean top-1 of the same network and dataset (BiBench style).", ""]
    if not dg.empty:
        md += ["## Diagnostics at the end of each stage", "", _md_table(_diag_display(dg)), "",
               "QE: BiPer eq. (15) of the value each estimator binarizes (sin(w0 w) for BiPer); b: Laplace scale "
               "of the latent weights; flip: share of binary weights whose sign changed in the stage's last epoch; "
               "means over binary layers and seeds.", ""]
    (out / "leaderboard.md").write_text("\n".join(md))
    (out / "leaderboard.tex").write_text(_tex(disp, head, c.suite))
    return {"md": out / "leaderboard.md", "csv": out / "leaderboard.csv", "tex": out / "leaderboard.tex",
            "paired": out / "paired.csv", "diagnostics": out / "diagnostics.csv"}


def _paired_display(pr: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in pr.iterrows():
        d = r.get("diff_vs_ste", math.nan)
        ci = f"[{_fmt(r.ci95_low)}, {_fmt(r.ci95_high)}]" if not math.isnan(r.ci95_low) else "–"
        rows.append({"Dataset": r.dataset, "Network": r.network, "W/A": r.bits, "Recipe": r.recipe,
                     "Method": r.estimator, "n pairs": r.n_pairs, "Δ vs ste": _fmt(d), "95% CI": ci,
                     "Ratio to FP": _fmt(r.ratio_to_fp, 3)})
    return pd.DataFrame(rows)


def _diag_display(dg: pd.DataFrame) -> pd.DataFrame:
    d = dg.copy()
    for col in ("qe", "laplace_b", "flip_ratio"):
        if col in d:
            d[col] = d[col].map(lambda v: _fmt(v, 4))
    d["stage"] = d["stage"].astype(int)
    return d


def _md_table(df: pd.DataFrame) -> str:
    cols = [c for c in df.columns if not c.startswith("_")]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        cells = [str(r[c]) for c in cols]
        if r.get("_best", False):
            cells = [f"**{x}**" if c in ("Method", "Top-1") else x for c, x in zip(cols, cells, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _tex(disp: pd.DataFrame, head: list[str], suite: str) -> str:
    cols = [c for c in disp.columns if not c.startswith("_") and c not in ("Other eval modes",)]

    def esc(s: str) -> str:
        return (str(s).replace("\\", "\\textbackslash{}").replace("&", "\\&").replace("%", "\\%")
                .replace("_", "\\_").replace("#", "\\#").replace("±", "$\\pm$").replace("Δ", "$\\Delta$")
                .replace("–", "--").replace("−", "-"))

    lines = ["% " + h for h in head]
    lines += ["\\begin{table}[t]", "\\centering", f"\\caption{{{esc(suite)}: top-1 accuracy (\\%)}}",
              "\\begin{tabular}{" + "l" * len(cols) + "}", "\\toprule", " & ".join(esc(c) for c in cols) + " \\\\",
              "\\midrule"]
    prev = None
    for _, r in disp.iterrows():
        if prev is not None and r["Network"] != prev:
            lines.append("\\midrule")
        prev = r["Network"]
        cells = [esc(r[c]) for c in cols]
        if r["_best"]:
            cells = [f"\\textbf{{{x}}}" if c in ("Method", "Top-1") else x for c, x in zip(cols, cells, strict=True)]
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)


# -- figures -----------------------------------------------------------------------------------------------
def write_figures(c: Collected, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from bench.diagnostics import qe_laplace
    from bench.plots import plot_estimators

    sns.set_theme(style="whitegrid", context="paper")
    made: list[Path] = []
    runs = c.runs[c.runs.status == "finished"]

    def save(fig, name: str) -> None:
        for ext in ("png", "pdf"):
            fig.savefig(out / f"{name}.{ext}", dpi=130, bbox_inches="tight")
        plt.close(fig)
        made.append(out / f"{name}.png")

    cur = c.curves.merge(runs[["run_id", "estimator", "model", "bits", "recipe", "seed"]], on="run_id")
    if not cur.empty and "test_top1" in cur:
        acc = cur[cur["test_top1"].notna()].copy()
        acc["epoch"] = acc["step"] + 1
        binary = acc[acc.estimator != "fp"]
        g = sns.relplot(data=binary if len(binary) else acc, x="epoch", y="test_top1", hue="estimator", col="model",
                        row="bits", kind="line", errorbar=("pi", 100), height=3, aspect=1.2,
                        facet_kws={"sharey": False, "margin_titles": True})
        fp = acc[acc.estimator == "fp"]
        for (_bits, model), ax in g.axes_dict.items():  # the FP baseline as a dashed reference in every panel
            ref = fp[fp.model == model].groupby("epoch")["test_top1"].mean()
            if len(ref):
                ax.plot(ref.index, ref.values, color="black", ls="--", lw=1, label="FP")
        g.set_axis_labels("epoch", "test top-1 (%)")
        g.figure.suptitle(f"{c.suite}: test accuracy per epoch (mean, band = min-max over seeds; dashed: FP)",
                         y=1.02)
        save(g.figure, "accuracy_curves")
    g = sns.catplot(data=runs, x="top1", y="estimator", col="model", row="bits", kind="point", errorbar=("ci", 95),
                    linestyle="none", height=3, aspect=1.3, sharex=False)
    g.set_axis_labels("final test top-1 (%), mean and 95% CI", "")
    save(g.figure, "final_top1")
    bip = runs[runs.estimator == "biper"]
    if len(bip) and "diag/laplace_b" in bip and bip["diag/laplace_b"].notna().any():
        fig, ax = plt.subplots(figsize=(5, 3.4))
        import numpy as np

        w0s = np.logspace(-0.5, 2.5, 300)
        for (model, bits), gb in bip.groupby(["model", "bits"]):
            b = gb["diag/laplace_b"].mean()
            line, = ax.plot(w0s, [qe_laplace(b * w) for w in w0s], label=f"analytic, b = {b:.3g} ({model} {bits})")
            from bench.estimator import get_estimator_class

            w0_default = get_estimator_class("biper").hparam_defaults()["w0"]  # runs that did not record it
            ax.scatter(gb["w0"].astype(float).fillna(w0_default), gb["diag/qe"], color=line.get_color(), zorder=3,
                       label=f"measured ({model} {bits})")
        ax.set_xscale("log")
        ax.set_xlabel("w0")
        ax.set_ylabel("QE")
        ax.set_title("BiPer quantization error vs w0 (Laplace latents, eq. 15-18)")
        ax.legend(fontsize=6)
        save(fig, "biper_qe_vs_w0")
    if not cur.empty and "diag/flip" in cur and cur["diag/flip"].notna().any():
        fl = cur[cur["diag/flip"].notna()].copy()
        fl["epoch"] = fl["step"] + 1
        g = sns.relplot(data=fl, x="epoch", y="diag/flip", hue="estimator", col="model", row="bits", kind="line",
                        errorbar=None, height=3, aspect=1.2, facet_kws={"sharey": False})
        g.set_axis_labels("epoch", "flip ratio")
        save(g.figure, "flip_ratio")
    ests = sorted(e for e in runs.estimator.unique() if e != "fp")
    from bench import list_estimators

    path = plot_estimators([e for e in ests if e in list_estimators()], out / "estimators.png")
    made.append(path)
    if runs[["optimizer", "lr", "lr_schedule"]].drop_duplicates().shape[0] > 1:
        sens = runs.copy()
        sens["setting"] = sens["optimizer"] + " lr=" + sens["lr"].astype(str) + " " + sens["lr_schedule"]
        fig, ax = plt.subplots(figsize=(6, 0.35 * len(ests) + 1.5))
        sns.boxplot(data=sens, x="top1", y="estimator", color="0.9", ax=ax, fliersize=0)
        sns.stripplot(data=sens, x="top1", y="estimator", hue="setting", ax=ax, size=4, dodge=False)
        ax.set_xlabel("final test top-1 (%) over the optimizer grid")
        ax.legend(fontsize=6, bbox_to_anchor=(1.01, 1), loc="upper left")
        save(fig, "sensitivity")
    return made


def report(suite: str, results_dir: str | Path | None = None, tracking_uri: str | None = None,
           out_dir: str | Path | None = None) -> tuple[Collected, dict[str, Path], list[Path]]:
    from bench.suite import find_suite
    from bench.tracking import default_tracking_uri

    name = suite
    try:
        import yaml

        name = (yaml.safe_load(find_suite(suite).read_text()) or {}).get("name", suite)
    except BinbenchError:
        pass
    results = Path(results_dir or Path("results") / name)
    uri = tracking_uri or default_tracking_uri(results)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise BinbenchError(f"no MLflow store at {uri[len('sqlite:///'):]}: run `binbench suite run {suite}` first, "
                            "or pass --results-dir / --tracking-uri")
    search_keys: tuple[str, ...] = ()
    try:
        from bench.suite import load_suite

        search = load_suite(suite).search
        search_keys = tuple(sorted(search["space"])) if search else ()
    except BinbenchError:
        pass
    c = collect(uri, name, search_keys)
    out = Path(out_dir or results)
    tables = write_tables(c, out)
    figs = write_figures(c, out)
    return c, tables, figs


__all__ = ["collect", "leaderboard", "paired", "report", "t_interval"]

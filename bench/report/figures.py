"""The report's figures, from the runs and per-epoch metrics a :class:`bench.report.Collected` holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.report import Collected, method_label

CONTROL_STYLE = {"color": "0.45", "ls": "--", "lw": 1.2}  # the control in every figure: grey, dashed


def _palette(labels: list[str]) -> dict[str, Any]:
    """Colours per method label: seaborn's for the methods, the control's grey for controls."""
    import seaborn as sns

    methods = [m for m in labels if not m.startswith("control")]
    colours = dict(zip(methods, sns.color_palette("tab10", max(len(methods), 1)), strict=False))
    return {m: colours.get(m, CONTROL_STYLE["color"]) for m in labels}


def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a ``method`` column (FP, control (frozen), the estimator) and methods before controls."""
    df = df.assign(method=[method_label(r) for r in df[["estimator", "role"]].to_dict("records")])
    return df.assign(_ctl=df.role == "control").sort_values(["_ctl", "estimator"], kind="stable").drop(columns="_ctl")


def _lines(df: pd.DataFrame, y: str, **kw: Any) -> Any:
    """Per-epoch lines per method, a panel per model and bits; the control grey and dashed."""
    import seaborn as sns

    labels = list(dict.fromkeys(df["method"]))
    return sns.relplot(data=df, x="epoch", y=y, hue="method", hue_order=labels, palette=_palette(labels),
                       style="role", dashes={"method": "", "control": (4, 2), "baseline": (1, 1)}, col="model",
                       row="bits", kind="line", height=3, aspect=1.2, **kw)


def _fig_curves(c: Collected, cur: pd.DataFrame) -> Any:
    acc = cur[cur["test_top1"].notna()].copy()
    acc["epoch"] = acc["step"] + 1
    binary = acc[acc.role != "baseline"]
    g = _lines(binary if len(binary) else acc, "test_top1", errorbar=("pi", 100),
               facet_kws={"sharey": False, "margin_titles": True})
    fp = acc[acc.role == "baseline"]
    for (_bits, model), ax in g.axes_dict.items():  # the FP baseline as a dashed reference in every panel
        ref = fp[fp.model == model].groupby("epoch")["test_top1"].mean()
        if len(ref):
            ax.plot(ref.index, ref.values, color="black", ls="--", lw=1, label="FP")
    g.set_axis_labels("epoch", "test top-1 (%)")
    g.figure.suptitle(f"{c.suite}: test accuracy per epoch (mean, band = min-max over seeds; black dashed: FP; "
                      "grey dashed: control)", y=1.02)
    return g.figure


def _fig_final(runs: pd.DataFrame) -> Any:
    import seaborn as sns

    labels = list(dict.fromkeys(runs["method"]))
    g = sns.catplot(data=runs, x="top1", y="method", hue="method", order=labels, hue_order=labels,
                    palette=_palette(labels), legend=False, col="model", row="bits", kind="point",
                    errorbar=("ci", 95), linestyle="none", height=3, aspect=1.3, sharex=False)
    ctl = runs[runs.role == "control"]
    for (bits, model), ax in g.axes_dict.items():  # the control's mean as a grey dashed reference
        ref = ctl[(ctl.model == model) & (ctl.bits == bits)]["top1"]
        if len(ref):
            ax.axvline(ref.mean(), **CONTROL_STYLE)
    g.set_axis_labels("final test top-1 (%), mean and 95% CI (grey dashed: control)", "")
    return g.figure


def _fig_biper(bip: pd.DataFrame) -> Any:
    import matplotlib.pyplot as plt
    import numpy as np

    from bench.diagnostics import qe_laplace
    from bench.estimator import get_estimator_class

    fig, ax = plt.subplots(figsize=(5, 3.4))
    w0s = np.logspace(-0.5, 2.5, 300)
    w0_default = get_estimator_class("biper").hparam_defaults()["w0"]  # runs that did not record it
    for (model, bits), gb in bip.groupby(["model", "bits"]):
        b = gb["diag/laplace_b"].mean()
        line, = ax.plot(w0s, [qe_laplace(b * w) for w in w0s], label=f"analytic, b = {b:.3g} ({model} {bits})")
        ax.scatter(gb["w0"].astype(float).fillna(w0_default), gb["diag/qe"], color=line.get_color(), zorder=3,
                   label=f"measured ({model} {bits})")
    ax.set_xscale("log")
    ax.set_xlabel("w0")
    ax.set_ylabel("QE")
    ax.set_title("BiPer quantization error vs w0 (Laplace latents, eq. 15-18)")
    ax.legend(fontsize=6)
    return fig


def _fig_flip(cur: pd.DataFrame) -> Any:
    fl = cur[cur["diag/flip"].notna()].copy()
    fl["epoch"] = fl["step"] + 1
    g = _lines(fl, "diag/flip", errorbar=None, facet_kws={"sharey": False})
    g.set_axis_labels("epoch", "flip ratio")
    return g.figure


def _fig_sensitivity(runs: pd.DataFrame) -> Any:
    import matplotlib.pyplot as plt
    import seaborn as sns

    sens = runs.copy()
    sens["setting"] = sens["optimizer"] + " lr=" + sens["lr"].astype(str) + " " + sens["lr_schedule"]
    fig, ax = plt.subplots(figsize=(6, 0.35 * sens["method"].nunique() + 1.5))
    sns.boxplot(data=sens, x="top1", y="method", color="0.9", ax=ax, fliersize=0)
    sns.stripplot(data=sens, x="top1", y="method", hue="setting", ax=ax, size=4, dodge=False)
    ax.set_xlabel("final test top-1 (%) over the optimizer grid")
    ax.legend(fontsize=6, bbox_to_anchor=(1.01, 1), loc="upper left")
    return fig


def write_figures(c: Collected, out: Path) -> list[Path]:
    """The report's figures (PNG and PDF) under ``out``; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from bench import list_estimators
    from bench.plots import plot_estimators

    sns.set_theme(style="whitegrid", context="paper")
    made: list[Path] = []
    runs = _labelled(c.runs[c.runs.status == "finished"])

    def save(fig: Any, name: str) -> None:
        for ext in ("png", "pdf"):
            fig.savefig(out / f"{name}.{ext}", dpi=130, bbox_inches="tight")
        plt.close(fig)
        made.append(out / f"{name}.png")

    cur = c.curves.merge(runs[["run_id", "estimator", "role", "method", "model", "bits", "recipe", "seed"]],
                         on="run_id")
    if not cur.empty and "test_top1" in cur:
        save(_fig_curves(c, cur), "accuracy_curves")
    save(_fig_final(runs), "final_top1")
    bip = runs[runs.estimator == "biper"]
    if len(bip) and "diag/laplace_b" in bip and bip["diag/laplace_b"].notna().any():
        save(_fig_biper(bip), "biper_qe_vs_w0")
    if not cur.empty and "diag/flip" in cur and cur["diag/flip"].notna().any():
        save(_fig_flip(cur), "flip_ratio")
    ests = sorted(runs.loc[runs.role == "method", "estimator"].unique())  # the control is no method to sheet
    made.append(plot_estimators([e for e in ests if e in list_estimators()], out / "estimators.png"))
    if runs[["optimizer", "lr", "lr_schedule"]].drop_duplicates().shape[0] > 1:
        save(_fig_sensitivity(runs), "sensitivity")
    return made


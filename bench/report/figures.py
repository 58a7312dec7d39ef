"""The report's figures, from the runs and per-epoch metrics a :class:`bench.report.Collected` holds.

Every method keeps one style (colour from seaborn's colour-blind-safe palette, marker and line style) in every
figure, so that methods stay apart in greyscale and for colour-blind readers; the control is grey and dashed,
the FP baseline black and dotted. Intervals are the tables' Student-t intervals (:func:`bench.report.t_interval`),
never a bootstrap. Stage boundaries come from the ``stage`` metric each run logged per epoch and the names in
its ``stage_epochs`` tag, never from an estimator's name.

Latent-weight histograms: a run may carry the MLflow artifact ``latent_hist.json`` (``{"edges": [...],
"epochs": {"<epoch>": [counts, ...]}}``, the binary layers' latent weights pooled); the surrogate figure draws
its first and last epoch under each surrogate and says so where the store has none.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from bench.report import LAYER_METRIC, Collected, display_label, t_interval

CONTROL = {"color": "0.45", "ls": "--", "marker": "x"}  # the control: grey, dashed
FP = {"color": "black", "ls": ":", "marker": ""}  # the full-precision baseline: black, dotted
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")
LINESTYLES = ("-", "--", "-.", (0, (3, 1, 1, 1, 1, 1)))
HIST_ARTIFACT = "latent_hist.json"


def styles(runs: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Colour, marker and line style per display label: methods in label order take the colour-blind palette
    (its grey left out: it is the control's), markers and line styles in turn, so neighbours differ in all three."""
    import seaborn as sns

    palette = [c for i, c in enumerate(sns.color_palette("colorblind", 10)) if i != 7]
    out: dict[str, dict[str, Any]] = {}
    pairs = runs[["display", "role"]].drop_duplicates("display")
    methods = sorted(pairs.loc[pairs.role == "method", "display"])
    for i, m in enumerate(methods):
        out[m] = {"color": palette[i % len(palette)], "marker": MARKERS[i % len(MARKERS)],
                  "ls": LINESTYLES[i % len(LINESTYLES)]}
    for r in pairs.itertuples():
        if r.role != "method":
            out[r.display] = FP if r.role == "baseline" else CONTROL
    return out


def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its display label; methods first (by label), then the control, then FP."""
    df = df.assign(display=[display_label(r) for r in df[["estimator", "role"]].to_dict("records")])
    order = df.role.map({"method": 0, "control": 1, "baseline": 2})
    return df.assign(_o=order).sort_values(["_o", "display"], kind="stable").drop(columns="_o")


def _grid(models: list[str], bits: list[str], height: float = 3.4) -> tuple[Any, Any]:
    """A panel per model (column, its own x range) and bits (row)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(bits), len(models), figsize=(4.6 * len(models) + 1.8, height * len(bits)),
                             squeeze=False, sharex="col")
    return fig, axes


def _stage_bounds(g: pd.DataFrame) -> list[tuple[float, str]]:
    """(x, "before | after") where a method's runs moved to their next stage: between the last epoch of one
    stage and the first of the next, as the runs logged them."""
    if "stage" not in g or g["stage"].isna().all():
        return []
    per = g.dropna(subset=["stage"]).groupby("epoch")["stage"].min().sort_index()
    tag = g["stage_epochs"].dropna().iloc[0] if "stage_epochs" in g and g["stage_epochs"].notna().any() else ""
    names = [part.split(":")[0].strip() for part in str(tag).split(",")] if tag else []
    out = []
    for (e0, s0), (_e1, s1) in zip(per.items(), list(per.items())[1:], strict=False):
        if s1 != s0:
            a, b = int(s0), int(s1)
            label = f"{names[a]} | {names[b]}" if max(a, b) < len(names) else f"stage {a} | {b}"
            out.append((e0 + 0.5, label))
    return out


def _epoch_axis(ax: Any, epochs: pd.Series) -> None:
    """Integer epoch ticks over the panel's own epochs."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
    if len(epochs):
        ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)


def _draw_method(ax: Any, g: pd.DataFrame, y: str, st: dict[str, Any], label: str, band: bool) -> None:
    """Mean over seeds per epoch with markers (a 2-epoch run shows its 2 points), min-max band over seeds."""
    agg = g.groupby("epoch")[y].agg(["mean", "min", "max"])
    ax.plot(agg.index, agg["mean"], color=st["color"], ls=st["ls"], marker=st["marker"] or None, ms=3.5,
            markevery=max(1, len(agg) // 12), lw=1.2, label=label)
    if band and len(g["seed"].unique()) > 1:
        ax.fill_between(agg.index, agg["min"], agg["max"], color=st["color"], alpha=0.12, lw=0)
    for x, text in _stage_bounds(g):
        ax.axvline(x, color=st["color"], ls=":", lw=1)
        ax.annotate(f"{label}: {text}", (x, 1), xycoords=("data", "axes fraction"), rotation=90, fontsize=5,
                    va="top", ha="right", color=st["color"])


def _fig_lines(cur: pd.DataFrame, y: str, ylabel: str, title: str, sty: dict[str, dict[str, Any]]) -> Any:
    """Per-epoch lines per method, a panel per model and bits; FP as a reference line in its model's panels."""
    binary = cur[cur.role != "baseline"]
    data = binary if len(binary) else cur
    models, bits = sorted(data.model.unique()), sorted(data.bits.unique())
    fig, axes = _grid(models, bits)
    fp = cur[cur.role == "baseline"]
    for i, b in enumerate(bits):
        for j, m in enumerate(models):
            ax, panel = axes[i, j], data[(data.model == m) & (data.bits == b)]
            for label, g in panel.groupby("display", sort=False):
                _draw_method(ax, g, y, sty[label], label, band=True)
            ref = fp[fp.model == m] if len(binary) else fp.iloc[0:0]
            if len(ref) and y in ref and ref[y].notna().any():
                _draw_method(ax, ref, y, FP, "FP", band=False)
            _epoch_axis(ax, data[data.model == m]["epoch"])
            ax.set_title(f"{m} {b}", fontsize=9)
            ax.set_xlabel("epoch" if i == len(bits) - 1 else "")
            ax.set_ylabel(ylabel if j == 0 else "")
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines() if not h.get_label().startswith("_")}
    fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def final_intervals(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model, bits and method: mean final top-1 and its 95% Student-t interval over seeds (the tables'
    :func:`bench.report.t_interval`); nan ends where a method has fewer than 2 runs."""
    rows = []
    for (model, bits, label), g in runs.groupby(["model", "bits", "display"], sort=False):
        mean, lo, hi = t_interval([float(v) for v in g["top1"]])
        rows.append({"model": model, "bits": bits, "display": label, "role": g.role.iloc[0], "n": len(g),
                     "mean": mean, "low": lo, "high": hi})
    return pd.DataFrame(rows)


def _fig_final(runs: pd.DataFrame, sty: dict[str, dict[str, Any]]) -> Any:
    """Final top-1 per method, mean and 95% t-interval, a panel per model and bits; FP (black dotted) and the
    control (grey dashed) as reference lines."""
    ci = final_intervals(runs)
    binary = ci[ci.role != "baseline"]
    data = binary if len(binary) else ci
    models, bits = sorted(data.model.unique()), sorted(data.bits.unique())
    fig, axes = _grid(models, bits, height=0.28 * data.display.nunique() + 1.2)
    for i, b in enumerate(bits):
        for j, m in enumerate(models):
            ax, panel = axes[i, j], data[(data.model == m) & (data.bits == b)].reset_index(drop=True)
            for k, r in panel.iterrows():
                err = [[r["mean"] - r["low"]], [r["high"] - r["mean"]]] if not math.isnan(r["low"]) else None
                st = sty[r["display"]]
                ax.errorbar(r["mean"], k, xerr=err, fmt=st["marker"] or "o", color=st["color"], capsize=2.5, ms=4)
            ax.set_yticks(range(len(panel)), panel["display"], fontsize=7)
            ax.invert_yaxis()
            for ref, st, name in ((ci[(ci.role == "baseline") & (ci.model == m)], FP, "FP"),
                                  (panel[panel.role == "control"], CONTROL, "control")):
                if len(ref):
                    ax.axvline(ref["mean"].iloc[0], color=st["color"], ls=st["ls"], lw=1, label=f"{name} mean")
            lo, hi = panel["low"].fillna(panel["mean"]).min(), panel["high"].fillna(panel["mean"]).max()
            ax.set_xlim(max(0.0, lo - 2), min(100.0, hi + 2))  # top-1 lies in [0, 100]: wider intervals run off
            ax.set_title(f"{m} {b}", fontsize=9)
            ax.tick_params(axis="x", labelbottom=True)
            ax.set_xlabel("final test top-1 (%)")
    fig.suptitle("final test top-1: mean and 95% Student-t interval over seeds (as in the tables; cut at 0 and "
                 "100); black dotted: FP, grey dashed: control", fontsize=8)
    fig.tight_layout()
    return fig


def _layer_frame(cur: pd.DataFrame) -> pd.DataFrame:
    """Per-layer diagnostics in long form: run, epoch, layer, metric (flip or qe), value."""
    cols = [c for c in cur.columns if LAYER_METRIC.match(c)]
    if not cols:
        return pd.DataFrame(columns=["display", "model", "bits", "epoch", "layer", "metric", "value"])
    long = cur.melt(id_vars=["display", "model", "bits", "epoch", "role"], value_vars=cols, var_name="key").dropna()
    parts = long["key"].str.extract(LAYER_METRIC)
    return long.assign(layer=parts[0].astype(int), metric=parts[1])


def _fig_layers(lay: pd.DataFrame, model: str, bits: str) -> Any:
    """One row per estimator, flip ratio and QE per layer (y) and epoch (x), means over seeds."""
    import matplotlib.pyplot as plt

    cell = lay[(lay.model == model) & (lay.bits == bits)]
    order = cell.assign(_ctl=cell.role != "method").sort_values(["_ctl", "display"])
    labels = list(dict.fromkeys(order.display))
    fig, axes = plt.subplots(len(labels), 2, figsize=(9, 1.1 * len(labels) + 1.2), squeeze=False)
    for i, label in enumerate(labels):
        for j, metric in enumerate(("flip", "qe")):
            ax = axes[i, j]
            grid = cell[(cell.display == label) & (cell.metric == metric)].pivot_table(
                index="layer", columns="epoch", values="value", aggfunc="mean")
            if grid.empty:
                ax.set_axis_off()
                continue
            im = ax.imshow(grid.values, aspect="auto", cmap="viridis", interpolation="nearest",
                           extent=(grid.columns.min() - 0.5, grid.columns.max() + 0.5, len(grid) - 0.5, -0.5))
            ax.set_yticks(range(len(grid)), [str(x) for x in grid.index], fontsize=6)
            ax.grid(False)
            _epoch_axis(ax, pd.Series(grid.columns))
            ax.set_ylabel(f"{label}\nlayer", fontsize=7)
            if i == 0:
                ax.set_title("flip ratio" if metric == "flip" else "QE", fontsize=7)
            fig.colorbar(im, ax=ax, fraction=0.04)
    axes[-1, 0].set_xlabel("epoch")
    axes[-1, 1].set_xlabel("epoch")
    fig.suptitle(f"{model} {bits}: per-layer flip ratio and QE per epoch (binary layers by module index, "
                 "means over seeds)", fontsize=8)
    fig.tight_layout()
    return fig


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




def latent_histograms(c: Collected, runs: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per method label, the first of its runs that carries ``latent_hist.json``: ``{"edges", "first": (epoch,
    counts), "last": (epoch, counts)}``; labels without one are absent (stores written before it was logged)."""
    from bench.track.store import MlflowClient, MlflowException

    client, out = MlflowClient(tracking_uri=c.uri), {}
    for label, g in runs[runs.role == "method"].groupby("display"):
        for rid in g.run_id:
            try:
                if HIST_ARTIFACT not in [a.path for a in client.list_artifacts(rid)]:
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    raw = json.loads(Path(client.download_artifacts(rid, HIST_ARTIFACT, tmp)).read_text())
                epochs = sorted(raw["epochs"], key=int)
            except (MlflowException, OSError, ValueError, KeyError, TypeError):
                continue  # an artifact store moved away or a malformed file: the figure says there is none
            if epochs:
                out[label] = {"edges": raw["edges"], "first": (epochs[0], raw["epochs"][epochs[0]]),
                              "last": (epochs[-1], raw["epochs"][epochs[-1]])}
                break
    return out


def _surrogate_panel(ax: Any, est: str, label: str, hist: dict[str, Any] | None, note: bool) -> None:
    import numpy as np
    import torch

    from bench.plots import curves

    lim = max(abs(hist["edges"][0]), abs(hist["edges"][-1])) if hist else 2.0
    x = torch.linspace(-lim, lim, 401)
    if hist:
        hx = ax.twinx()
        edges = np.asarray(hist["edges"], dtype=float)
        for key, shade in (("first", "0.75"), ("last", "0.35")):
            epoch, counts = hist[key]
            hx.stairs(np.asarray(counts, dtype=float) / max(1.0, float(np.sum(counts))), edges, color=shade,
                      fill=key == "first", alpha=0.6, label=f"latent weights, epoch {epoch}")
        hx.set_yticks([])
        hx.set_zorder(ax.get_zorder() - 1)  # the histogram under the surrogate, not over it
        ax.patch.set_visible(False)
        hx.legend(fontsize=5, loc="upper right")
    elif note:
        ax.text(0.02, 0.98, "no latent-weight\nhistogram stored", transform=ax.transAxes, ha="left", va="top",
                fontsize=5, color="0.3")
    drawn = curves(est, x)
    for text, _f, g in drawn:
        ax.plot(x, g, lw=1.2, label=text or None)
    if len(drawn) > 1:
        ax.legend(fontsize=5, loc="lower right")
    # a flat surrogate (a straight-through one) at its true height over 0
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    ax.set_title(label, fontsize=8)
    ax.set_xlabel("latent weight")


def _fig_surrogates(runs: pd.DataFrame, hists: dict[str, dict[str, Any]]) -> Any:
    """Each method's surrogate gradient over the histogram of its latent weights at the first and last epoch."""
    import matplotlib.pyplot as plt

    from bench import list_estimators

    pairs = runs[(runs.role == "method") & runs.estimator.isin(list_estimators())].drop_duplicates("display")
    n = len(pairs)
    cols = min(5, max(n, 1))
    fig, axes = plt.subplots(math.ceil(max(n, 1) / cols), cols, figsize=(2.6 * cols, 2.3 * math.ceil(n / cols) + .6),
                             squeeze=False)
    for ax, r in zip(axes.flat, pairs.itertuples(), strict=False):
        _surrogate_panel(ax, r.estimator, r.display, hists.get(r.display), note=bool(hists))
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    axes[0, 0].set_ylabel("surrogate gradient")
    note = "" if hists else " (this store holds no latent-weight histograms: surrogates only)"
    fig.suptitle("surrogate gradients over the latent-weight histograms of the first and last epoch" + note,
                 fontsize=8)
    fig.tight_layout()
    return fig


def _curves(c: Collected, runs: pd.DataFrame) -> pd.DataFrame:
    keep = ["run_id", "estimator", "role", "display", "model", "bits", "recipe", "seed", "stage_epochs"]
    cur = c.curves.merge(runs[keep], on="run_id")
    return cur.assign(epoch=cur["step"] + 1) if len(cur) else cur.assign(epoch=[])


def _draw_all(c: Collected, save: Any) -> None:
    from bench import list_estimators
    from bench.plots import estimators_figure

    runs = _labelled(c.runs[c.runs.status == "finished"])
    sty, cur = styles(runs), _curves(c, runs)
    if "test_top1" in cur and cur["test_top1"].notna().any():
        save(_fig_lines(cur[cur.test_top1.notna()], "test_top1", "test top-1 (%)", f"{c.suite}: test accuracy per "
                        "epoch (mean over seeds, band: min-max; dotted verticals: stage boundaries)", sty),
             "accuracy_curves")
    save(_fig_final(runs, sty), "final_top1")
    for name, fig in _estimator_figures(runs).items():
        save(fig, name)
    if "diag/flip" in cur and cur["diag/flip"].notna().any():
        save(_fig_lines(cur[cur["diag/flip"].notna()], "diag/flip", "flip ratio", "flip ratio per epoch "
                        "(mean over binary layers and seeds)", sty), "flip_ratio")
    lay = _layer_frame(cur)
    cells = lay[["model", "bits"]].drop_duplicates().itertuples(index=False)
    for m, b in (cells := list(cells)):
        save(_fig_layers(lay, m, b), "layer_diagnostics" if len(cells) == 1 else f"layer_diagnostics_{m}_{b}")
    save(_fig_surrogates(runs, latent_histograms(c, runs)), "surrogates")
    ests = sorted(runs.loc[runs.role == "method", "estimator"].unique())  # the control is no method to sheet
    save(estimators_figure([e for e in ests if e in list_estimators()]), "estimators")
    if runs[["optimizer", "lr", "lr_schedule"]].drop_duplicates().shape[0] > 1:
        save(_fig_sensitivity(runs.assign(method=runs.display)), "sensitivity")


def write_figures(c: Collected, out: Path) -> list[Path]:
    """The report's figures (PNG and PDF) under ``out``; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    out.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []

    def save(fig: Any, name: str) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)  # model and bits names come from run tags
        for ext in ("png", "pdf"):
            fig.savefig(out / f"{safe}.{ext}", dpi=130, bbox_inches="tight")
        plt.close(fig)
        made.append(out / f"{safe}.png")

    _draw_all(c, save)
    return made


def _estimator_figures(runs: pd.DataFrame) -> dict[str, Any]:
    """The figures each estimator of the suite declares for itself (``Estimator.report_figures``), drawn from its
    own runs; a figure that fails to draw is skipped with a warning, not a failed report."""
    import warnings

    from bench.estimator import ESTIMATORS

    out: dict[str, Any] = {}
    for est, g in runs.groupby("estimator"):
        if est not in ESTIMATORS:
            continue
        try:
            out.update(ESTIMATORS.get(est).report_figures(g))
        except Exception as exc:  # noqa: BLE001 - a plugin's figure must not cost the tables
            warnings.warn(f"estimator {est!r}: its report figure failed ({type(exc).__name__}: {exc})", stacklevel=2)
    return out

"""The report's figures, from the runs and per-epoch metrics a :class:`bench.report.Collected` holds.

Every figure is drawn at its print size (one column, 3.3 in, or two, 6.9 in) with 7-9 pt text
(:mod:`bench.report.style`), and every method keeps one style in every figure of every report. Y-ranges are set
by the methods, never by the control: the control and the FP baseline are reference lines (their final mean),
and a reference outside the methods' range is named at the panel's edge instead of stretching it. Values that
span decades (flip ratio, QE) are on log axes; a heatmap figure has one colour scale per metric. Intervals are
the tables' Student-t intervals (:func:`bench.report.stats.t_interval`), never a bootstrap. Stage boundaries
come from the ``stage`` metric each run logged per epoch and the names in its ``stage_epochs`` tag.

Latent-weight histograms: a run may carry the MLflow artifact ``latent_hist.json`` (``{"edges": [...],
"epochs": {"<epoch>": [counts, ...]}}``, the binary layers' latent weights pooled); the surrogate figure draws
its first and last epoch under each surrogate and is left out where the store has none (the estimators sheet
already shows the surrogates alone).
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd

from bench.report import style
from bench.report.collect import Collected, display_label
from bench.report.layers import layer_frame
from bench.report.stats import t_interval

HIST_ARTIFACT = "latent_hist.json"
#: a reference (FP, control) this far outside the methods' range, as a share of it, is named, not drawn
REFERENCE_REACH = 0.25
#: the zoomed accuracy panel: its share of the last epochs and how far below the best a method may end to be in it
ZOOM_SHARE, ZOOM_LEAD = 0.4, 15.0


def styles(runs: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Style per display label, from each label's estimator and role (:func:`bench.report.style.method_style`),
    so a method's look never depends on which other methods the suite ran."""
    out: dict[str, dict[str, Any]] = {}
    for r in runs[["display", "role", "estimator"]].drop_duplicates("display").itertuples():
        out[r.display] = {**style.method_style(r.estimator, r.role), "estimator": r.estimator}
    return out


def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its display label; methods first (by label), then the control, then FP."""
    df = df.assign(display=[display_label(r) for r in df[["estimator", "role"]].to_dict("records")])
    order = df.role.map({"method": 0, "control": 1, "baseline": 2})
    return df.assign(_o=order).sort_values(["_o", "display"], kind="stable").drop(columns="_o")


def panels(data: pd.DataFrame) -> list[tuple[str, str]]:
    """(model, bits) of each panel, models in name order, bits within."""
    return [tuple(p) for p in data[["model", "bits"]].drop_duplicates().sort_values(["model", "bits"])
            .itertuples(index=False)]


def _grid(n: int, height: float, cols: int = 2) -> tuple[Any, list[Any]]:
    """``n`` panels, up to ``cols`` a row: one column wide for a single panel, two columns wide otherwise."""
    import matplotlib.pyplot as plt

    cols = min(cols, n)
    rows = math.ceil(n / cols)
    width = style.ONE_COLUMN if cols == 1 else style.TWO_COLUMN
    fig, axes = plt.subplots(rows, cols, figsize=(width, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_axis_off()
    return fig, flat[:n]


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

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
    if len(epochs):
        ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)


def _draw_method(ax: Any, g: pd.DataFrame, y: str, st: dict[str, Any], label: str, band: bool = True) -> pd.Series:
    """Mean over seeds per epoch with markers (a 2-epoch run shows its 2 points), min-max band over seeds;
    stage boundaries as dotted verticals. Returns the mean curve."""
    agg = g.groupby("epoch")[y].agg(["mean", "min", "max"])
    every = max(1, len(agg) // 8)
    ax.plot(agg.index, agg["mean"], color=st["color"], ls=st["ls"], ms=3.2, lw=1.0, label=label,
            markevery=(style.marker_offset(st.get("estimator", label), every), every), **style.marker_kwargs(st))
    if band and g["seed"].nunique() > 1:
        ax.fill_between(agg.index, agg["min"], agg["max"], color=st["color"], alpha=0.10, lw=0)
    for x, text in _stage_bounds(g):  # named in the legend: a label in the panel would cover curves
        ax.axvline(x, color=st["color"], ls=":", lw=0.8, label=f"{label} stages: {text}")
    return agg["mean"]


def method_range(curves: list[pd.Series], log: bool = False, late: bool = True) -> tuple[float, float]:
    """The y-range the methods' mean curves need (``late``: from their second quarter of epochs on, since the
    first epochs of an accuracy curve sit far below where the methods are compared); positive values only on a
    log axis."""
    vals = []
    for s in curves:
        late_part = s[s.index > s.index.min() + (s.index.max() - s.index.min()) / 4] if late and len(s) > 3 else s
        vals += [float(v) for v in late_part if v == v and (v > 0 or not log)]
    if not vals:
        return (1e-6, 1.0) if log else (0.0, 1.0)
    return min(vals), max(vals)


def _limits(lo: float, hi: float, log: bool) -> tuple[float, float]:
    if log:
        return lo / 1.6, hi * 1.6
    pad = max((hi - lo) * 0.06, 0.5)
    return lo - pad, hi + pad


def _references(ax: Any, refs: list[tuple[str, float, dict[str, Any]]], lo: float, hi: float,
                log: bool) -> list[str]:
    """Draw each (label, value) reference as a horizontal line; one within REFERENCE_REACH of the methods'
    range widens it; one further away is returned as "FP 52.4 ↑" for the panel's title (text inside the panel
    would cover data)."""
    span = (math.log10(hi) - math.log10(lo)) if log else (hi - lo) or 1.0
    for _label, v, _st in refs:
        dist = ((math.log10(v) - math.log10(hi)) if v > hi else (math.log10(lo) - math.log10(v))) if log and v > 0 \
            else ((v - hi) if v > hi else (lo - v))
        if dist <= REFERENCE_REACH * span and (v > 0 or not log):
            lo, hi = min(lo, v), max(hi, v)
    ylo, yhi = _limits(lo, hi, log)
    ax.set_ylim(ylo, yhi)
    off = []
    for label, v, st in refs:
        if ylo <= v <= yhi:
            ax.axhline(v, color=st["color"], ls=st["ls"], lw=0.9, label=label, zorder=1)
        else:
            off.append(f"{label.split(' ')[0]} {v:.3g} {'↑' if v > yhi else '↓'}")
    return off


def _reference_values(cur: pd.DataFrame, y: str, model: str, bits: str) -> list[tuple[str, float, dict]]:
    """Final-epoch means of FP (its model's panels) and of the control (its cell's panel)."""
    out = []
    for role, name in (("baseline", "FP"), ("control", "control")):
        g = cur[(cur.role == role) & (cur.model == model) & ((cur.bits == bits) | (role == "baseline"))]
        g = g.dropna(subset=[y])
        if len(g):
            last = g[g.epoch == g.epoch.max()]
            out.append((f"{name} (final)", float(last[y].mean()), style.FP if role == "baseline" else style.CONTROL))
    return out


def _fig_lines(cur: pd.DataFrame, y: str, ylabel: str, sty: dict[str, dict[str, Any]], log: bool = False,
               zoom: bool = False) -> Any:
    """Per-epoch lines per method, a panel per model and bits; FP and the control as final-mean reference
    lines; the legend below the panels, never over the data. ``zoom``: beside each panel, its last epochs
    with the y-range of the leading methods (those within ZOOM_LEAD points of the best at the end)."""
    methods = cur[cur.role == "method"]
    data = methods if len(methods) else cur
    cells = [(m, b, z) for m, b in panels(data) for z in ((False, True) if zoom else (False,))]
    fig, axes = _grid(len(cells), 2.3)
    for ax, (m, b, z) in zip(axes, cells, strict=True):
        panel = data[(data.model == m) & (data.bits == b)]
        if z:
            panel = _leaders(panel, y)
        means = [_draw_method(ax, g, y, sty[label], label, band=not z)
                 for label, g in panel.groupby("display", sort=False)]
        if log:
            ax.set_yscale("log")
        lo, hi = method_range(means, log, late=not (log or z))  # a zoom is its late epochs already
        off = _references(ax, _reference_values(cur, y, m, b) if len(methods) else [], lo, hi, log)
        epochs = panel["epoch"] if z else data[data.model == m]["epoch"]
        _epoch_axis(ax, epochs)
        left = sorted(set(data[(data.model == m) & (data.bits == b)].display) - set(panel.display)) if z else []
        notes = (["off the axis: " + ", ".join(off)] if off else []) + (["not shown: " + ", ".join(left)]
                                                                       if left else [])
        title = f"{m} {b}" + (", last epochs: leaders" if z else "")
        ax.set_title("\n".join([title, *textwrap.wrap("; ".join(notes), 50)]))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
    _legend_below(fig, axes)
    return fig


def _leaders(panel: pd.DataFrame, y: str) -> pd.DataFrame:
    """The last ZOOM_SHARE of the panel's epochs, for the methods whose final mean is within ZOOM_LEAD points of
    the best one's."""
    last = panel.epoch.max()
    first = max(panel.epoch.min(), last - max(2, round(ZOOM_SHARE * (last - panel.epoch.min() + 1))) + 1)
    final = panel[panel.epoch == last].groupby("display")[y].mean()
    keep = final[final >= final.max() - ZOOM_LEAD].index
    return panel[(panel.epoch >= first) & panel.display.isin(keep)]


def _legend_below(fig: Any, axes: list[Any]) -> None:
    """One legend for the figure, under its panels (a legend inside a panel covers data)."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    if not handles:
        fig.tight_layout()
        return
    ncol = 3 if fig.get_figwidth() < 5 else 5
    rows = math.ceil(len(handles) / ncol)
    fig.tight_layout(rect=(0, 0.05 * rows * 3.3 / fig.get_figheight(), 1, 1))
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=ncol, frameon=False,
               bbox_to_anchor=(0.5, 0.0), handlelength=2.6, columnspacing=1.0)


def final_intervals(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model, bits and method: mean final top-1 and its 95% Student-t interval over seeds (the tables'
    :func:`bench.report.stats.t_interval`); nan ends where a method has fewer than 2 runs."""
    rows = []
    for (model, bits, label), g in runs.groupby(["model", "bits", "display"], sort=False):
        mean, lo, hi = t_interval([float(v) for v in g["top1"]])
        rows.append({"model": model, "bits": bits, "display": label, "role": g.role.iloc[0], "n": len(g),
                     "mean": mean, "low": lo, "high": hi})
    return pd.DataFrame(rows)


def final_limits(methods: pd.DataFrame, refs: list[float]) -> tuple[tuple[float, float], list[bool]]:
    """The x-range of one final top-1 panel, set by the methods' intervals, widened to each reference (FP,
    control) within REFERENCE_REACH of that range, in [0, 100]; and which references it holds."""
    vals = [*methods["low"].fillna(methods["mean"]), *methods["high"].fillna(methods["mean"])]
    lo, hi = min(vals), max(vals)
    span = max(hi - lo, 1.0)
    held = [lo - REFERENCE_REACH * span <= v <= hi + REFERENCE_REACH * span for v in refs]
    for v, keep in zip(refs, held, strict=True):
        lo, hi = (min(lo, v), max(hi, v)) if keep else (lo, hi)
    pad = max((hi - lo) * 0.05, 0.5)
    return (max(0.0, lo - pad), min(100.0, hi + pad)), held


def _fig_final(runs: pd.DataFrame, sty: dict[str, dict[str, Any]]) -> Any:
    """Final top-1 per method, mean and 95% t-interval, a panel per model and bits, each with its own x-range
    set by its methods: FP (black dotted) and the control (grey dashed, and its own row) are drawn where they
    lie near that range, and named in a legend under the panels, or named in the panel's title otherwise."""
    ci = final_intervals(runs)
    binary = ci[ci.role != "baseline"]
    data = binary if len(binary) else ci
    cells = panels(data)
    fig, axes = _grid(len(cells), 0.17 * data.display.nunique() + 0.9)
    for ax, (m, b) in zip(axes, cells, strict=True):
        panel = data[(data.model == m) & (data.bits == b)].reset_index(drop=True)
        refs = [(ref["mean"].iloc[0], st, name) for ref, st, name in (
            (ci[(ci.role == "baseline") & (ci.model == m)], style.FP, "FP"),
            (panel[panel.role == "control"], style.CONTROL, "control")) if len(ref)]
        methods = panel[panel.role == "method"] if (panel.role == "method").any() else panel
        (lo, hi), held = final_limits(methods, [v for v, _st, _n in refs])
        off = [f"{name} {v:.3g} {'→' if v > hi else '←'}" for (v, _st, name), keep in zip(refs, held, strict=True)
               if not keep]
        panel = panel[(panel.role != "control") | ("control" not in " ".join(off))].reset_index(drop=True)
        _final_rows(ax, panel, sty)
        for (v, st, name), keep in zip(refs, held, strict=True):
            if keep:
                ax.axvline(v, color=st["color"], ls=st["ls"], lw=0.9, label=f"{name} mean")
        ax.set_xlim(lo, hi)
        ax.set_title(f"{m} {b}" + ("\noff the axis: " + ", ".join(off) if off else ""))
        ax.set_xlabel("final test top-1 (%)")
    _legend_below(fig, axes)  # names the reference lines drawn (an unnamed dotted line reads as nothing)
    return fig


def _final_rows(ax: Any, panel: pd.DataFrame, sty: dict[str, dict[str, Any]]) -> None:
    """One row per method: its mean and 95% t-interval as an error bar in its style."""
    for k, r in panel.iterrows():
        err = [[r["mean"] - r["low"]], [r["high"] - r["mean"]]] if not math.isnan(r["low"]) else None
        st = sty[r["display"]]
        ax.errorbar(r["mean"], k, xerr=err, fmt=st["marker"] or "o", color=st["color"], capsize=2, ms=3.5, lw=1,
                    mfc="white" if not st.get("fill", True) else st["color"])
    ax.set_yticks(range(len(panel)), panel["display"])
    ax.set_ylim(len(panel) - 0.5, -0.5)


def _fig_layers(lay: pd.DataFrame, model: str, bits: str) -> Any:
    """One row per estimator, flip ratio and QE per layer (y, by the model's layer names) and epoch (x), means
    over seeds; one log colour scale per metric for the whole figure (a zero, which a log scale cannot show,
    is left white and said so)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    cell = lay[(lay.model == model) & (lay.bits == bits)]
    order = cell.assign(_ctl=cell.role != "method").sort_values(["_ctl", "display"])
    labels = list(dict.fromkeys(order.display))
    layers = list(dict.fromkeys(cell.sort_values("layer_order").layer))
    fig, axes = plt.subplots(len(labels), 2, figsize=(style.TWO_COLUMN, 0.15 * len(layers) * len(labels) + 1.4),
                             squeeze=False, sharex=True, layout="constrained")
    images = {}
    for j, metric in enumerate(("flip", "qe")):
        pos = cell.loc[(cell.metric == metric) & (cell.value > 0), "value"]
        norm = LogNorm(pos.min(), pos.max()) if len(pos) else None
        for i, label in enumerate(labels):
            ax = axes[i, j]
            grid = cell[(cell.display == label) & (cell.metric == metric)].pivot_table(
                index="layer", columns="epoch", values="value", aggfunc="mean").reindex(layers)
            _heat_panel(ax, grid, norm, images, metric, show_layers=j == 0)
            if j == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", labelpad=26)
            if i == 0:
                ax.set_title("flip ratio (share of signs changed per epoch)" if metric == "flip" else "QE")
        axes[-1, j].set_xlabel("epoch")
        if metric in images:
            fig.colorbar(images[metric], ax=list(axes[:, j]), location="bottom", shrink=0.8, aspect=30,
                         label=("flip ratio" if metric == "flip" else "QE") + " (log scale; white: 0)")
    return fig


def _heat_panel(ax: Any, grid: pd.DataFrame, norm: Any, images: dict[str, Any], metric: str,
                show_layers: bool) -> None:
    """One heatmap panel on the figure's shared norm; "not logged" / "0 throughout" where it has nothing to
    colour."""
    ax.grid(False)
    if grid.isna().all().all() or norm is None or not (grid > 0).any().any():
        text = "not logged" if grid.isna().all().all() else "0 throughout"
        ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=style.SMALL_PT)
        ax.set_yticks([])
        return
    images[metric] = ax.imshow(grid.where(grid > 0).values, aspect="auto", cmap="viridis", interpolation="nearest",
                               norm=norm, extent=(grid.columns.min() - 0.5, grid.columns.max() + 0.5,
                                                  len(grid) - 0.5, -0.5))
    ax.set_yticks(range(len(grid)), list(grid.index) if show_layers else [])
    _epoch_axis(ax, pd.Series(grid.columns))


def budget_limits(panel: pd.DataFrame) -> tuple[tuple[float, float], str]:
    """The y-range of one budget panel, set by its methods' intervals (:func:`final_limits`), widened to the
    control's points where all of them (intervals included) lie within reach; else the control is left out and
    named: the text for the panel's title ('' when it is drawn)."""
    methods = panel[panel.role == "method"] if (panel.role == "method").any() else panel
    ctrl = panel[panel.role == "control"]
    refs = [*ctrl["mean"], *ctrl["low"].dropna().clip(lower=0), *ctrl["high"].dropna().clip(upper=100)]
    (lo, hi), held = final_limits(methods, refs)
    if all(held):
        return (lo, hi), ""
    (lo, hi), _ = final_limits(methods, [])
    means = ctrl["mean"]
    where = "↑" if means.min() > hi else "↓" if means.max() < lo else "↕"
    return (lo, hi), f"control {means.min():.3g}–{means.max():.3g} {where}"


def _fig_budget(budgets: pd.DataFrame, sty: dict[str, dict[str, Any]]) -> Any:
    """Final top-1 against the training budget per method: mean and 95% t-interval over seeds, a panel per model
    and bits; the x-axis in epochs (each budget a full run of that many epochs), log-spaced; the y-range set by
    the methods, the control drawn where it lies near them and named in the panel's title otherwise."""
    from bench.report.budget import points

    pts = points(budgets)
    pts = pts.assign(display=[display_label(r) for r in pts[["estimator", "role"]].to_dict("records")])
    cells = panels(pts)
    fig, axes = _grid(len(cells), 2.3)
    for ax, (m, b) in zip(axes, cells, strict=True):
        panel = pts[(pts.model == m) & (pts.bits == b)]
        (lo, hi), off = budget_limits(panel)
        panel = panel[panel.role != "control"] if off else panel
        for k, (label, g) in enumerate(panel.groupby("display", sort=True)):
            st = sty.get(label) or style.method_style(g.estimator.iloc[0], g.role.iloc[0])
            g = g.sort_values("epochs")
            # intervals cut at 0 and 100 (top-1 lies there); methods side by side, not on top of each other
            err = [(g["mean"] - g["low"].clip(lower=0)).fillna(0), (g["high"].clip(upper=100) - g["mean"]).fillna(0)]
            dodge = 1 + 0.025 * (k - (panel.display.nunique() - 1) / 2)
            ax.errorbar(g["epochs"] * dodge, g["mean"], yerr=err, color=st["color"], ls=st["ls"], capsize=2, lw=1,
                        ms=3.2, label=label, **style.marker_kwargs(st))
        ticks = sorted(panel.epochs.unique())
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{e}\n({bu:g})" for e, bu in zip(ticks, panel.drop_duplicates("epochs")
                                                                    .sort_values("epochs").budget, strict=False)])
        ax.minorticks_off()
        ax.set_ylim(lo, hi)
        ax.set_title(f"{m} {b}" + (f"\noff the axis: {off}" if off else ""))
        ax.set_xlabel("epochs (budget)")
        ax.set_ylabel("final test top-1 (%)")
    _legend_below(fig, axes)
    return fig


def _fig_sensitivity(runs: pd.DataFrame) -> Any:
    """Final top-1 of every searched point per method (a box over the points, one dot per point and seed)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    sens = runs.copy()
    sens["setting"] = sens["optimizer"] + " lr=" + sens["lr"].astype(str) + " " + sens["lr_schedule"]
    fig, ax = plt.subplots(figsize=(style.TWO_COLUMN, 0.22 * sens["method"].nunique() + 1.2))
    sns.boxplot(data=sens, x="top1", y="method", color="0.92", ax=ax, fliersize=0, linewidth=0.6)
    sns.stripplot(data=sens, x="top1", y="method", hue="setting", ax=ax, size=3, dodge=False, palette="colorblind")
    ax.set_xlabel("final test top-1 (%) over the searched settings")
    ax.set_ylabel("")
    ax.legend(bbox_to_anchor=(1.01, 1), loc="upper left", frameon=False, title="setting")
    fig.tight_layout()
    return fig


def latent_histograms(c: Collected, runs: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per method label, the first of its runs that carries ``latent_hist.json``: ``{"edges", "first": (epoch,
    counts), "last": (epoch, counts)}``; labels without one are absent (stores written before it was logged)."""
    from bench.track.store import MlflowException, read_artifact

    out: dict[str, dict[str, Any]] = {}
    for label, g in runs[runs.role == "method"].groupby("display"):
        for rid in g.run_id:
            try:
                blob = read_artifact(c.uri, rid, HIST_ARTIFACT)  # a copied store's artifacts beside it count too
                if blob is None:
                    continue
                raw = json.loads(blob)
                epochs = sorted(raw["epochs"], key=int)
            except (MlflowException, OSError, ValueError, KeyError, TypeError):
                continue  # an artifact store moved away or a malformed file: the figure says there is none
            if epochs:
                out[label] = {"edges": raw["edges"], "first": (epochs[0], raw["epochs"][epochs[0]]),
                              "last": (epochs[-1], raw["epochs"][epochs[-1]])}
                break
    return out


def _surrogate_panel(ax: Any, est: str, label: str, hist: dict[str, Any] | None) -> None:
    import numpy as np
    import torch

    from bench.plots import curves

    lim = max(abs(hist["edges"][0]), abs(hist["edges"][-1])) if hist else 2.0
    x = torch.linspace(-lim, lim, 401)
    if hist:
        hx = ax.twinx()
        edges = np.asarray(hist["edges"], dtype=float)
        for key, shade in (("first", "0.8"), ("last", "0.45")):
            epoch, counts = hist[key]
            hx.stairs(np.asarray(counts, dtype=float) / max(1.0, float(np.sum(counts))), edges, color=shade,
                      fill=key == "first", alpha=0.7, label=f"latent weights, epoch {epoch}")
        hx.set_yticks([])
        hx.set_zorder(ax.get_zorder() - 1)  # the histogram under the surrogate, not over it
        ax.patch.set_visible(False)
    else:
        ax.text(0.02, 0.98, "no histogram stored", transform=ax.transAxes, ha="left", va="top",
                fontsize=style.SMALL_PT, color="0.3")
    for (text, _f, g), shade in zip(curves(est, x), ("#332288", "#CC6677", "#117733"), strict=False):
        ax.plot(x, g, lw=1.0, color=shade, label=text or "surrogate")
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))  # a flat surrogate at its true height over 0
    ax.set_title(label)
    ax.set_xlabel("latent weight")


def _fig_surrogates(runs: pd.DataFrame, hists: dict[str, dict[str, Any]]) -> Any:
    """Each method with a stored histogram: its surrogate gradient over the histogram of its latent weights at
    the first and last epoch; the legend below the panels."""
    import matplotlib.pyplot as plt

    from bench import list_estimators

    pairs = runs[(runs.role == "method") & runs.estimator.isin(list_estimators())
                 & runs.display.isin(hists)].drop_duplicates("display")
    n = max(len(pairs), 1)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(style.ONE_COLUMN if cols == 1 else style.TWO_COLUMN,
                                                  1.7 * rows + 0.5), squeeze=False)
    for ax, r in zip(axes.flat, pairs.itertuples(), strict=False):
        _surrogate_panel(ax, r.estimator, r.display, hists.get(r.display))
    for ax in list(axes.flat)[len(pairs):]:
        ax.set_axis_off()
    axes[0, 0].set_ylabel("surrogate gradient")
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    fig.tight_layout(rect=(0, 0.12 if rows == 1 else 0.06, 1, 1))
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(4, len(handles)) or 1, frameon=False)
    return fig


def _curves(c: Collected, runs: pd.DataFrame) -> pd.DataFrame:
    keep = ["run_id", "estimator", "role", "display", "model", "dataset", "bits", "recipe", "seed", "stage_epochs",
            "model_args"]
    cur = c.curves.merge(runs[[k for k in keep if k in runs]], on="run_id")
    return cur.assign(epoch=cur["step"] + 1) if len(cur) else cur.assign(epoch=[])


def layer_figure_name(model: str, bits: str, cells: int) -> str:
    return "layer_diagnostics" if cells == 1 else f"layer_diagnostics_{model}_{bits}"


def _draw_all(c: Collected, save: Any) -> None:
    from bench import list_estimators
    from bench.plots import estimators_figure

    runs = _labelled(c.runs[c.runs.status == "finished"])
    sty, cur = styles(runs), _curves(c, runs)
    if "test_top1" in cur and cur["test_top1"].notna().any():
        save(_fig_lines(cur[cur.test_top1.notna()], "test_top1", "test top-1 (%)", sty, zoom=True), "accuracy_curves")
    save(_fig_final(runs, sty), "final_top1")
    for name, fig in _estimator_figures(runs).items():
        save(fig, name)
    if "diag/flip" in cur and (cur.loc[cur.role == "method", "diag/flip"] > 0).any():
        save(_fig_lines(cur[cur["diag/flip"].notna() & (cur.role != "control")], "diag/flip",
                        "flip ratio (log)", sty, log=True), "flip_ratio")
    lay = layer_frame(cur)
    cells = panels(lay) if len(lay) else []
    for m, b in cells:
        save(_fig_layers(lay, m, b), layer_figure_name(m, b, len(cells)))
    hists = latent_histograms(c, runs)
    if hists:
        save(_fig_surrogates(runs, hists), "surrogates")
    ests = sorted(runs.loc[runs.role == "method", "estimator"].unique())  # the control is no method to sheet
    save(estimators_figure([e for e in ests if e in list_estimators()]), "estimators")
    if runs.get("search_point", pd.Series(dtype=str)).replace("", pd.NA).notna().any():
        save(_fig_sensitivity(runs.assign(method=runs.display)), "sensitivity")
    if not c.budgets.empty and c.budgets.budget.nunique() > 1:
        save(_fig_budget(c.budgets[c.budgets.role != "baseline"], sty), "budget_curves")


def at_print_size(fig: Any) -> Any:
    """A figure drawn elsewhere (an estimator's own) made to the report's rules: one or two columns wide,
    no text under 7 pt, long titles wrapped to their panel, the panels' legends gathered into one under them
    rather than over data."""
    import textwrap

    from matplotlib.text import Text

    w, h = fig.get_size_inches()
    width = style.ONE_COLUMN if w < 0.75 * style.TWO_COLUMN else style.TWO_COLUMN
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        if ax.get_legend() is not None:
            for hd, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(lab, hd)
            ax.get_legend().remove()
    ncol = 1 if width == style.ONE_COLUMN else 2
    legend_in = 0.16 * math.ceil(len(handles) / ncol) + (0.1 if handles else 0)
    fig.set_size_inches(width, max(h * width / w, 1.8) + legend_in)
    for t in fig.findobj(Text):
        if t.get_fontsize() < style.SMALL_PT:
            t.set_fontsize(style.SMALL_PT)
    for ax in fig.axes:
        chars = int(ax.get_position().width * width / 0.065)  # ~0.065 in per character at 8 pt
        ax.set_title(textwrap.fill(ax.get_title(), max(chars, 20)))
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1))
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=ncol, frameon=False,
                   fontsize=style.SMALL_PT)
    return fig


CAPTIONS = {
    "accuracy_curves": "Test top-1 per epoch: the mean over seeds of each method (band: min-max over seeds), a "
                       "panel per network and W/A; beside each, its last epochs with the leading methods (those "
                       "ending within {lead:g} points of the best) on their own y-range. FP (black dotted) and the "
                       "control (grey dashed) are reference lines at their final mean; one far outside the "
                       "methods' range is named in the panel's title. Dotted verticals: stage boundaries (named "
                       "in the legend).",
    "final_top1": "Final test top-1: mean and 95% Student-t interval over seeds per method (the tables' numbers), "
                  "a panel per network and W/A, each with its own x-range set by its methods; the FP (black "
                  "dotted) and control (grey dashed) means are drawn where they lie near it and named in the "
                  "panel's title otherwise.",
    "flip_ratio": "Flip ratio per epoch: the share of binary weights whose sign changed in that epoch, mean over "
                  "binary layers and seeds, on a log axis (the control never flips and is left out).",
    "layer_diagnostics": "Per-layer flip ratio and QE per epoch ({cell}), one row per method, layers by the "
                         "model's own names; one log colour scale per metric for the whole figure (white: 0).",
    "surrogates": "Surrogate gradients over the histogram of each method's latent weights at the first and last "
                  "epoch (methods whose runs stored one).",
    "estimators": "Every method's forward function (grey) and surrogate gradient over x in [-2, 2], one line per "
                  "training progress e/E where the gradient has a schedule.",
    "sensitivity": "Final top-1 of every searched setting per method: the box spans the settings, a dot is one "
                   "setting and seed.",
    "budget_curves": "Final top-1 against the training budget (epochs; each budget a full run with its schedule "
                     "rescaled), mean and 95% Student-t interval over seeds per method, a panel per network and "
                     "W/A, its range set by the methods (the control is drawn where it lies near them, named "
                     "above the panel otherwise); the rank agreement of each budget with the largest is in the "
                     "rank-agreement table.",
}


def caption(name: str, fig: Any = None) -> str:
    """What a figure shows, for the HTML page: from :data:`CAPTIONS` by its name, an estimator's own figure by
    its title."""
    if name.startswith("layer_diagnostics"):
        cell = name[len("layer_diagnostics_"):].replace("_", " ") or "the suite's one cell"
        return CAPTIONS["layer_diagnostics"].format(cell=cell)
    if name in CAPTIONS:
        return CAPTIONS[name].format(lead=ZOOM_LEAD)
    titles = [ax.get_title().replace("\n", " ") for ax in (fig.axes if fig is not None else []) if ax.get_title()]
    return f"An estimator's own figure ({name}): " + ("; ".join(titles) or "see its estimator's report_figures")


def write_figures(c: Collected, out: Path) -> list[Path]:
    """The report's figures (PNG and PDF) under ``out``; returns the PNG paths."""
    return [p for p, _caption in write_captioned(c, out)]


def write_captioned(c: Collected, out: Path) -> list[tuple[Path, str]]:
    """The report's figures (PNG and PDF) under ``out``: (PNG path, caption) of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style.apply()
    out.mkdir(parents=True, exist_ok=True)
    made: list[tuple[Path, str]] = []

    def save(fig: Any, name: str) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)  # model and bits names come from run tags
        for ext in ("png", "pdf"):
            # the figure keeps its print size: a tight box only trims white space (no text is scaled down)
            fig.savefig(out / f"{safe}.{ext}", dpi=style.PNG_DPI, bbox_inches="tight", pad_inches=0.02)
        made.append((out / f"{safe}.png", caption(name, fig)))
        plt.close(fig)

    _draw_all(c, save)
    return made


def _estimator_figures(runs: pd.DataFrame) -> dict[str, Any]:
    """The figures each estimator of the suite declares for itself (``Estimator.report_figures``), drawn from its
    own runs at print size; a figure that fails to draw is skipped with a warning, not a failed report."""
    import warnings

    from bench.estimator import ESTIMATORS

    out: dict[str, Any] = {}
    for est, g in runs.groupby("estimator"):
        if est not in ESTIMATORS:
            continue
        try:
            out.update({k: at_print_size(f) for k, f in ESTIMATORS.get(est).report_figures(g).items()})
        except Exception as exc:  # noqa: BLE001 - a plugin's figure must not cost the tables
            warnings.warn(f"estimator {est!r}: its report figure failed ({type(exc).__name__}: {exc})", stacklevel=2)
    return out

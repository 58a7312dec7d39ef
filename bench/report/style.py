"""One look for every figure of every report: print sizes, text sizes and one fixed style per method.

A method's style (colour, marker, line style) depends on its estimator's name and the registry alone, never on
which other methods a suite runs, so a method looks the same in every figure of every report. The built-in
methods take Paul Tol's colour-blind-safe "muted" palette (nine distinct hues) in name order, each with its own
marker and a line style that differs from its neighbours'; a plugin gets a style from a digest of its name
(deterministic, and drawn with a hollow marker so that it is told apart from a built-in sharing its hue). The
control is grey and dashed, the FP baseline black and dotted.
"""

from __future__ import annotations

import zlib
from typing import Any

#: Paul Tol's "muted" qualitative palette without its pale grey (the control's): nine distinct hues
PALETTE = ("#332288", "#CC6677", "#117733", "#DDCC77", "#88CCEE", "#882255", "#44AA99", "#999933", "#AA4499")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")
LINESTYLES = ("-", "--", "-.", (0, (3, 1, 1, 1, 1, 1)))
CONTROL: dict[str, Any] = {"color": "0.5", "ls": "--", "marker": "x", "fill": True}
FP: dict[str, Any] = {"color": "black", "ls": ":", "marker": "", "fill": True}

#: print widths in inches: one column and the full text width of a two-column paper (IEEE/ACM/NeurIPS style)
ONE_COLUMN, TWO_COLUMN = 3.3, 6.9
#: text sizes in points at the print width (every figure is drawn at its print size, never scaled down)
TEXT_PT, SMALL_PT = 8, 7
PNG_DPI = 300

RC = {"font.size": TEXT_PT, "axes.titlesize": TEXT_PT, "axes.labelsize": TEXT_PT, "xtick.labelsize": SMALL_PT,
      "ytick.labelsize": SMALL_PT, "legend.fontsize": SMALL_PT, "figure.titlesize": TEXT_PT,
      "legend.title_fontsize": SMALL_PT, "lines.linewidth": 1.1, "lines.markersize": 3.5, "axes.linewidth": 0.6,
      "grid.linewidth": 0.4, "pdf.fonttype": 42, "savefig.dpi": PNG_DPI, "axes.titlepad": 3.0}


def apply() -> None:
    """Set the report's matplotlib look (seaborn's white grid, then the sizes above)."""
    import matplotlib
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    matplotlib.rcParams.update(RC)


def _builtin_methods() -> list[str]:
    """The registered built-in methods (role ``method``), in name order: they own the palette's slots."""
    from bench.estimator import ESTIMATORS

    return [n for n in ESTIMATORS.names() if ESTIMATORS.entry(n).source == "builtin"
            and ESTIMATORS.get(n).role == "method" and not n.startswith("test_")]


def method_style(estimator: str, role: str = "method") -> dict[str, Any]:
    """The fixed style of one estimator: ``color``, ``marker``, ``ls`` and ``fill`` (False: hollow marker)."""
    if role == "baseline":
        return dict(FP)
    if role == "control":
        return dict(CONTROL)
    builtins = _builtin_methods()
    if estimator in builtins:
        i = builtins.index(estimator)
        return {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)],
                "ls": LINESTYLES[i % len(LINESTYLES)], "fill": True}
    h = zlib.crc32(estimator.encode())  # stable across processes, unlike hash()
    return {"color": PALETTE[h % len(PALETTE)], "marker": MARKERS[(h // 7) % len(MARKERS)],
            "ls": LINESTYLES[(h // 11) % len(LINESTYLES)], "fill": False}


def marker_kwargs(st: dict[str, Any]) -> dict[str, Any]:
    """Matplotlib marker arguments of a style: hollow markers for plugins."""
    kw: dict[str, Any] = {"marker": st["marker"] or None}
    if not st.get("fill", True):
        kw["markerfacecolor"] = "white"
    return kw


def marker_offset(estimator: str, every: int) -> int:
    """Where a method's markers start within every ``every`` points: methods whose curves coincide (two
    estimators that act the same) still show both markers side by side."""
    return zlib.crc32(estimator.encode()) % max(every, 1)


__all__ = ["CONTROL", "FP", "ONE_COLUMN", "PALETTE", "TWO_COLUMN", "apply", "marker_kwargs", "method_style"]

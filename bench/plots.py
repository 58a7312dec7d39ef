"""Figures of estimators: forward function and surrogate gradient over x in [-2, 2]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.estimator import get_estimator_class
from bench.probing import probe

PROGRESS = (0.0, 0.5, 1.0)


def _probe_args(name: str) -> tuple[str, dict]:
    cls = get_estimator_class(name)
    kind = "weight" if "weight" in cls.kinds else "activation"
    # per-channel standardisation couples the points; plot the elementwise surrogate
    hp = {"standardize": False} if "standardize" in cls.hparam_defaults() else {}
    return kind, hp


def curves(name: str, x: torch.Tensor) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(label, forward, grad) per progress point; one entry when the estimator has no schedule."""
    kind, hp = _probe_args(name)
    out = []
    for p in PROGRESS:
        f, g = probe(name, x, kind=kind, progress=p, **hp)
        out.append((f"e/E = {p:g}", f, g))
    if all(torch.equal(out[0][2], o[2]) for o in out[1:]):
        out = [("", out[0][1], out[0][2])]
    return out


def estimators_figure(names: list[str], cols: int = 3) -> Any:
    """Every estimator in its own panel, ``cols`` panels a row at two-column print width (6.9 in, 7-8 pt text):
    its forward function (grey) and its surrogate gradient (one line per training progress e/E where it has a
    schedule) over x in [-2, 2], titled by its display name; the legend under the panels."""
    import matplotlib.pyplot as plt

    from bench.report import style

    x = torch.linspace(-2, 2, 801)
    n = max(len(names), 1)
    cols = min(cols, n)
    rows = -(-n // cols)
    width = style.ONE_COLUMN if cols == 1 else style.TWO_COLUMN
    with plt.rc_context(style.RC):
        fig, axes = plt.subplots(rows, cols, figsize=(width, 1.55 * rows + 0.45), squeeze=False, sharex=True)
        for ax, name in zip(axes.flat, names, strict=False):
            cs = curves(name, x)
            ax.plot(x, cs[0][1], color="0.55", lw=1.0, label="forward")
            for (label, _f, g), color in zip(cs, ("#332288", "#CC6677", "#117733"), strict=False):
                ax.plot(x, g, color=color, lw=1.1, label=f"surrogate gradient, {label}" if label else
                        "surrogate gradient")
            ax.set_title(get_estimator_class(name).display_name or name)
        for ax in list(axes.flat)[len(names):]:
            ax.set_axis_off()
        for ax in axes[-1]:
            ax.set_xlabel("x")
        handles: dict[str, Any] = {}
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(lab, h)
        fig.tight_layout(rect=(0, 0.35 / fig.get_figheight(), 1, 1))
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(len(handles), 4), frameon=False)
    return fig


def plot_estimators(names: list[str], path: str | Path) -> Path:
    """The sheet of :func:`estimators_figure` saved to ``path`` (and a PDF beside a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = estimators_figure(names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=200, bbox_inches="tight")
    if path.suffix == ".png":
        fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)
    return path

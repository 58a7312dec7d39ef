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


def estimators_figure(names: list[str]) -> Any:
    """Forward function (top) and surrogate gradient (bottom) of each estimator over x in [-2, 2], titled by its
    display name."""
    import matplotlib.pyplot as plt

    x = torch.linspace(-2, 2, 801)
    fig, axes = plt.subplots(2, max(len(names), 1), figsize=(2.6 * len(names) + 0.6, 5.2), squeeze=False,
                             sharex=True)
    for j, name in enumerate(names):
        cs = curves(name, x)
        for label, f, g in cs:
            axes[0, j].plot(x, f, lw=1.2, label=label or None)
            axes[1, j].plot(x, g, lw=1.2, label=label or None)
        axes[0, j].set_title(get_estimator_class(name).display_name or name)
        axes[1, j].set_xlabel("x")
        if j == 0:
            axes[0, j].set_ylabel("forward")
            axes[1, j].set_ylabel("surrogate gradient")
        if len(cs) > 1:
            axes[1, j].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_estimators(names: list[str], path: str | Path) -> Path:
    """The sheet of :func:`estimators_figure` saved to ``path`` (and a PDF beside a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = estimators_figure(names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    if path.suffix == ".png":
        fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)
    return path

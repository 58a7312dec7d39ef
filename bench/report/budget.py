"""Budget curves: how far a ranking holds.

A suite with ``budgets: [0.25, 0.5, 1]`` runs every trial once per budget, each a full run whose schedule is
resolved for its epochs (:mod:`bench.suite`). Here: accuracy against budget per method with 95% Student-t
intervals over seeds (:func:`points`, the figure), and, per cell, the rank agreement between each budget and the
largest: Kendall's tau (``scipy.stats.kendalltau``, tau-b) of the methods' mean final top-1, with a percentile
bootstrap interval over seeds (:func:`rank_agreement`). The bootstrap resamples seeds with replacement, the same
resampled seeds for every method and both budgets (a seed's runs are paired: same data order and
initialisation), with a fixed generator seed so that a report is reproducible. The control is no method and is
never ranked; the FP baseline has no budget.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from bench.report.stats import CELL, t_interval

BOOTSTRAP_REPS = 2000
BOOTSTRAP_SEED = 0
COLUMNS = [*CELL, "budget", "epochs", "reference_budget", "reference_epochs", "methods", "seeds", "tau",
           "ci95_low", "ci95_high", "ranking", "reference_ranking"]


def points(runs: pd.DataFrame) -> pd.DataFrame:
    """Per cell, method and budget: epochs, n, mean final top-1 and its 95% t-interval over seeds."""
    fin = runs[(runs.status == "finished") & runs.budget.notna()]
    rows = []
    for (*cell, est, budget), g in fin.groupby([*CELL, "estimator", "budget"], sort=True):
        mean, lo, hi = t_interval([float(v) for v in g["top1"]])
        rows.append({**dict(zip(CELL, cell, strict=True)), "estimator": est, "role": g.role.iloc[0],
                     "budget": budget, "epochs": int(g.epochs.median()), "n": len(g), "mean": mean, "low": lo,
                     "high": hi})
    return pd.DataFrame(rows)


def _means(table: pd.DataFrame, seeds: list[int]) -> np.ndarray:
    """Mean top-1 per method (rows of ``table``: method x seed) over ``seeds`` (repeats count again)."""
    return table[seeds].to_numpy(dtype=float).mean(axis=1)


def tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b of two score vectors (nan when either has no spread)."""
    from scipy.stats import kendalltau

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(kendalltau(a, b).statistic)


def bootstrap(at: pd.DataFrame, ref: pd.DataFrame, reps: int = BOOTSTRAP_REPS,
              seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """tau of the methods' mean ranks at two budgets (tables: method x seed, same rows and columns) and its 95%
    percentile bootstrap interval over seeds."""
    seeds = list(at.columns)
    point = tau(_means(at, seeds), _means(ref, seeds))
    if len(seeds) < 2:
        return point, math.nan, math.nan
    rng = np.random.default_rng(seed)
    taus = []
    for _ in range(reps):
        pick = [seeds[i] for i in rng.integers(0, len(seeds), len(seeds))]
        taus.append(tau(_means(at, pick), _means(ref, pick)))
    known = np.asarray([t for t in taus if t == t])
    if not len(known):
        return point, math.nan, math.nan
    return point, float(np.percentile(known, 2.5)), float(np.percentile(known, 97.5))


def _table(g: pd.DataFrame, budget: float) -> pd.DataFrame:
    return g[g.budget == budget].pivot_table(index="display", columns="seed", values="top1", aggfunc="mean")


def _ranking(table: pd.DataFrame) -> str:
    means = table.mean(axis=1).sort_values(ascending=False)
    return " > ".join(f"{m} {v:.1f}" for m, v in means.items())


def _cell_rows(cell: tuple[Any, ...], g: pd.DataFrame, reps: int) -> list[dict[str, Any]]:
    """One cell's rows: each smaller budget against the largest, on the methods and seeds both have."""
    budgets = sorted(g.budget.unique())
    top = budgets[-1]
    ref = _table(g, top)
    rows = []
    for b in budgets[:-1]:
        at = _table(g, b)
        methods = sorted(set(at.index) & set(ref.index))
        seeds = sorted(set(at.columns) & set(ref.columns))
        a, r = at.loc[methods, seeds].dropna(axis=1), ref.loc[methods, seeds].dropna(axis=1)
        common = sorted(set(a.columns) & set(r.columns))
        t, lo, hi = bootstrap(a[common], r[common], reps) if common and len(methods) > 1 else (math.nan,) * 3
        rows.append({**dict(zip(CELL, cell, strict=True)), "budget": b,
                     "epochs": int(g[g.budget == b].epochs.median()), "reference_budget": top,
                     "reference_epochs": int(g[g.budget == top].epochs.median()), "methods": len(methods),
                     "seeds": len(common), "tau": t, "ci95_low": lo, "ci95_high": hi,
                     "ranking": _ranking(a[common]) if common else "",
                     "reference_ranking": _ranking(r[common]) if common else ""})
    return rows


def rank_agreement(runs: pd.DataFrame, reps: int = BOOTSTRAP_REPS) -> pd.DataFrame:
    """Per cell and budget below the largest: Kendall's tau between the methods' ranking at that budget and at
    the largest, with its bootstrap interval over seeds (see the module docstring)."""
    from bench.report.collect import display_label

    fin = runs[(runs.status == "finished") & (runs.role == "method") & runs.budget.notna()]
    if fin.empty:
        return pd.DataFrame(columns=COLUMNS)
    fin = fin.assign(display=[display_label(r) for r in fin[["estimator", "role"]].to_dict("records")])
    rows = []
    for cell, g in fin.groupby(CELL, sort=True):
        rows += _cell_rows(cell, g, reps)
    return pd.DataFrame(rows, columns=COLUMNS)


def display(ra: pd.DataFrame) -> pd.DataFrame:
    """The rank-agreement table as the Markdown and HTML reports show it."""
    def ci(r: pd.Series) -> str:
        return f"[{r.ci95_low:.2f}, {r.ci95_high:.2f}]" if r.ci95_low == r.ci95_low else "–"

    return pd.DataFrame([{"Dataset": r.dataset, "Network": r.model, "W/A": r.bits, "Recipe": r.recipe,
                          "Budget": f"{r.budget:g} ({r.epochs} ep.)",
                          "vs": f"{r.reference_budget:g} ({r.reference_epochs} ep.)", "Methods": r.methods,
                          "Seeds": r.seeds, "Kendall's tau": "–" if r.tau != r.tau else f"{r.tau:.2f}",
                          "95% bootstrap CI": ci(r), "Ranking at this budget": r.ranking,
                          "Ranking at the largest": r.reference_ranking} for _, r in ra.iterrows()])


LEGEND = ("Kendall's tau-b (scipy.stats.kendalltau) between the methods' ranking by mean final top-1 at a budget "
          "and at the largest budget of the suite (1: the same order, 0: unrelated, -1: reversed); interval: 95% "
          f"percentile bootstrap over seeds ({BOOTSTRAP_REPS} resamples, the same seeds for every method and both "
          f"budgets, generator seed {BOOTSTRAP_SEED}). Each budget is a full run with its schedule rescaled to its "
          "epochs, not a truncated longer run. The control is never ranked.")


__all__ = ["LEGEND", "bootstrap", "display", "points", "rank_agreement", "tau"]

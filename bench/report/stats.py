"""Statistics of a report: Student-t intervals, paired differences over shared seeds, paired t-tests with
Holm's adjustment, the lift over the control and the discrimination check.

The control (an estimator with role ``control``: binary weights fixed at their initial signs) is never ranked
as a method. A cell (dataset, network, bits, recipe) in which the reference estimator does not beat it with a
95% interval above 0 "cannot discriminate estimators": its full-precision parts, not the binary weights, carry
the accuracy.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from bench.report.collect import DIAG, Collected, display_label, method_label, reference

CELL = ["dataset", "model", "bits", "recipe"]


FLAG = "this cell cannot discriminate estimators"


def _known(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


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


def _by_seed(g: pd.DataFrame, est: str, metric: str = "top1") -> pd.Series:
    """``metric`` of ``est``'s finished runs in ``g``, one value per seed (searched points averaged)."""
    return g[g.estimator == est].groupby("seed")[metric].mean()


def _pair(a: pd.Series, b: pd.Series) -> tuple[int, float, float, float]:
    """Pairs over shared seeds: (n, mean of a - b, 95% t-interval low, high); nan where there are none."""
    common = sorted(set(a.index) & set(b.index))
    if not common:
        return 0, math.nan, math.nan, math.nan
    return (len(common), *t_interval([float(a[k] - b[k]) for k in common]))


def _control_of(g: pd.DataFrame) -> str | None:
    ctl = sorted(g.loc[g.role == "control", "estimator"].unique())
    return ctl[0] if ctl else None


def lift_table(c: Collected) -> pd.DataFrame:
    """Each binary estimator's lift over its cell's control: the paired difference (estimator − control) of
    final top-1 over shared seeds, with a 95% Student-t interval; nan for the control itself and in cells
    without one."""
    fin = c.runs[(c.runs.status == "finished") & (c.runs.role != "baseline")]
    cols = [*CELL, "estimator", "control", "lift_n_pairs", "lift", "lift_ci95_low", "lift_ci95_high"]
    rows = []
    for cell, g in fin.groupby(CELL, sort=False):
        ctl = _control_of(g)
        for est in sorted(g.estimator.unique()):
            stats = _pair(_by_seed(g, est), _by_seed(g, ctl)) if ctl and est != ctl else (0, *[math.nan] * 3)
            rows.append(dict(zip(cols, (*cell, est, ctl or "", *stats), strict=True)))
    return pd.DataFrame(rows, columns=cols)


def discrimination(c: Collected, probe: str | None = None) -> pd.DataFrame:
    """One row per binary cell: ``probe``'s lift over the control and the cell's ``check``: "discriminates"
    (2 or more pairs and a 95% interval whose lower end is above 0), "cannot discriminate" (otherwise) or
    "no control" (the cell has no control run, so it was not checked). ``probe``: default the reference."""
    probe = probe or reference()
    lt = lift_table(c)
    rows = []
    for cell, g in lt.groupby(CELL, sort=False):
        hit = g[g.estimator == probe]
        n, mean, lo, hi = (hit.iloc[0][["lift_n_pairs", "lift", "lift_ci95_low", "lift_ci95_high"]]
                           if len(hit) else (0, *[math.nan] * 3))
        ctl = g.control.iloc[0]
        check = "no control" if not ctl else "discriminates" if n >= 2 and lo > 0 else "cannot discriminate"
        rows.append({**dict(zip(CELL, cell, strict=True)), "probe": probe, "control": ctl, "n_pairs": int(n),
                     "lift": mean, "ci95_low": lo, "ci95_high": hi, "check": check})
    return pd.DataFrame(rows, columns=[*CELL, "probe", "control", "n_pairs", "lift", "ci95_low", "ci95_high",
                                       "check"])


def flagged_cells(c: Collected, probe: str | None = None) -> list[tuple[str, str, str, str]]:
    """(dataset, network, bits, recipe) of every cell that cannot discriminate estimators: ``probe`` does not
    beat the control with a 95% interval above 0, or has fewer than 2 seeds paired with it."""
    d = discrimination(c, probe)
    return [tuple(r) for r in d.loc[d.check == "cannot discriminate", CELL].itertuples(index=False)]


def paired_p(a: pd.Series, b: pd.Series) -> float:
    """Two-sided p-value of the paired t-test of ``a`` against ``b`` over their shared seeds (scipy's
    ``ttest_rel``); nan with fewer than 2 pairs or when every difference is the same (no variance to test)."""
    from scipy import stats

    common = sorted(set(a.index) & set(b.index))
    diffs = [float(a[k] - b[k]) for k in common]
    if len(diffs) < 2 or max(diffs) == min(diffs):
        return math.nan
    return float(stats.ttest_rel([a[k] for k in common], [b[k] for k in common]).pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (one cell's methods against one reference): the
    k-th smallest is multiplied by (m - k), made monotone and capped at 1; nan values are not in the family."""
    known = sorted((p, i) for i, p in enumerate(pvalues) if _known(p))
    out, running = [math.nan] * len(pvalues), 0.0
    for k, (p, i) in enumerate(known):
        running = max(running, min(1.0, (len(known) - k) * p))
        out[i] = running
    return out


def _cell_pairs(g: pd.DataFrame, baseline: str, fp_mean: float) -> list[dict[str, Any]]:
    """One cell's rows of :func:`paired`: each estimator against ``baseline`` and against the control, with
    paired t-test p-values Holm-adjusted across the cell's methods."""
    ctl, base = _control_of(g), _by_seed(g, baseline)
    rows = []
    for est in sorted(g.estimator.unique()):
        s = _by_seed(g, est)
        n, mean, lo, hi = _pair(s, base) if est != baseline else (0, *[math.nan] * 3)
        rows.append({"estimator": est, "method": method_label(g[g.estimator == est].iloc[0]),
                     "display": display_label(g[g.estimator == est].iloc[0]), "n_pairs": n,
                     "diff_vs_" + baseline: mean, "ci95_low": lo, "ci95_high": hi,
                     "p_vs_" + baseline: paired_p(s, base) if est != baseline else math.nan,
                     "p_vs_control": paired_p(s, _by_seed(g, ctl)) if ctl and est != ctl else math.nan,
                     "ratio_to_fp": s.mean() / fp_mean if fp_mean else math.nan})
    for ref in (baseline, "control"):  # the control is no method: it stays out of both families
        family = [r[f"p_vs_{ref}"] if r["estimator"] != ctl else math.nan for r in rows]
        for r, p in zip(rows, holm(family), strict=True):
            r[f"p_holm_vs_{ref}"] = p
    return rows


def paired(c: Collected, baseline: str | None = None) -> pd.DataFrame:
    """Each binary estimator minus ``baseline`` (default: the reference) and minus the cell's control over
    shared seeds (95% t-intervals, paired t-test p-values, Holm-adjusted across the methods of the cell), and its
    mean top-1 over the FP baseline's of the same network and dataset."""
    baseline = baseline or reference()
    df = c.runs[c.runs.status == "finished"]
    out = []
    for (ds, model, bits, recipe), g in df[df.role != "baseline"].groupby(CELL):
        fp = df[(df.dataset == ds) & (df.model == model) & (df.role == "baseline")]["top1"]
        cell = {"dataset": ds, "network": model, "bits": bits, "recipe": recipe}
        out += [{**cell, **r} for r in _cell_pairs(g, baseline, fp.mean() if len(fp) else math.nan)]
    lt = lift_table(c).rename(columns={"model": "network", "lift_n_pairs": "control_n_pairs",
                                       "lift": "diff_vs_control", "lift_ci95_low": "control_ci95_low",
                                       "lift_ci95_high": "control_ci95_high"})
    pr = pd.DataFrame(out)
    return pr.merge(lt, on=["dataset", "network", "bits", "recipe", "estimator"], how="left") if len(pr) else pr


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

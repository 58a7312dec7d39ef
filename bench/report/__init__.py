"""Reports: tables and figures like the papers', computed from a suite's MLflow runs and nothing else.

Each run key counts once (its latest finished run), so resumed or repeated suites never double-count; runs of
another definition of the suite (its file changed since) are left out.
Tables: ``leaderboard.{md,csv,tex}`` (final-epoch top-1 mean +- std over seeds, n, the validation-selected and
the best-test-epoch top-1, the lift over the control, the late gain, published numbers and the delta to them;
headed by what each network's runs were: binary layers and weights, widths, batch, data, epochs),
``paired.csv`` (each estimator minus the reference estimator and minus the control over the same seeds, 95%
t-intervals; ratio to the FP baseline), ``diagnostics.csv`` (QE, Laplace b, flip ratio at the end of each stage).
Figures: accuracy curves, final top-1 with intervals, the flip ratio, the estimators sheet, each estimator's own
figures (``Estimator.report_figures``) and, for suites with a search, the sensitivity spread.

The control (an estimator with role ``control``: binary weights fixed at their initial signs) is never ranked
as a method. A cell (dataset, network, bits, recipe) in which the reference estimator does not beat it with a
95% interval above 0 "cannot discriminate estimators": its full-precision parts, not the binary weights, carry
the accuracy.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import BinbenchError
from bench.report import complexity, escape, latex

DIAG = ("diag/qe", "diag/laplace_b", "diag/flip")
LAYER_METRIC = re.compile(r"diag/(\d+)/(flip|qe)$")  # per binary layer (by module index): the heatmaps' data
CELL = ["dataset", "model", "bits", "recipe"]
FLAG = "this cell cannot discriminate estimators"
LATE_GAIN = 0.5  # test top-1 points gained over the last quarter of the epochs: more means still learning
#: final metrics a row may lack (older stores, runs without a validation split): nan columns, not KeyErrors
FINAL_METRICS = ("top1", "best_top1", "selected_top1", "late_gain", "params_binary_weights",
                 "params_layer_weights", "params_binary_layers", "params_layers")
FINAL_COL, VAL_COL, BEST_COL = "Final-epoch Top-1", "Val-selected Top-1", "Best test epoch (selected on test)"


@dataclass
class Collected:
    suite: str
    uri: str
    runs: pd.DataFrame  # one row per counted trial (finished or diverged)
    curves: pd.DataFrame  # per epoch: run_id, step, stage, test_top1, diag metrics
    parents: list[dict[str, Any]]
    ignored: int  # runs not counted: duplicates, failed, killed, still running
    notes: list[str] = field(default_factory=list)  # the reporter's own notes, printed in every header


def published_table() -> pd.DataFrame:
    with resources.files("bench.reference").joinpath("published.csv").open() as fh:
        return pd.read_csv(fh)


def reference() -> str:
    """The estimator the paired differences and the discrimination probe measure against (it must beat the
    control for a cell to discriminate): the registered estimator declaring ``reference``."""
    from bench.estimator import reference_estimator

    return reference_estimator()


def _role(tags: dict[str, str]) -> str:
    """The run's ``role`` tag; in stores from before it existed, the baseline for the FP cell, else the role its
    estimator declares (a method where it is no longer registered)."""
    from bench.estimator import ESTIMATORS
    from bench.suite import FP

    est = tags.get("estimator")
    if tags.get("role"):
        return tags["role"]
    return "baseline" if est == FP else ESTIMATORS.get(est).role if est in ESTIMATORS else "method"


def _param(p: dict[str, str], key: str) -> str | None:
    """A logged param, None where it is absent or was logged as None."""
    v = p.get(key)
    return None if v in (None, "", "None", "null") else v


def _hparams(p: dict[str, str], prefix: str = "estimator_hparams.") -> dict[str, Any]:
    """The estimator's hyperparameters as logged (``estimator_hparams.NAME`` params), values parsed back."""
    out: dict[str, Any] = {}
    for k, v in p.items():
        if k.startswith(prefix):
            try:
                out[k[len(prefix):]] = json.loads(v)
            except ValueError:
                out[k[len(prefix):]] = None if v == "None" else v
    return out


def _run_row(r: Any, status: str, search_keys: tuple[str, ...]) -> dict[str, Any]:
    """One trial run as a row: identity tags, the setup a reader needs, final metrics."""
    from bench.track import store as tg

    t, m, p = r.data.tags, r.data.metrics, r.data.params
    row = {"run_id": r.info.run_id, "key": t.get(tg.KEY_TAG), "estimator": t.get(tg.ESTIMATOR_TAG),
           "model": t.get(tg.MODEL_TAG), "dataset": t.get(tg.DATASET_TAG), "bits": t.get(tg.BITS_TAG),
           "recipe": t.get(tg.RECIPE_TAG), "role": _role(t), "seed": int(t.get(tg.SEED_TAG, 0)), "status": status,
           "start": r.info.start_time, "end": r.info.end_time, "headline_mode": t.get(tg.HEADLINE_TAG, "default"),
           "git_commit": t.get(tg.COMMIT_TAG, "?"), "cpu": t.get("hardware.cpu", "?"),
           "gpu": t.get("hardware.gpu", "?"), "torch": t.get("version.torch", "?"),
           "epochs": int(float(_param(p, "epochs") or 0)), "hparams": _hparams(p),
           "lr": p.get("lr"), "optimizer": p.get("optimizer"), "lr_schedule": p.get("lr_schedule"),
           "batch_size": _param(p, "batch_size"), "train_subset": _param(p, "train_subset"),
           "val_split": _param(p, "val_split"),
           "widths": _param(p, "model_args.hidden") or _param(p, "model_args.widths"),
           "first_last_binary": _param(p, "model_args.binarize_first_last") == "True",
           "stage_epochs": t.get(tg.STAGE_EPOCHS_TAG), "dataset_source": t.get(tg.DATA_SOURCE_TAG)}
    row.update({k: v for k, v in m.items() if "/" not in k or k in DIAG})
    row["search_point"] = "|".join(f"{k}={p.get(k)}" for k in search_keys)
    row["model_args"] = json.dumps({k[len("model_args."):]: v for k, v in p.items() if k.startswith("model_args.")})
    row["layer_metrics"] = "|".join(sorted(k for k in m if LAYER_METRIC.match(k)))
    return row


def collect(uri: str, suite: str, search_keys: tuple[str, ...] = (), trials: set[str] | None = None) -> Collected:
    """Trial runs of ``suite``: each run key once (its latest finished run, else its latest diverged one).

    ``trials``: the grid trial keys of the suite as its file defines it now; runs of other trials (an earlier
    definition of the suite, or a binbench that resolved configurations differently) are left out and said so
    in the notes. None: every trial in the store counts."""
    from bench.track import store as tracking

    client = tracking.mlflow_client(uri)
    exp = client.get_experiment_by_name(suite)
    if exp is None:
        raise BinbenchError(f"no runs of suite {suite!r} in {uri}: run `binbench suite run {suite}` first, or pass "
                            "--results-dir / --tracking-uri where it ran")
    runs = tracking.trial_runs(uri, exp.experiment_id)
    outside = [r for r in runs if trials is not None and tracking.trial_of(r) not in trials]
    left_out = {r.info.run_id for r in outside}
    rows = [_run_row(r, tracking.run_status(r), search_keys) for r in runs
            if tracking.run_status(r) in tracking.ENDED and r.info.run_id not in left_out]
    df = pd.DataFrame(rows)
    if df.empty:
        hint = (f"; its {len(outside)} run(s) belong to another definition of the suite (its file changed since "
                "they ran): run the suite again" if outside else "")
        raise BinbenchError(f"suite {suite!r} in {uri} has no finished trial yet{hint}")
    for col in FINAL_METRICS:
        if col not in df:
            df[col] = math.nan
    df["rank"] = (df["status"] == "finished").astype(int)  # a finished run wins over a diverged one, then the latest
    df = df.sort_values(["rank", "start"]).groupby("key", as_index=False).tail(1).drop(columns="rank")
    notes = [f"{len({tracking.trial_of(r) for r in outside})} trial(s) of another definition of the suite in the "
             "store are not counted (its file changed since they ran)"] if outside else []
    return Collected(suite, uri, df.reset_index(drop=True), _collect_curves(client, df),
                     [{"tags": r.data.tags, "start": r.info.start_time} for r in client.search_runs(
                         [exp.experiment_id], filter_string=f"tags.`{tracking.KIND_TAG}` = 'suite'")],
                     len(runs) - len(df), notes)


def _collect_curves(client: Any, df: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch metrics of the counted runs: test top-1, stage, epoch, diagnostics, per-layer metrics."""
    curves = []
    for run_id, layers in zip(df["run_id"], df["layer_metrics"], strict=True):
        per: dict[int, dict[str, float]] = {}
        for metric in ("test_top1", "stage", "epoch", *DIAG, *filter(None, layers.split("|"))):
            for h in client.get_metric_history(run_id, metric):
                per.setdefault(h.step, {})[metric] = h.value
        curves += [{"run_id": run_id, "step": step, **vals} for step, vals in per.items()]
    return pd.DataFrame(curves, columns=sorted({"run_id", "step", *(k for c in curves for k in c)}))


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
    """A row's estimator as the CSV and console name it: FP for the baseline, control (name) for a control."""
    est = row["estimator"]
    role = row.get("role") or _role({"estimator": est})
    return "FP" if role == "baseline" else f"control ({est})" if role == "control" else est


def display_label(row: pd.Series | dict) -> str:
    """The name a paper prints: "FP" for the baseline, else the estimator's declared ``display_name`` (an
    estimator no longer registered keeps :func:`method_label`'s name)."""
    from bench.estimator import ESTIMATORS

    if (row.get("role") or _role({"estimator": row["estimator"]})) == "baseline":
        return "FP"
    est = row["estimator"]
    return ESTIMATORS.get(est).display_name if est in ESTIMATORS else method_label(row)


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


def _published(pub: pd.DataFrame, ds: str, model: str, bits: str, est: str) -> tuple[float, str]:
    from bench.config import BITS
    from bench.estimator import ESTIMATORS
    from bench.suite import FP

    w, a = BITS[bits]
    declared = ESTIMATORS.get(est).published_name if est != FP and est in ESTIMATORS else None
    name = declared or est
    hit = pub[(pub.dataset == ds) & (pub.arch == model) & (pub.method == name) & (pub.w_bits == w)
              & (pub.a_bits == a)]
    return (float(hit.iloc[0]["top1"]), str(hit.iloc[0]["source"])) if len(hit) else (math.nan, "")


def _eval_modes(fin: pd.DataFrame) -> dict[str, str]:
    """The headline evaluation mode (with the setting the estimator labels it by) and the other modes' top-1."""
    n = len(fin)
    if not n or fin["headline_mode"].iloc[0] == "default":
        return {"eval_mode": fin["headline_mode"].iloc[0] if n else "", "other_modes": ""}
    head = fin["headline_mode"].iloc[0]
    others = [col[5:] for col in fin.columns if col.startswith("top1_") and col[5:] != head and fin[col].notna().any()]
    other = "; ".join(f"{m} {fin['top1_' + m].mean():.2f} +- {fin['top1_' + m].std(ddof=1):.2f}" if n > 1
                      else f"{m} {fin['top1_' + m].mean():.2f}" for m in others)
    labels = _setting_labels(fin)
    return {"eval_mode": f"{head} ({'; '.join(labels)})" if labels else head, "other_modes": other}


def _setting_labels(runs: pd.DataFrame) -> list[str]:
    """The settings the runs' estimator labels its rows by (``Estimator.setting_label``), each once."""
    from bench.estimator import ESTIMATORS

    est = runs["estimator"].iloc[0] if len(runs) else None
    if est not in ESTIMATORS:
        return []
    cls = ESTIMATORS.get(est)
    return sorted({cls.setting_label(h or {}) for h in runs["hparams"]} - {""})


def _known(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _setup(g: pd.DataFrame) -> dict[str, Any]:
    """What a reader needs to judge a row: how much of the network is binary, widths, batch, data, epochs."""
    r = g.iloc[-1]
    layers, binary = r["params_layers"], r["params_binary_layers"]
    share = r["params_binary_weights"] / r["params_layer_weights"] * 100 if _known(r["params_layer_weights"]) \
        and r["params_layer_weights"] else math.nan
    from bench.data import DATASETS

    images = DATASETS.get(r["dataset"]).train_images if r["dataset"] in DATASETS else 0
    return {"binary_layers": f"{int(binary)} of {int(layers)}" if _known(layers) and _known(binary) else "?",
            "first_last": "binary" if r["first_last_binary"] else "full precision",
            "binary_weight_pct": share, "widths": r["widths"] if _known(r["widths"]) else "model default",
            "batch_size": r["batch_size"] if _known(r["batch_size"]) else "?",
            "train_subset": f"first {r['train_subset']}" if _known(r["train_subset"])
            else f"all {images}" if images else "all",
            "val_split": r["val_split"] if _known(r["val_split"]) else "none",
            "stage_epochs": r["stage_epochs"] if _known(r["stage_epochs"]) else f"total: {r['epochs']}",
            "dataset_source": r["dataset_source"] if _known(r["dataset_source"]) else r["dataset"]}


def _lb_row(key: tuple, g: pd.DataFrame, pub: pd.DataFrame) -> dict[str, Any]:
    ds, model, bits, recipe, est = key
    fin = g[g["status"] == "finished"]
    n = len(fin)
    mean = fin["top1"].mean() if n else math.nan
    published, source = _published(pub, ds, model, bits, est)
    row = {"dataset": ds, "network": model, "method": method_label(g.iloc[0]),
           "display": display_label(g.iloc[0]), "estimator": est,
           "role": g["role"].iloc[0], "bits": "W32A32" if bits == "FP32" else bits, "recipe": recipe, "n": n,
           "diverged": int((g["status"] == "diverged").sum()), "top1_mean": mean,
           "top1_std": fin["top1"].std(ddof=1) if n > 1 else math.nan,
           "selected_top1_mean": fin["selected_top1"].mean(), "best_top1_mean": fin["best_top1"].mean(),
           "top5_mean": fin["top5"].mean() if "top5" in fin and n else math.nan,
           "late_gain_mean": fin["late_gain"].mean(), "published": published, "published_source": source,
           "delta": mean - published if not math.isnan(published) else math.nan, **_eval_modes(fin), **_setup(g)}
    row["still_learning"] = bool(row["late_gain_mean"] > LATE_GAIN)
    return row


def _with_lift(lb: pd.DataFrame, c: Collected) -> pd.DataFrame:
    """The leaderboard with each row's lift over its cell's control and the cell's discrimination check."""
    lt = lift_table(c).rename(columns={"model": "network", "lift": "lift_vs_control"})
    dc = discrimination(c).rename(columns={"model": "network", "check": "cell_check"})
    lb = lb.merge(lt, on=["dataset", "network", "bits", "recipe", "estimator"], how="left")
    lb = lb.merge(dc[["dataset", "network", "bits", "recipe", "cell_check"]], on=["dataset", "network", "bits",
                                                                                    "recipe"], how="left")
    lb["lift_n_pairs"] = lb["lift_n_pairs"].fillna(0).astype(int)
    return lb.fillna({"control": "", "cell_check": ""})


def leaderboard(c: Collected) -> pd.DataFrame:
    """One row per (dataset, network, bits, recipe, estimator); FP first, then the control, then the methods.
    ``best`` marks the best method of each cell (never the control)."""
    pub = published_table()
    lb = pd.DataFrame([_lb_row(key, g, pub) for key, g in c.runs.groupby([*CELL, "estimator"], sort=False)])
    lb["fp_first"] = (lb["role"] != "baseline").astype(int)
    lb["control_first"] = (lb["role"] != "control").astype(int)
    lb = lb.sort_values(["dataset", "network", "fp_first", "bits", "recipe", "control_first", "estimator"])
    lb = _with_lift(lb.drop(columns=["fp_first", "control_first"]), c)
    lb["best"] = False
    for _, g in lb[lb.role == "method"].groupby(["dataset", "network", "bits", "recipe"]):
        if g["top1_mean"].notna().any():
            lb.loc[g["top1_mean"].idxmax(), "best"] = True
    return lb.reset_index(drop=True)


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


# -- writing -----------------------------------------------------------------------------------------------
def _setting_lines(df: pd.DataFrame) -> list[str]:
    """One line per estimator whose rows need their setting named (its ``setting_label``), e.g. an ensemble
    size."""
    from bench.estimator import ESTIMATORS

    out = []
    for est, g in df.groupby("estimator"):
        labels = _setting_labels(g)
        if labels:
            out.append(f"{ESTIMATORS.get(est).display_name}: {'; '.join(labels)}")
    return out


def provenance(c: Collected, results_dir: Path) -> list[str]:
    df = c.runs
    fmt = "%Y-%m-%d %H:%M UTC"
    start = time.strftime(fmt, time.gmtime(df["start"].min() / 1000))
    end = time.strftime(fmt, time.gmtime((df["end"].max() or df["start"].max()) / 1000))
    commands = sorted({p["tags"].get("command", "") for p in c.parents if p["tags"].get("command")})
    epochs = "; ".join(f"{m}: {', '.join(map(str, sorted(g['epochs'].unique())))}" for m, g in df.groupby("model"))
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
    lines += _setting_lines(df)
    lines += [f"note: {' '.join(n.split())}" for n in c.notes]  # one line each: no escape from a comment
    design = suite_description(c)
    if design:
        lines.append(f"design (the suite file's description): {design}")
    return lines


def suite_description(c: Collected) -> str:
    """The suite's own description (its design, budget and what its runs showed): from the shipped suite file of
    that name (which may have gained notes on the measured runs since), else the newest parent run's
    ``description`` tag, else the suite file it names if still there. Files are read as data (safe YAML)."""
    from bench.suite import SUITES_DIR

    text = _description_in(SUITES_DIR / f"{c.suite}.yaml", c.suite)
    for p in sorted(c.parents, key=lambda p: p["start"], reverse=True):
        text = text or p["tags"].get("description", "") or _description_in(Path(p["tags"].get("suite_file", "")),
                                                                            c.suite)
    return " ".join(str(text).split())


def _description_in(path: Path, suite: str) -> str:
    from bench.suite import read_suite_file  # the bounded, duplicate-refusing reader every suite file goes through

    try:
        raw = read_suite_file(path) if path.is_file() else None
    except BinbenchError:
        return ""
    return str(raw.get("description") or "") if isinstance(raw, dict) and raw.get("name") == suite else ""


def _fmt(v: float, nd: int = 2) -> str:
    return "–" if not _known(v) else f"{v:.{nd}f}"


def _agree(g: pd.DataFrame, values: pd.Series) -> str:
    """The value where every row of ``g`` has the same; else each value with the methods that have it."""
    groups: dict[str, dict[str, None]] = {}
    for m, v in zip(g["method"], values, strict=True):
        groups.setdefault(str(v), {})[m] = None
    if len(groups) == 1:
        return next(iter(groups))
    return " / ".join(f"{v} ({', '.join(ms)})" for v, ms in groups.items())


def setup_lines(lb: pd.DataFrame) -> list[str]:
    """Per network of the suite: which layers are binary, the binary share of the conv/linear weights, widths,
    batch size, training subset, validation split, epochs per stage and where the data came from."""
    lines = []
    for (ds, net), g in lb.groupby(["dataset", "network"], sort=False):
        b = g[g.role != "baseline"] if (g.role != "baseline").any() else g
        pct = b["binary_weight_pct"].map(lambda v: f"{_fmt(v, 1)}%" if _known(v) else "?")
        lines.append(f"{net} on {ds}: binary conv/linear layers: {_agree(b, b.binary_layers)} (first and last "
                     f"{_agree(b, b.first_last)}); binary weights: {_agree(b, pct)} of the conv/linear weights; "
                     f"widths: {_agree(g, g.widths)}; batch size: {_agree(g, g.batch_size)}; training subset: "
                     f"{_agree(g, g.train_subset)}; validation split: {_agree(g, g.val_split)}; epochs per stage: "
                     f"{_agree(g, g.stage_epochs)}; data: {_agree(g, g.dataset_source)}")
    return lines


def _cell_name(r: pd.Series) -> str:
    return f"{r['dataset']} {r['model']} {r['bits']} {r['recipe']}"


def _check_line(r: pd.Series) -> str:
    """One cell's control check, in words."""
    ctl = method_label({"estimator": r["control"], "role": "control"})
    if not r["n_pairs"]:
        evidence = f"no {r['probe']} run shares a seed with {ctl}"
    else:
        evidence = (f"{r['probe']} − {ctl} = {_fmt(r['lift'])} points, 95% CI [{_fmt(r['ci95_low'])}, "
                    f"{_fmt(r['ci95_high'])}] over {r['n_pairs']} paired seed(s)")
    if r["check"] == "discriminates":
        return f"{_cell_name(r)}: discriminates: {evidence}"
    return f"{_cell_name(r)}: {FLAG}: {evidence} (needs 2 or more pairs and an interval above 0)"


def summary_lines(c: Collected, lb: pd.DataFrame | None = None) -> list[str]:
    """What ``binbench report`` and ``binbench suite run`` print after their tables: whether each cell can tell
    estimators apart (the reference estimator against the control) and which runs were still learning when they
    ended."""
    d = discrimination(c)
    checked, unchecked = d[d.check != "no control"], d[d.check == "no control"]
    lines = []
    if len(checked):
        n = int((checked.check == "cannot discriminate").sum())
        lines.append(f"control check: {n} of {len(checked)} cell(s) cannot discriminate estimators ({reference()} must "
                     "beat the control with a 95% interval above 0)")
        lines += [_check_line(r) for _, r in checked.iterrows()]
    if len(unchecked):
        lines.append(f"no control run in {', '.join(_cell_name(r) for _, r in unchecked.iterrows())}: whether these "
                     "cells can discriminate estimators is unchecked (add a control estimator to the suite's "
                     f"estimators: {', '.join(_controls()) or 'none registered'})")
    lb = leaderboard(c) if lb is None else lb
    late = lb[lb.still_learning]
    if len(late):
        lines.append(f"still learning at the end (late gain > {LATE_GAIN} points over the last quarter of the epochs): "
                     + "; ".join(f"{r.dataset} {r.network} {r.bits} {r.recipe} {r.method} (+{r.late_gain_mean:.2f})"
                                 for r in late.itertuples()))
    return lines


def _lift_cell(r: pd.Series) -> str:
    if r.role == "control":
        return "(control)"
    if not r.lift_n_pairs:
        return "–"
    ci = f" [{_fmt(r.lift_ci95_low)}, {_fmt(r.lift_ci95_high)}]" if _known(r.lift_ci95_low) else ""
    return f"{_fmt(r.lift_vs_control)}{ci} (n={r.lift_n_pairs})"


def _lb_display(lb: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in lb.iterrows():
        top1 = f"{_fmt(r.top1_mean)} ± {_fmt(r.top1_std)} (n={r.n})" if r.n else "–"
        mode = f" [{r.eval_mode}]" if r.eval_mode not in ("default", "") else ""
        flag = " †" if r.cell_check == "cannot discriminate" else ""
        rows.append({"Network": r.network, "Method": r.display + mode, "W/A": r.bits.replace("W", "").replace("A", "/"),
                     "Recipe": r.recipe + flag, FINAL_COL: top1, VAL_COL: _fmt(r.selected_top1_mean),
                     BEST_COL: _fmt(r.best_top1_mean), "Top-5": _fmt(r.top5_mean), "Lift vs control": _lift_cell(r),
                     "Late gain": _fmt(r.late_gain_mean) + (" ↑" if r.still_learning else ""),
                     "Published": _fmt(r.published), "Δ": _fmt(r.delta), "Other eval modes": r.other_modes or "",
                     "Diverged": str(r.diverged) if r.diverged else "", "_best": bool(r.best)})
    return pd.DataFrame(rows)


def _shown(disp: pd.DataFrame, lb: pd.DataFrame) -> pd.DataFrame:
    """Drop the columns no row of this suite has: top-5 (10-class datasets), validation-selected (no
    validation split), lift (no control), late gain (stores from before it was logged)."""
    empty = {"Top-5": not lb["dataset"].isin(["cifar100", "tiny-imagenet", "imagenet"]).any(),
             VAL_COL: lb["selected_top1_mean"].isna().all(), "Lift vs control": not (lb.role == "control").any(),
             "Late gain": lb["late_gain_mean"].isna().all()}
    return disp.drop(columns=[col for col, drop in empty.items() if drop])


def _controls() -> list[str]:
    from bench.estimator import ESTIMATORS

    return [n for n in ESTIMATORS.names() if ESTIMATORS.get(n).role == "control"]


def legend() -> str:
    """The leaderboard's legend, naming the reference estimator the discrimination check uses."""
    return LEGEND.format(ref=reference())


LEGEND = (f"{FINAL_COL}: test accuracy at the last epoch, mean ± sample std over seeds (n runs). {VAL_COL}: test "
          "top-1 at the last-stage epoch the validation split selects, mean over seeds. Best test epoch: the best "
          "last-stage epoch on the test set (what the official repos report; selected on the test set, so "
          "optimistic). Lift vs control: paired difference (method − control) of final top-1 over shared seeds, "
          "mean and 95% Student-t interval (n pairs); the control keeps its binary weights at their initial "
          f"signs, so a method that does not beat it shows no learning in its binary weights. †: {FLAG} ({{ref}} does "
          "not beat the control with a 95% interval above 0). Late gain: test top-1 points gained over the last "
          f"quarter of the epochs, mean over seeds; ↑: more than {LATE_GAIN}, still learning. Bold: best binary "
          "method of its network, bits and recipe (the control is never ranked). Published: "
          "bench/reference/published.csv (each row names its paper and table); Δ = ours − published, only where the "
          "dataset and network match (a method the papers name differently is matched by its declared published "
          "name).")


PAIRED_LEGEND = ("Δ: mean over shared seeds of (estimator − {ref}), resp. (estimator − control), top-1 with its 95% "
                 "Student-t interval; p (Holm): two-sided paired t-test p-value (scipy.stats.ttest_rel) and, in "
                 "brackets, Holm-adjusted across the methods of the cell (the control is not in the family); ratio: "
                 "mean top-1 / FP mean top-1 of the same network and dataset (BiBench style).")


def caption(c: Collected, lb: pd.DataFrame) -> str:
    """The LaTeX table's caption: what is shown, the suite, its budget, seeds and hardware, and the marks."""
    df = c.runs
    epochs = "; ".join(f"{m}: {', '.join(map(str, sorted(g['epochs'].unique())))} epochs"
                       for m, g in df.groupby("model"))
    seeds = sorted(df.seed.unique())
    hw = "; ".join(sorted(set(df.cpu + (" + " + df.gpu).where(~df.gpu.isin(["none", "?", ""]), ""))))
    modes = "; ".join(f"{r.display}: {r.eval_mode} evaluation" for r in lb.drop_duplicates("display").itertuples()
                      if r.eval_mode not in ("default", ""))
    parts = [f"Suite {c.suite}: final-epoch test top-1 (%), mean ± sample std over {len(seeds)} seeds "
             f"({', '.join(map(str, seeds))}); budget {epochs}; hardware {hw}.",
             "FP: the full-precision network, repeated under each bits column of its network.",
             "Bold: best method of its column (the control is never ranked)."]
    if (lb.get("cell_check", pd.Series(dtype=str)) == "cannot discriminate").any():
        parts.append(f"†: {FLAG} ({reference()} does not beat the control with a 95% interval above 0).")
    if lb.published.notna().any():
        parts.append("pub.: published top-1 (bench/reference/published.csv).")
    return " ".join(parts + ([modes + "."] if modes else []))


def _flag_notes(d: pd.DataFrame, dataset: str | None = None) -> list[str]:
    bad = d[(d.check == "cannot discriminate") & ((d.dataset == dataset) if dataset else True)]
    return [f"† {_check_line(r)}" for _, r in bad.iterrows()]


def _markdown(c: Collected, disp: pd.DataFrame, lb: pd.DataFrame, head: list[str], checks: list[str]) -> list[str]:
    d = discrimination(c)
    md = [f"# {escape.markdown(c.suite)}: leaderboard", ""] + [f"- {escape.markdown(h)}" for h in head] + [""]
    if checks:
        md += ["## Checks", ""] + [f"- {escape.markdown(x)}" for x in checks] + [""]
    for ds, g in disp.groupby(lb["dataset"], sort=False):
        notes = [escape.markdown(n) for n in _flag_notes(d, ds)]
        md += [f"## {escape.markdown(ds)}", "", md_table(g), ""] + ([*notes, ""] if notes else [])
    return md + [legend(), ""]


@dataclass
class Tables:
    """One report's tables, computed once for every writer (Markdown, CSV, LaTeX, HTML)."""

    lb: pd.DataFrame  # leaderboard
    pr: pd.DataFrame  # paired differences
    dg: pd.DataFrame  # diagnostics at stage ends
    cx: pd.DataFrame  # complexity per network and bits
    head: list[str]  # provenance and setup lines
    checks: list[str]  # the control checks and late gains


DIAG_LEGEND = ("QE: quantization error mean((w_hat − mean|w_hat| sign(w_hat))²) of the value w_hat each estimator "
               "binarizes; b: Laplace scale "
               "of the latent weights; flip: share of binary weights whose sign changed in the stage's last epoch; "
               "means over binary layers and seeds.")


def tables(c: Collected, out: Path) -> Tables:
    lb = leaderboard(c)
    return Tables(lb, paired(c), diagnostics_table(c), complexity.summary(c.runs),
                  provenance(c, out) + setup_lines(lb), summary_lines(c, lb))


def write_tables(c: Collected, out: Path, t: Tables | None = None) -> dict[str, Path]:
    """leaderboard.{md,csv,tex}, paired.csv, diagnostics.csv and complexity.{md,csv} under ``out``; returns their
    paths."""
    out.mkdir(parents=True, exist_ok=True)
    t = t or tables(c, out)
    disp = _shown(_lb_display(t.lb), t.lb)
    t.lb.to_csv(out / "leaderboard.csv", index=False)
    t.pr.to_csv(out / "paired.csv", index=False)
    t.dg.to_csv(out / "diagnostics.csv", index=False)
    t.cx.to_csv(out / "complexity.csv", index=False)
    md = _markdown(c, disp, t.lb, t.head, t.checks)
    ref = reference()
    md += [f"## Paired differences to {ref} and to the control (same seeds), ratio to FP", "",
           md_table(_paired_display(t.pr)), "", PAIRED_LEGEND.format(ref=ref), ""]
    if not t.dg.empty:
        md += ["## Diagnostics at the end of each stage", "", md_table(_diag_display(t.dg)), "", DIAG_LEGEND, ""]
    (out / "leaderboard.md").write_text("\n".join(md))
    tex = latex.render(t.lb, c.suite, caption(c, t.lb), t.head + t.checks, _flag_notes(discrimination(c)))
    (out / "leaderboard.tex").write_text(tex)
    (out / "complexity.md").write_text(complexity.markdown(t.cx, c.suite))
    return {"md": out / "leaderboard.md", "csv": out / "leaderboard.csv", "tex": out / "leaderboard.tex",
            "paired": out / "paired.csv", "diagnostics": out / "diagnostics.csv",
            "complexity": out / "complexity.md", "complexity_csv": out / "complexity.csv"}


def write_html(c: Collected, t: Tables, out: Path, figures: list[Path]) -> Path:
    """``report.html`` beside the tables: the leaderboard, paired, complexity and diagnostics tables, every
    figure embedded, the provenance; self-contained (see :mod:`bench.report.html`)."""
    from bench.report import html

    d = discrimination(c)
    ref = reference()
    sections = [(f"Leaderboard: {ds}", g, " ".join([*_flag_notes(d, ds), legend()]))
                for ds, g in _shown(_lb_display(t.lb), t.lb).groupby(t.lb["dataset"], sort=False)]
    sections += [(f"Paired differences to {ref} and to the control (same seeds), ratio to FP",
                  _paired_display(t.pr), PAIRED_LEGEND.format(ref=ref)),
                 ("Model complexity", complexity.display(t.cx), complexity.LEGEND)]
    if not t.dg.empty:
        sections.append(("Diagnostics at the end of each stage", _diag_display(t.dg), DIAG_LEGEND))
    path = out / "report.html"
    path.write_text(html.render(c.suite, t.head, t.checks, sections, figures), encoding="utf-8")
    return path


def _ci(lo: float, hi: float) -> str:
    return f"[{_fmt(lo)}, {_fmt(hi)}]" if _known(lo) else "–"


def _paired_display(pr: pd.DataFrame) -> pd.DataFrame:
    ref = reference()
    rows = []
    for _, r in pr.iterrows():
        ctl = r.get("control_n_pairs", 0)
        rows.append({"Dataset": r.dataset, "Network": r.network, "W/A": r.bits, "Recipe": r.recipe,
                     "Method": r.display, "n pairs": r.n_pairs, f"Δ vs {ref}": _fmt(r.get(f"diff_vs_{ref}", math.nan)),
                     "95% CI": _ci(r.ci95_low, r.ci95_high),
                     "p (Holm)": _p(r.get(f"p_vs_{ref}", math.nan), r.get(f"p_holm_vs_{ref}", math.nan)),
                     "n pairs (control)": int(ctl) if _known(ctl) else 0,
                     "Δ vs control": _fmt(r.get("diff_vs_control", math.nan)),
                     "95% CI (control)": _ci(r.get("control_ci95_low", math.nan), r.get("control_ci95_high",
                                                                                        math.nan)),
                     "p (Holm), control": _p(r.p_vs_control, r.p_holm_vs_control),
                     "Ratio to FP": _fmt(r.ratio_to_fp, 3)})
    return pd.DataFrame(rows)


def _p(p: float, adjusted: float) -> str:
    """A raw and a Holm-adjusted p-value: 3 significant digits, "<0.001" below."""
    def one(v: float) -> str:
        return "–" if not _known(v) else "<0.001" if v < 0.001 else f"{v:.3f}"
    return "–" if not _known(p) else f"{one(p)} ({one(adjusted)})"


def _diag_display(dg: pd.DataFrame) -> pd.DataFrame:
    d = dg.copy()
    for col in ("qe", "laplace_b", "flip_ratio"):
        if col in d:
            d[col] = d[col].map(lambda v: _fmt(v, 4))
    d["stage"] = d["stage"].astype(int)
    return d


def md_table(df: pd.DataFrame) -> str:
    cols = [c for c in df.columns if not c.startswith("_")]
    lines = ["| " + " | ".join(escape.markdown(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        cells = [escape.markdown(r[c]) for c in cols]
        if r.get("_best", False):
            cells = [f"**{x}**" if c in ("Method", FINAL_COL) else x for c, x in zip(cols, cells, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_figures(c: Collected, out: Path) -> list[Path]:
    """The report's figures (PNG and PDF) under ``out``; returns the PNG paths (see :mod:`bench.report.figures`)."""
    from bench.report.figures import write_figures as write

    return write(c, out)


def report(suite: str, results_dir: str | Path | None = None, tracking_uri: str | None = None,
           out_dir: str | Path | None = None, notes: list[str] | None = None
           ) -> tuple[Collected, dict[str, Path], list[Path]]:
    from bench.suite import find_suite, suite_identity
    from bench.track.store import default_tracking_uri, probe_server

    try:
        find_suite(suite)
    except BinbenchError:
        name = suite  # no suite file: the store alone names the suite
    else:
        name = suite_identity(suite)[1]  # checked as `suite run` checks it (a shipped name, a safe name)
    results = Path(results_dir or Path("results") / name)
    uri = tracking_uri or default_tracking_uri(results)
    probe_server(uri)  # a dead tracking server: one line in seconds, not minutes of MLflow's retries
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise BinbenchError(f"no MLflow store at {uri[len('sqlite:///'):]}: run `binbench suite run {suite}` first, "
                            "or pass --results-dir / --tracking-uri")
    search_keys: tuple[str, ...] = ()
    trials: set[str] | None = None  # without a suite file that loads, every trial in the store counts
    try:
        from bench.suite import load_suite

        loaded = load_suite(suite, max_trials=sys.maxsize)  # the store is there: no bound to enforce
        search_keys = tuple(sorted(loaded.search["space"])) if loaded.search else ()
        trials = {t.key for t in loaded.trials}
    except BinbenchError:
        pass
    c = collect(uri, name, search_keys, trials)
    c.notes = [*c.notes, *(notes or [])]
    out = Path(out_dir or results)
    out.mkdir(parents=True, exist_ok=True)
    t = tables(c, out)
    paths = write_tables(c, out, t)
    figs = write_figures(c, out)
    paths["html"] = write_html(c, t, out, figs)
    from bench.track.record import log_report

    log_report(uri, name, [*paths.values(), *figs])  # the suite's latest parent run keeps what its report showed
    return c, paths, figs


__all__ = ["Tables", "caption", "collect", "discrimination", "display_label", "flagged_cells", "holm", "leaderboard",
           "lift_table", "md_table", "paired", "paired_p", "report", "setup_lines", "summary_lines", "t_interval",
           "tables", "write_figures", "write_html", "write_tables"]

"""Collection: a suite's trial runs and per-epoch metrics, read from its MLflow store and nothing else.

Each run key counts once (its latest finished run), so resumed or repeated suites never double-count; runs of
another definition of the suite (its file changed since) are left out.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import pandas as pd

from bench.errors import BinbenchError
from bench.track.store import BUDGET_TAG  # the share of its cell's epochs a budget run trained

DIAG = ("diag/qe", "diag/laplace_b", "diag/flip")


#: per binary layer, by its path (``diag/linear1/qe``; stores before layer paths: its module index): the heatmaps' data
LAYER_METRIC = re.compile(r"diag/(.+)/(flip|qe)$")


#: final metrics a row may lack (older stores, runs without a validation split): nan columns, not KeyErrors
FINAL_METRICS = ("top1", "best_top1", "selected_top1", "late_gain", "params_binary_weights",
                 "params_layer_weights", "params_binary_layers", "params_layers")


@dataclass(frozen=True)
class Collected:
    suite: str
    uri: str
    runs: pd.DataFrame  # one row per counted trial (finished or diverged); with budgets, the largest budget's
    curves: pd.DataFrame  # per epoch of ``runs``: run_id, step, stage, test_top1, diag metrics
    parents: list[dict[str, Any]]
    ignored: int  # runs not counted: duplicates, failed, killed, still running
    notes: list[str] = field(default_factory=list)  # the reporter's own notes, printed in every header
    #: every counted run of a suite with ``budgets`` (each budget's), with its ``budget``; empty without budgets
    budgets: pd.DataFrame = field(default_factory=pd.DataFrame)


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


def _float(v: str | None) -> float:
    try:
        return float(v) if v is not None else math.nan
    except ValueError:
        return math.nan


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


def _bf16(tags: dict[str, str], params: dict[str, str]) -> bool:
    """Whether a run computed in bf16: amp on, on a GPU (amp does nothing on a CPU; older stores logged it as a
    param on CPU runs too, so the device decides)."""
    amp = params.get("amp", tags.get("exec.amp"))
    gpu = tags.get("hardware.gpu", "none") not in ("none", "?", "")
    return amp == "True" and gpu and not str(tags.get("exec.device", params.get("device", ""))).startswith("cpu")


def _cpu(tags: dict[str, str]) -> str:
    """The CPU as the header names it: the model name, with family/model/stepping and torch's kernel instruction set
    where the run recorded them (two hosts both called "AMD EPYC" round float32 differently)."""
    detail = ", ".join(v for v in (tags.get("hardware.cpu_id"), tags.get("hardware.cpu_capability")) if v)
    return tags.get("hardware.cpu", "?") + (f" ({detail})" if detail else "")


def _run_row(r: Any, status: str, search_keys: tuple[str, ...]) -> dict[str, Any]:
    """One trial run as a row: identity tags, the setup a reader needs, final metrics."""
    from bench.track import store as tg

    t, m, p = r.data.tags, r.data.metrics, r.data.params
    row = {"run_id": r.info.run_id, "key": t.get(tg.KEY_TAG), "estimator": t.get(tg.ESTIMATOR_TAG),
           "model": t.get(tg.MODEL_TAG), "dataset": t.get(tg.DATASET_TAG), "bits": t.get(tg.BITS_TAG),
           "recipe": t.get(tg.RECIPE_TAG), "role": _role(t), "seed": int(t.get(tg.SEED_TAG, 0)), "status": status,
           "start": r.info.start_time, "end": r.info.end_time, "headline_mode": t.get(tg.HEADLINE_TAG, "default"),
           "git_commit": t.get(tg.COMMIT_TAG, "?"), "cpu": _cpu(t),
           "gpu": t.get("hardware.gpu", "?"), "torch": t.get("version.torch", "?"),
           "epochs": int(float(_param(p, "epochs") or 0)), "hparams": _hparams(p),
           "lr": p.get("lr"), "optimizer": p.get("optimizer"), "lr_schedule": p.get("lr_schedule"),
           "batch_size": _param(p, "batch_size"), "train_subset": _param(p, "train_subset"),
           "val_split": _param(p, "val_split"),
           "widths": _param(p, "model_args.hidden") or _param(p, "model_args.widths"),
           "first_last_binary": _param(p, "model_args.binarize_first_last") == "True",
           "stage_epochs": t.get(tg.STAGE_EPOCHS_TAG), "dataset_source": t.get(tg.DATA_SOURCE_TAG),
           "budget": _float(t.get(BUDGET_TAG)),
           # which code trained it (stores before it was recorded: "") and in what precision (amp is a param only
           # where it acted, on CUDA: bf16 autocast; elsewhere the run computed in float32)
           "origin": "; ".join(v for k, v in sorted(t.items()) if k.startswith(tg.ORIGIN_TAG_PREFIX)),
           "precision": "bf16" if _bf16(t, p) else "float32"}
    # final metrics never overwrite the params and tags above: a run logs its last epoch's ``lr`` as a metric,
    # and that value (a cosine schedule's ~0 at the end) is not the lr the run was configured with
    row.update({k: v for k, v in m.items() if ("/" not in k or k in DIAG or k.startswith("export/")) and k not in row})
    row["search_point"] = "|".join(f"{k}={p.get(k)}" for k in search_keys)
    row["model_args"] = json.dumps({k[len("model_args."):]: v for k, v in p.items() if k.startswith("model_args.")})
    row["layer_metrics"] = "|".join(sorted(k for k in m if LAYER_METRIC.match(k)))
    return row


def collect(uri: str, suite: str, search_keys: tuple[str, ...] = (),
            trials: set[str] | dict[str, float | None] | None = None) -> Collected:
    """Trial runs of ``suite``: each run key once (its latest finished run, else its latest diverged one).

    ``trials``: the grid trial keys of the suite as its file defines it now; runs of other trials (an earlier
    definition of the suite, or a binbench that resolved configurations differently) are left out and said so
    in the notes. None: every trial in the store counts. A mapping gives each trial key's budget (suites with
    ``budgets``), for runs recorded before their budget was tagged."""
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
    df["budget"] = df["budget"].fillna(df["key"].map(trials if isinstance(trials, dict) else {}).astype(float))
    main, budgets = split_budgets(df.reset_index(drop=True))
    notes = [f"{len({tracking.trial_of(r) for r in outside})} trial(s) of another definition of the suite in the "
             "store are not counted (its file changed since they ran)"] if outside else []
    parents = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.KIND_TAG}` = 'suite'")
    return Collected(suite, uri, main, _collect_curves(client, main),
                     [{"tags": r.data.tags, "params": r.data.params, "start": r.info.start_time,
                       "end": r.info.end_time, "run_id": r.info.run_id} for r in parents],
                     len(runs) - len(df), notes, budgets)


def split_budgets(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the runs every table and figure but the budget ones count: those without a budget or at the suite's
    largest, every run with a budget). Pooling budgets would average a 3-epoch run with a 12-epoch one."""
    has = df["budget"].notna()
    if not has.any():
        return df, df.iloc[0:0]
    main = df[~has | (df["budget"] == df.loc[has, "budget"].max())]
    return main.reset_index(drop=True), df[has].reset_index(drop=True)


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

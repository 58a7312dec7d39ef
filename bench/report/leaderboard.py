"""The leaderboard: one row per (dataset, network, bits, recipe, estimator), with the setup a reader needs to
judge it, the published number, the lift over the control and the best method of each cell.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from bench.export.columns import export_columns
from bench.report.collect import Collected, display_label, method_label, published_table
from bench.report.stats import CELL, _by_seed, _known, _pair, discrimination, lift_table

LATE_GAIN = 0.5  # test top-1 points gained over the last quarter of the epochs: more means still learning


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
           "delta": mean - published if not math.isnan(published) else math.nan, **_eval_modes(fin), **_setup(g),
           **export_columns(fin)}
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
    ``best`` marks the methods set in bold (never the control): the best method of each cell alone where it is
    ahead of the next with a paired 95% interval above 0, else it and every method it does not beat so (``tied``);
    ``ahead_of_next`` on the best row says by how much, in words."""
    pub = published_table()
    lb = pd.DataFrame([_lb_row(key, g, pub) for key, g in c.runs.groupby([*CELL, "estimator"], sort=False)])
    lb["fp_first"] = (lb["role"] != "baseline").astype(int)
    lb["control_first"] = (lb["role"] != "control").astype(int)
    lb = lb.sort_values(["dataset", "network", "fp_first", "bits", "recipe", "control_first", "estimator"])
    lb = _with_lift(lb.drop(columns=["fp_first", "control_first"]), c)
    lb["best"], lb["tied"], lb["ahead_of_next"] = False, False, ""
    runs = c.runs[(c.runs.status == "finished") & (c.runs.role == "method")]
    for cell, g in lb[lb.role == "method"].groupby(["dataset", "network", "bits", "recipe"]):
        if not g["top1_mean"].notna().any():
            continue
        bold, margin = leaders(runs[(runs[CELL] == pd.Series(cell, index=CELL)).all(axis=1)], g)
        lb.loc[g.index[g.estimator.isin(bold)], "best"] = True
        lb.loc[g.index[g.estimator.isin(bold)], "tied"] = len(bold) > 1
        lb.loc[g["top1_mean"].idxmax(), "ahead_of_next"] = margin
    return lb.reset_index(drop=True)


def leaders(runs: pd.DataFrame, rows: pd.DataFrame) -> tuple[list[str], str]:
    """The estimators of one cell set in bold, and the best one's lead over the next in words.

    The best (highest mean) is bold alone when it beats every other method with a paired 95% Student-t
    interval above 0 over shared seeds; every method it does not beat so shares the bold (with fewer than 2
    pairs nothing can be told apart, so they share it too)."""
    ranked = rows.dropna(subset=["top1_mean"]).sort_values("top1_mean", ascending=False)
    best = ranked.estimator.iloc[0]
    bold = [best]
    for est in ranked.estimator.iloc[1:]:
        n, _mean, lo, _hi = _pair(_by_seed(runs, best), _by_seed(runs, est))
        if n < 2 or not lo > 0:
            bold.append(est)
    if len(ranked) < 2:
        return bold, ""
    nxt, name = ranked.estimator.iloc[1], ranked.display.iloc[1]
    n, mean, lo, hi = _pair(_by_seed(runs, best), _by_seed(runs, nxt))
    return bold, f"{mean:+.2f} [{lo:.2f}, {hi:.2f}] over {name} (n={n})" if n >= 2 else f"no paired seeds with {name}"

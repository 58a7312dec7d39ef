"""The deployable numbers of a leaderboard row, from the ``export/*`` metrics each run recorded at its end."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

EXPORT_TOP1_COL = "Exported top-1 (one binary network, bit-level)"
EXPORT_SIZE_COL = "Exported size, bytes (FP32)"
LEGEND = ("Exported top-1: test top-1 of the network `binbench export` writes (packed sign bits, folded scales and "
          "BatchNorm), computed bit-level by XNOR-popcount at the end of each run, mean over seeds; for an "
          "estimator whose headline evaluation is an ensemble it is its one deterministic network (its declared "
          "export mode, e.g. the mean of a distribution of networks). ‡: some test images were predicted "
          "differently from the simulated evaluation of that network (the run's `export.check` tag says how many "
          "and why). Exported size: the tensors of the exported file (binary part and float layers), measured from "
          "its header, mean over seeds; in brackets the same network with 32-bit weights. A size, not a speed: no "
          "inference time is claimed.")
NO_EXPORT_NOTE = ("export columns: no run of this suite recorded an export (its runs predate the export each run "
                  "makes at its end, issue 25); re-run the suite for the exported top-1 and size")


def _mean(fin: pd.DataFrame, col: str) -> float:
    return float(fin[col].mean()) if col in fin and fin[col].notna().any() else math.nan


def export_columns(fin: pd.DataFrame) -> dict[str, Any]:
    """A row's exported top-1 (mean, std), sizes and how many of its runs' images disagreed with the simulation."""
    n = int(fin["export/top1"].notna().sum()) if "export/top1" in fin else 0
    mism = sum(float(fin[c].fillna(0).sum()) for c in ("export/mismatches", "export/onnx_mismatches") if c in fin)
    return {"export_top1_mean": _mean(fin, "export/top1"),
            "export_top1_std": float(fin["export/top1"].std(ddof=1)) if n > 1 else math.nan,
            "export_n": n, "export_bytes": _mean(fin, "export/bytes"),
            "export_binary_bytes": _mean(fin, "export/binary_bytes"), "fp32_bytes": _mean(fin, "export/fp32_bytes"),
            "export_mismatches": int(mism)}


def _known(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def display(r: Any) -> dict[str, str]:
    """The two leaderboard cells of a row."""
    if not _known(getattr(r, "export_top1_mean", math.nan)):
        return {EXPORT_TOP1_COL: "–", EXPORT_SIZE_COL: "–"}
    std = f" ± {r.export_top1_std:.2f}" if _known(r.export_top1_std) else ""
    mark = " ‡" if r.export_mismatches else ""
    return {EXPORT_TOP1_COL: f"{r.export_top1_mean:.2f}{std}{mark}",
            EXPORT_SIZE_COL: f"{r.export_bytes:,.0f} ({r.fp32_bytes:,.0f})"}


def none_exported(lb: pd.DataFrame) -> bool:
    return "export_top1_mean" not in lb or not lb["export_top1_mean"].notna().any()

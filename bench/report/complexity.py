"""Model complexity per network and bits, as larq's ``summary`` reports it.

Per layer: whether its weights and inputs are binary (``bench.layers.binary_layers`` and the layer's input
quantizer), its parameters by precision and its multiply-accumulates (MACs) from
``torch.utils.flop_counter.FlopCounterMode`` on one input (FLOP counts / 2). A MAC is a binary operation (BOP)
only when both its weights and its inputs are binary (an XNOR-popcount); every other MAC, a binary-weight layer
on real inputs included, counts as a full-precision one (larq: the MAC's precision is the higher of the two).
Totals follow the BNN literature (Bi-Real Net, ReActNet): FLOPs are the full-precision MACs and
OPs = BOPs / 64 + FLOPs. Weight memory counts 1 bit per binary weight and 32 per other parameter (buffers
such as batch-norm statistics are not parameters). The networks are rebuilt from each run's logged model
arguments with the reference estimator's stateless sign and no scaling: estimator state used only in training
(learnable ranges, low-rank factors) and per-channel scales of the alpha scaling are not counted.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd
from torch import nn

from bench.report import escape

LAYER_COLUMNS = ["layer", "type", "weights", "inputs", "params_binary", "params_fp", "memory_bits", "macs_binary",
                 "macs_fp"]


def _arg(v: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(v)
    except yaml.YAMLError:
        return v


def build(model: str, dataset: str, bits: str, model_args: dict[str, str]) -> tuple[nn.Module, tuple[int, ...]]:
    """The network a run of (model, dataset, bits) trained, with its logged model arguments."""
    from bench.data import get_dataset
    from bench.estimator import create_estimator, reference_estimator
    from bench.layers import BinarySpec
    from bench.models import create_model

    ds = get_dataset(dataset)
    sign = create_estimator(reference_estimator())  # a sign without state: nothing an estimator adds for training
    spec = {"W1A1": BinarySpec(sign, sign), "W1A32": BinarySpec(sign, None)}.get(bits, BinarySpec())
    args = {k: _arg(v) for k, v in model_args.items() if v not in (None, "None", "null")}
    return create_model(model, spec, ds.num_classes, ds.shape, **args), tuple(ds.shape)


def layers(model: nn.Module, in_shape: tuple[int, ...]) -> pd.DataFrame:
    """One row per module that holds parameters or does MACs of its own (quantizers, which only binarize, are
    part of their layer)."""
    from bench.estimator import Quantizer
    from bench.layers import binary_layers

    binary = dict(binary_layers(model))
    from bench.models import count_macs

    macs = count_macs(model, in_shape)
    rows = []
    for name, mod in model.named_modules():
        if isinstance(mod, Quantizer):
            continue
        own = list(mod.parameters(recurse=False))
        leaf = all(isinstance(c, Quantizer) for c in mod.children())  # containers' MACs are their children's
        mac = macs.get(name, 0.0) if leaf else 0.0
        if not own and not mac:
            continue
        bw = name in binary
        bi = bw and getattr(mod, "input_quantizer", None) is not None
        pb = mod.weight.numel() if bw else 0
        pf = sum(p.numel() for p in own) - pb
        rows.append({"layer": name, "type": type(mod).__name__, "weights": "1-bit" if bw else "32-bit",
                     "inputs": "1-bit" if bi else "32-bit", "params_binary": pb, "params_fp": pf,
                     "memory_bits": pb + 32 * pf, "macs_binary": mac if bi else 0.0, "macs_fp": 0.0 if bi else mac})
    return pd.DataFrame(rows, columns=LAYER_COLUMNS)


def totals(per_layer: pd.DataFrame) -> dict[str, Any]:
    """larq's totals: layers and parameters by precision, weight memory, BOPs, FLOPs and OPs."""
    conv_linear = per_layer[per_layer.macs_binary + per_layer.macs_fp > 0]
    bops, flops = float(per_layer.macs_binary.sum()), float(per_layer.macs_fp.sum())
    return {"binary_layers": int((conv_linear.weights == "1-bit").sum()),
            "fp_layers": int((conv_linear.weights == "32-bit").sum()),
            "params_binary": int(per_layer.params_binary.sum()), "params_fp": int(per_layer.params_fp.sum()),
            "memory_bits": int(per_layer.memory_bits.sum()), "bops": bops, "flops": flops,
            "ops": bops / 64 + flops}


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Totals per (dataset, network, bits) of the suite, from the model arguments its runs logged; a network
    that cannot be rebuilt here (a plugin model not installed) gets an ``error`` and nan numbers."""
    from bench.errors import BinbenchError

    rows = []
    for (ds, model, bits), g in runs.groupby(["dataset", "model", "bits"], sort=True):
        key = {"dataset": ds, "network": model, "bits": "W32A32" if bits == "FP32" else bits}
        try:
            net, shape = build(model, ds, bits, json.loads(g["model_args"].iloc[0] or "{}"))
            rows.append({**key, **totals(layers(net, shape)), "error": ""})
        except (BinbenchError, TypeError, ValueError, RuntimeError) as err:
            rows.append({**key, "error": " ".join(str(err).split())})
    return pd.DataFrame(rows)


def _n(v: float, unit: str = "") -> str:
    if not isinstance(v, int | float) or math.isnan(v):
        return "–"
    for size, name in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= size:
            return f"{v / size:.2f} {name}{unit}"
    return f"{v:.0f} {unit}".strip()


def display(summ: pd.DataFrame) -> pd.DataFrame:
    """The totals as the report's table shows them."""
    rows = []
    for r in summ.to_dict("records"):
        ok = not r.get("error")
        rows.append({"Dataset": r["dataset"], "Network": r["network"], "W/A": r["bits"],
                     "Binary layers": r["binary_layers"] if ok else "–", "FP layers": r["fp_layers"] if ok else "–",
                     "Params 1-bit": _n(r.get("params_binary", math.nan)),
                     "Params 32-bit": _n(r.get("params_fp", math.nan)),
                     "Weight memory": f"{_n(r['memory_bits'], 'bit')} ({r['memory_bits'] / 8 / 1024:.1f} KiB)"
                     if ok else "–", "BOPs": _n(r.get("bops", math.nan)), "FLOPs": _n(r.get("flops", math.nan)),
                     "OPs": _n(r.get("ops", math.nan)), "Note": r.get("error") or ""})
    return pd.DataFrame(rows)


LEGEND = ("Binary layers: conv/linear layers with 1-bit weights; params by precision; weight memory: 1 bit per "
          "binary weight, 32 per other parameter; BOPs: MACs with 1-bit weights and 1-bit inputs; FLOPs: all other "
          "MACs (a binary-weight layer on real inputs included); OPs = BOPs/64 + FLOPs (Bi-Real Net, ReActNet). "
          "MACs from torch.utils.flop_counter.FlopCounterMode on one input; networks rebuilt from the runs' "
          "logged model arguments (training-only estimator state not counted). Reference: larq's summary.")


def markdown(summ: pd.DataFrame, suite: str) -> str:
    """``complexity.md``: the totals table with its legend."""
    from bench.report.escape import md_table

    return "\n".join([f"# {escape.markdown(suite)}: model complexity", "", md_table(display(summ)), "", LEGEND, ""])


__all__ = ["build", "display", "layers", "markdown", "summary", "totals"]

"""Per-layer diagnostics as the heatmaps draw them: each binary layer by the model's own layer name, in the
model's order.

Runs log ``diag/<layer>/<metric>`` with the layer's readable path (``linear1``, ``layer1.0.conv1``; see
:func:`bench.diagnostics.layer_paths`); stores from before that logged the module name (``features.0``) or the
module index (``1``, ``4``, ``7``). All three are mapped onto the readable path of the rebuilt network's binary
layers, so the heatmaps of old and new stores name and order layers alike; a network that cannot be rebuilt
keeps the logged names in natural order.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

import pandas as pd

from bench.report.collect import LAYER_METRIC

COLUMNS = ["display", "role", "model", "bits", "epoch", "layer", "layer_order", "metric", "value"]


@lru_cache(maxsize=32)
def binary_layer_paths(model: str, dataset: str, bits: str, model_args: str) -> tuple[tuple[str, str], ...]:
    """(module name, readable path) of each binary layer of the network, in module order; empty when the
    network cannot be rebuilt (a model no longer registered)."""
    from bench.diagnostics import layer_paths
    from bench.layers import binary_layers
    from bench.report.complexity import build

    try:
        net, _shape = build(model, dataset, bits, json.loads(model_args or "{}"))
    except Exception:  # noqa: BLE001 - any failure to rebuild leaves the logged names as they are
        return ()
    paths = layer_paths(net)
    return tuple((name, paths.get(name, name)) for name, _layer in binary_layers(net))


def _natural(name: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def layer_names(logged: list[str], paths: tuple[tuple[str, str], ...]) -> dict[str, tuple[int, str]]:
    """logged layer key -> (order, readable name). A key is a readable path, a module name or (old stores) a
    module index, the k-th smallest index being the k-th binary layer."""
    readable = [p for _n, p in paths]
    by_module = {n: p for n, p in paths}
    numeric = sorted((k for k in logged if k.isdigit()), key=int)
    out: dict[str, tuple[int, str]] = {}
    for key in logged:
        name = key if key in readable else by_module.get(key)
        if name is None and key.isdigit() and len(numeric) == len(readable):
            name = readable[numeric.index(key)]
        if name is not None:
            out[key] = (readable.index(name), name)
    rest = sorted((k for k in logged if k not in out), key=_natural)
    out.update({k: (len(readable) + i, k) for i, k in enumerate(rest)})
    return out


def layer_frame(cur: pd.DataFrame) -> pd.DataFrame:
    """Per-layer flip ratio and QE in long form: display, role, model, bits, epoch, layer (readable name),
    layer_order, metric (``flip`` or ``qe``), value."""
    cols = [c for c in cur.columns if LAYER_METRIC.match(c)]
    if not cols or cur.empty:
        return pd.DataFrame(columns=COLUMNS)
    ids = [c for c in ("display", "role", "model", "dataset", "bits", "epoch", "model_args") if c in cur]
    long = cur.melt(id_vars=ids, value_vars=cols, var_name="key").dropna(subset=["value"])
    parts = long["key"].str.extract(LAYER_METRIC)
    long = long.assign(logged=parts[0], metric=parts[1])
    frames = []
    for (model, dataset, bits, args), g in long.groupby(["model", "dataset", "bits", "model_args"], dropna=False):
        names = layer_names(sorted(g.logged.unique()), binary_layer_paths(model, dataset, bits, args or "{}"))
        frames.append(g.assign(layer=g.logged.map(lambda k, n=names: n[k][1]),
                               layer_order=g.logged.map(lambda k, n=names: n[k][0])))
    return pd.concat(frames)[COLUMNS].reset_index(drop=True)


__all__ = ["binary_layer_paths", "layer_frame", "layer_names"]

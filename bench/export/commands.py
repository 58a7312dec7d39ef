"""``binbench export RUN`` and ``binbench evaluate --exported FILE``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from bench.errors import BinbenchError


def _by_key(ref: str, tracking_uri: str | None) -> str | None:
    """The latest finished run whose key (tag ``binbench.key``) or name is ``ref``, in the stores searched."""
    if not re.fullmatch(r"[\w.\- ]+", ref):
        return None
    from bench.track.evaluate import stores
    from bench.track.store import KEY_TAG, mlflow_client

    for uri in stores(tracking_uri):
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
            continue
        client = mlflow_client(uri)
        exps = [e.experiment_id for e in client.search_experiments()]
        for flt in (f"tags.`{KEY_TAG}` = '{ref}'", f"attributes.run_name = '{ref}'"):
            runs = client.search_runs(exps, filter_string=f"{flt} and attributes.status = 'FINISHED'",
                                      order_by=["attributes.start_time DESC"], max_results=1) if exps else []
            if runs:
                return runs[0].info.run_id
    return None


def find_weights(ref: str, tracking_uri: str | None) -> tuple[Any, dict[str, Any]]:
    """(the recorded run, its final state_dict) for a run id, a run's artifact folder, or a suite trial's key or
    label."""
    from bench.track.evaluate import find_run

    try:
        rec = find_run(ref, tracking_uri)
    except BinbenchError:
        run_id = None if Path(ref).is_dir() else _by_key(ref, tracking_uri)
        if run_id is None:
            raise
        rec = find_run(run_id, tracking_uri)
    return rec, torch.load(rec.weights, map_location="cpu", weights_only=True)


def export_command(ref: str, out: str | None, onnx: bool, tracking_uri: str | None,
                   data_root: str | None) -> tuple[list[str], bool]:
    """Export and check a recorded run; (lines to print, whether every prediction agreed or was explained)."""
    from bench.export import fileformat
    from bench.export.runs import check_export, export_run, load_exported, load_run

    rec, weights = find_weights(ref, tracking_uri)
    if rec.config.get("w_bits") != 1:
        raise BinbenchError(f"{rec.where} has full-precision weights: there is nothing binary to export")
    run = load_run(rec.config, weights, data_root=data_root)
    from bench.track.store import USER_RUNS

    path = export_run(run, Path(out) if out else USER_RUNS / "exports" / f"{run.key}.bnn.safetensors")
    net, manifest = load_exported(path)
    check = check_export(run, net)
    s = fileformat.sizes(path)
    lines = [f"wrote {path}: binary part {s.binary} bytes (packed signs and folded per-channel values), float part "
             f"{s.float} bytes, file {s.file} bytes with its manifest",
             f"bit-level: top-1 {check.top1_exported:.2f} ({run.mode} network; simulated {check.top1_simulated:.2f}); "
             f"{check.summary()}"]
    ok = check.identical or "not explained" not in " ".join(check.reasons)
    if onnx:
        from bench.export.onnx_model import OnnxNet, save_onnx

        onnx_path = save_onnx(net, manifest, path.with_suffix("").with_suffix(".onnx"))
        oc = check_export(run, OnnxNet(onnx_path))
        lines.append(f"wrote {onnx_path} ({onnx_path.stat().st_size} bytes); onnxruntime: top-1 "
                     f"{oc.top1_exported:.2f}; {oc.summary()}")
        ok = ok and (oc.identical or "not explained" not in " ".join(oc.reasons))
    return lines, ok


def evaluate_exported(file: str, data_root: str | None) -> dict[str, Any]:
    """Test top-1 of an exported file (bit-level) or its ONNX model (onnxruntime), on its run's test set."""
    from bench.data import get_dataset
    from bench.spec import recorded_values, resolve
    from bench.train import make_loaders

    path = Path(file)
    if path.suffix == ".onnx":
        from bench.export.onnx_model import OnnxNet

        import_from = path.with_name(path.stem + ".bnn.safetensors")
        if not import_from.is_file():
            raise BinbenchError(f"{path}: its exported file {import_from} (which names the run's data) is not "
                                "beside it; export with `binbench export RUN --onnx` to get both")
        manifest = _manifest(import_from)
        net, how = OnnxNet(path), "onnxruntime"
    else:
        from bench.export.runs import load_exported

        net, manifest = load_exported(path)
        how = "bit-level (XNOR-popcount)"
    values = {**recorded_values(manifest["config"]), "device": "cpu", "resume": False, "checkpoint_dir": None,
              "download": False}
    if data_root:
        values["data_root"] = data_root
    cfg = resolve(values).config
    test = make_loaders(cfg, get_dataset(cfg.dataset), torch.device("cpu"), channels_last=False).test
    n = right = 0
    for xb, yb in test.batches():
        right += int((net(xb).argmax(1) == yb).sum())
        n += len(yb)
    return {"file": str(path), "how": how, "top1": 100.0 * right / max(n, 1), "images": n, "key": manifest["key"],
            "model": manifest["model"], "estimator": manifest["estimator"], "mode": manifest["mode"]}


def _manifest(path: Path) -> dict[str, Any]:
    from bench.export.fileformat import load

    return load(path)[1]


def print_json(obj: Any) -> None:
    print(json.dumps(obj, default=str))

"""The export every tracked run makes at its end (``binbench run`` and every suite trial).

Committed stores hold no weights (``model/weights.pt`` is not committed), so the deployable numbers are measured
when the run ends and recorded with it: the exported file (``export/model.bnn.safetensors``) and its ONNX model
(``export/model.onnx``) as artifacts, and the metrics the reports read:

* ``export/top1``: test top-1 of the exported network, computed bit-level (one binary network: for an estimator
  with an ensemble, its export mode's network, e.g. a distribution's mean); for a network too large for the
  bit-level reference on every test image (``export/bitlevel_images`` says how many it checked, within
  ``BITLEVEL_BUDGET``), the top-1 of the same network in onnxruntime on all of them;
* ``export/mismatches`` (and ``export/onnx_mismatches``): test images whose bit-level (onnxruntime) prediction
  differs from the simulated evaluation of the same network (0 expected; the ``export.check`` tag says why not);
* ``export/bytes``: the tensors of the exported network measured from the file (``export/binary_bytes``: packed
  sign bits and the folded per-channel values; ``export/float_bytes``: the float layers), ``export/file_bytes``
  the whole file with its manifest; ``export/fp32_bytes``: the same network with 32-bit weights.

An export that fails (a model with a residual graph, say) never fails the run: its reason is the tag
``export_error``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from torch import nn

from bench.errors import BinbenchError

FILE = "model.bnn.safetensors"
ONNX_FILE = "model.onnx"
ARTIFACT_DIR = "export"
#: XOR-popcount word operations the bit-level check at a run's end may spend (a few tens of seconds here); a
#: network that needs more is checked bit-level on as many test images as fit, and in onnxruntime on all
BITLEVEL_BUDGET = 2e9


def fp32_bytes(model: nn.Module) -> int:
    """Bytes of the network at 32 bits per value: every weight, bias, scale and BatchNorm tensor of its layers
    (the estimators' own training state, such as a variational factor, is not part of the network)."""
    from bench.estimator import Quantizer

    skip = {n for n, m in model.named_modules() if isinstance(m, Quantizer)}
    total = 0
    for name, t in model.state_dict().items():
        owner = name.rpartition(".")[0]
        if any(owner == s or owner.startswith(s + ".") for s in skip) or name.endswith("num_batches_tracked"):
            continue
        total += 4 * t.numel()
    return total


def export_and_check(config: dict[str, Any], weights: dict[str, Any], folder: Path, key: str | None = None,
                     onnx: bool = True) -> tuple[dict[str, float], str, list[Path]]:
    """Export a run into ``folder``, check it on the test set; (metrics, check summary, files written)."""
    from bench.export import fileformat
    from bench.export.runs import check_export, export_run, load_exported, load_run, word_ops

    start = time.perf_counter()
    run = load_run(config, weights, key)
    path = export_run(run, folder / FILE)
    net, manifest = load_exported(path)
    limit = max(1, int(BITLEVEL_BUDGET // max(word_ops(net, manifest["input"]["shape"]), 1)))
    check = check_export(run, net, limit)
    sizes = fileformat.sizes(path)
    metrics = {"export/top1": check.top1_exported, "export/mismatches": check.images - check.agree,
               "export/bitlevel_images": check.images, "export/bytes": sizes.payload,
               "export/binary_bytes": sizes.binary, "export/float_bytes": sizes.float,
               "export/file_bytes": sizes.file, "export/fp32_bytes": fp32_bytes(run.model)}
    files, summary = [path], f"bit-level: {check.summary()}"
    if onnx:
        from bench.export.onnx_model import OnnxNet, save_onnx

        onnx_path = save_onnx(net, manifest, folder / ONNX_FILE)
        onnx_check = check_export(run, OnnxNet(onnx_path))
        metrics.update({"export/onnx_mismatches": onnx_check.images - onnx_check.agree,
                        "export/onnx_file_bytes": onnx_path.stat().st_size})
        files.append(onnx_path)
        summary += f"; onnxruntime: {onnx_check.summary()}"
        if onnx_check.images > check.images:  # the same binary network on every test image, in onnxruntime
            metrics["export/top1"] = onnx_check.top1_exported
            summary += (f"; top-1 from onnxruntime on all {onnx_check.images} images (the bit-level reference "
                        f"checked the first {check.images}: its cost bound)")
    metrics["export/seconds"] = time.perf_counter() - start  # export and both checks: not an inference time
    return metrics, summary, files


def log_export(client: Any, run_id: str, config: dict[str, Any], result: Any, weights: dict[str, Any] | None,
               key: str | None = None) -> None:
    """Export a finished run with binary weights and record it in its MLflow run; failures become a tag."""
    from bench.track.record import foreign_artifact_root
    from bench.track.store import log_values

    if weights is None or result.status != "finished" or config.get("w_bits") != 1:
        return  # a diverged run has no network worth deploying; a full-precision one nothing to pack
    try:
        if foreign_artifact_root(client, run_id):
            return  # the record already says why no artifact is written
        with tempfile.TemporaryDirectory(prefix="binbench-export-") as tmp:
            metrics, summary, files = export_and_check(config, weights, Path(tmp), key)
            for f in files:
                client.log_artifact(run_id, str(f), ARTIFACT_DIR)
        log_values(client, run_id, metrics, {"export.check": summary})
    except BinbenchError as exc:
        client.set_tag(run_id, "export_error", str(exc)[:5000])
    except Exception as exc:  # an export problem must never fail a run that trained
        client.set_tag(run_id, "export_error", f"{type(exc).__name__}: {exc}"[:5000])

"""Export (issue 25): a trained BNN as packed bits, a bit-level inference with the same predictions as the
simulated evaluation on every test image, ONNX with the sign intact, sizes measured from the file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bench
from bench.errors import BinbenchError
from bench.export import bits as B
from bench.export import fileformat
from bench.export.graph import build_graph
from bench.export.runs import check_export, export_run, load_exported, load_run
from bench.layers import binary_layers
from bench.spec import resolve
from bench.track.record import FinalModel
from bench.train import train

ESTIMATORS = [n for n in bench.list_estimators() if not n.startswith("test_")]
#: a short W1A1 run whose every layer is binary, as the issue's "short digits run"; and a short conv net run
MODELS = {
    "mlp": {"model": "mlp", "model_args": {"hidden": [48, 48], "binarize_first_last": True}},
    "convnet": {"model": "convnet", "model_args": {"widths": [8, 16, 16], "binarize_first_last": True}},
}
_TRAINED: dict[tuple, tuple] = {}


def trained(est: str, model: str, **extra) -> tuple:
    """(run config, final weights) of a short digits run, trained once per test session."""
    key = (est, model, json.dumps(extra, sort_keys=True))
    if key not in _TRAINED:
        cfg = {"estimator": est, "dataset": "digits", "epochs": 2, "limit_train_batches": 6, "diagnostics": False,
               "threads": 1, **MODELS[model], **extra}
        spec = resolve(cfg)
        hook = FinalModel()
        res = train(spec, stage_hooks=[hook])
        assert res.status == "finished"
        _TRAINED[key] = (spec.config.to_dict(), hook.state_dict())
    return _TRAINED[key]


def exported(tmp_path, est: str, model: str, **extra):
    config, weights = trained(est, model, **extra)
    run = load_run(config, weights)
    path = export_run(run, tmp_path / "net.bnn.safetensors")
    net, manifest = load_exported(path)
    return run, path, net, manifest


# -- the bit arithmetic against plain torch --------------------------------------------------------------
def test_popcount_matches_counting_bits():
    words = torch.randint(-2**63, 2**63 - 1, (2000,), dtype=torch.int64)
    words[:4] = torch.tensor([0, -1, -2**63, 2**63 - 1])
    expected = torch.tensor([bin(int(w) & (2**64 - 1)).count("1") for w in words])
    assert torch.equal(B.popcount(words), expected)


def test_pack_unpack_is_one_bit_per_sign():
    positive = torch.rand(7, 13, 3) > 0.5
    stream = B.pack_signs(positive)
    assert stream.nbytes == math.ceil(positive.numel() / 8)
    assert torch.equal(B.unpack_signs(stream, tuple(positive.shape)), positive)


@pytest.mark.parametrize("n", [1, 63, 64, 65, 200])
def test_xnor_linear_is_the_integer_dot_product(n):
    a, w = torch.rand(9, n) > 0.5, torch.rand(5, n) > 0.5
    pm = lambda b: b.long() * 2 - 1  # noqa: E731
    d = B.xnor_linear(B.pack_words(a), B.pack_words(w), n)
    assert torch.equal(d, pm(a) @ pm(w).T)


@pytest.mark.parametrize("stride,padding,dilation,k", [(1, 1, 1, 3), (2, 1, 1, 3), (1, 0, 1, 3), (1, 2, 2, 3),
                                                       (2, 0, 1, 1)])
def test_xnor_conv_counts_zero_padding_as_no_tap(stride, padding, dilation, k):
    x, w = torch.rand(3, 5, 9, 7) > 0.5, torch.rand(4, 5, k, k) > 0.5
    ref = F.conv2d(torch.where(x, 1.0, -1.0), torch.where(w, 1.0, -1.0), None, stride, padding, dilation)
    d = B.xnor_conv2d(x, B.pack_words(w.reshape(4, -1)), (k, k), (stride, stride), (padding, padding),
                      (dilation, dilation))
    assert torch.equal(d, ref.round().long())


# -- every estimator: the exported network predicts as the simulated one -----------------------------------
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("est", ESTIMATORS)
def test_bit_level_predictions_equal_the_simulated_evaluation(tmp_path, est, model):
    run, _, net, manifest = exported(tmp_path, est, model)
    check = check_export(run, net)
    assert check.images == 360
    assert check.agree == check.images, check.summary()
    assert check.top1_exported == check.top1_simulated
    # integer XNOR-popcount on bits between binary layers, float x binary only on the pixels
    kinds = [op["op"] for op in manifest["graph"]]
    assert "binary" in kinds and "threshold" in kinds
    assert manifest["estimator"] == est and manifest["key"] == run.key


@pytest.mark.parametrize("est", ESTIMATORS)
def test_onnx_model_gives_the_same_predictions_in_onnxruntime(tmp_path, est):
    pytest.importorskip("onnxruntime")
    from bench.export.onnx_model import OnnxNet, save_onnx

    for model in MODELS:
        run, _, net, manifest = exported(tmp_path, est, model)
        onnx_path = save_onnx(net, manifest, tmp_path / f"{model}.onnx")
        check = check_export(run, OnnxNet(onnx_path))
        assert check.agree == check.images, check.summary()


def test_onnx_graph_has_no_sign_op_that_maps_zero_to_zero(tmp_path):
    onnx = pytest.importorskip("onnx")
    from bench.export.onnx_model import save_onnx

    _, _, net, manifest = exported(tmp_path, "ste", "mlp")
    ops = {n.op_type for n in onnx.load(str(save_onnx(net, manifest, tmp_path / "m.onnx"))).graph.node}
    assert "Sign" not in ops and "GreaterOrEqual" in ops


@pytest.mark.parametrize("model", list(MODELS))
def test_binary_part_is_one_bit_per_weight_plus_per_channel_values(tmp_path, model):
    run, path, _, _ = exported(tmp_path, "recu", model)
    layers = binary_layers(run.model)
    n_weights = sum(m.weight.numel() for _, m in layers)
    channels = sum(m.weight.shape[0] for _, m in layers)
    sizes = fileformat.sizes(path)
    header = json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")])
    bits = sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k.endswith("weight_bits"))
    assert bits == sum(math.ceil(m.weight.numel() / 8) for _, m in layers)
    per_channel = sizes.binary - bits
    assert 0 < per_channel <= 12 * channels  # at most three 4-byte values per output channel
    assert sizes.binary <= 1.05 * (n_weights / 8 + per_channel)


def test_folding_handles_negative_batchnorm_gamma_and_alpha(tmp_path):
    """BN with gamma < 0 (and a negative alpha) before a sign is a threshold with the comparison flipped; a max-pool
    before it becomes a min-pool of the integers."""
    for model in MODELS:
        config, weights = trained("ste", model)
        w = {k: v.clone() for k, v in weights.items()}
        for k, v in w.items():
            if k.endswith(".weight") and v.dim() == 1 and "alpha" not in k:  # BatchNorm gammas
                v[::2] *= -1
            if k.endswith("alpha"):
                v[1::3] *= -1
        run = load_run(config, w)
        path = export_run(run, tmp_path / f"{model}.bnn.safetensors")
        net, manifest = load_exported(path)
        flips = [net.t(op, "flip") for op in manifest["graph"] if op["op"] == "threshold"]
        assert any(bool(f.any()) and not bool(f.all()) for f in flips)
        check = check_export(run, net)
        assert check.agree == check.images, check.summary()


def test_w1a32_exports_float_times_binary_layers(tmp_path):
    run, _, net, manifest = exported(tmp_path, "irnet", "mlp", a_bits=32, scaling="native")
    assert {op["op"] for op in manifest["graph"]} >= {"binary_real"}
    assert check_export(run, net).identical


def test_vispa_exports_its_mean_network(tmp_path):
    run, _, net, manifest = exported(tmp_path, "vispa", "mlp")
    assert manifest["mode"] == "mean" == run.mode
    assert check_export(run, net).identical
    assert check_export(run, net, limit=50).images == 50  # the bound a run's end puts on a large network's check


def test_a_residual_model_is_refused_in_one_line():
    from bench.layers import BinarySpec
    from bench.models import create_model

    model = create_model("resnet20", BinarySpec(bench.create_estimator("ste"), bench.create_estimator("approx_sign"),
                                                "alpha"), 10, (3, 32, 32))
    with pytest.raises(BinbenchError, match="not a chain") as err:
        build_graph(model, "resnet20")
    assert "\n" not in str(err.value)


def test_a_changed_file_is_refused(tmp_path):
    _, path, _, _ = exported(tmp_path, "ste", "mlp")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BinbenchError, match="digest"):
        fileformat.load(path)


# -- the commands and the record of a tracked run -----------------------------------------------------------
def _cli(capsys, *args) -> tuple[int, str, str]:
    from bench.cli import main

    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.slow  # a tracked run and three commands: ~15 s idle, a minute on a loaded 2-core machine
def test_tracked_run_records_its_export_and_cli_exports_it(tmp_path, capsys, monkeypatch):
    from bench.track.store import mlflow_client

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc, out, err = _cli(capsys, "run", "-e", "ste", "-m", "mlp", "-d", "digits", "--epochs", "2", "--set",
                        "model.hidden=[32,32]", "--set", "model.binarize_first_last=true", "--set",
                        "limit_train_batches=5", "--set", "threads=2", "--tracking-uri", uri, "--json")
    assert rc == 0, err[-2000:]
    run_id = json.loads(out)["tracking"]["run_id"]
    client = mlflow_client(uri)
    m = client.get_run(run_id).data.metrics
    assert m["export/top1"] == m["top1"]  # ste evaluates one deterministic network: the exported one
    assert m["export/mismatches"] == 0 and m["export/onnx_mismatches"] == 0
    assert 0 < m["export/binary_bytes"] < m["export/bytes"] <= m["export/file_bytes"] and m["export/fp32_bytes"] > 0
    assert {a.path for a in client.list_artifacts(run_id, "export")} == {"export/model.bnn.safetensors",
                                                                       "export/model.onnx"}
    rc, out, err = _cli(capsys, "export", run_id, "--tracking-uri", uri, "--out", str(tmp_path / "n.bnn.safetensors"),
                        "--onnx")
    assert rc == 0, err[-2000:]
    assert out.count("identical predictions on all 360 test images") == 2 and (tmp_path / "n.onnx").is_file()
    for f in ("n.bnn.safetensors", "n.onnx"):
        rc, out, err = _cli(capsys, "evaluate", "--exported", str(tmp_path / f))
        assert rc == 0 and f"test top-1 {m['top1']:.2f}" in out, out + err


def test_log_export_records_metrics_artifacts_and_never_fails_the_run(tmp_path):
    """What a tracked run's end records (the fast half of the test above): the export metrics and both files, and
    for a model it cannot export a tag, not an exception."""
    from types import SimpleNamespace

    from bench.export.tracked import log_export

    class Client:
        def __init__(self):
            self.metrics, self.artifacts, self.tags = {}, [], {}

        def get_run(self, run_id):
            uri = (tmp_path / "exp" / run_id / "artifacts").as_uri()
            return SimpleNamespace(info=SimpleNamespace(artifact_uri=uri))

        def log_metric(self, run_id, key, value):
            self.metrics[key] = value

        def log_batch(self, run_id, metrics=(), params=(), tags=()):
            self.metrics.update({m.key: m.value for m in metrics})
            self.tags.update({t.key: t.value for t in tags})

        def log_artifact(self, run_id, path, folder):
            self.artifacts.append(f"{folder}/{Path(path).name}")

        def set_tag(self, run_id, key, value):
            self.tags[key] = value

    config, weights = trained("dsq", "convnet")
    client = Client()
    log_export(client, "r1", config, SimpleNamespace(status="finished"), weights)
    assert client.metrics["export/mismatches"] == 0 == client.metrics["export/onnx_mismatches"]
    assert client.metrics["export/bitlevel_images"] == 360  # a small network: every test image, bit-level
    assert sorted(client.artifacts) == ["export/model.bnn.safetensors", "export/model.onnx"]
    assert "identical predictions" in client.tags["export.check"] and "export_error" not in client.tags
    full_top1 = client.metrics["export/top1"]
    # a network too large for the bit-level reference on every image: checked bit-level on as many as the budget
    # allows, its top-1 from the same network in onnxruntime on all of them
    from bench.export import tracked
    from bench.export.runs import word_ops

    _, path, net, manifest = exported(tmp_path, "dsq", "convnet")
    client = Client()
    old, tracked.BITLEVEL_BUDGET = tracked.BITLEVEL_BUDGET, 100 * word_ops(net, manifest["input"]["shape"])
    try:
        log_export(client, "r3", config, SimpleNamespace(status="finished"), weights)
    finally:
        tracked.BITLEVEL_BUDGET = old
    assert client.metrics["export/bitlevel_images"] == 100 and client.metrics["export/top1"] == full_top1
    assert "checked the first 100" in client.tags["export.check"]
    client = Client()
    log_export(client, "r2", {**config, "model": "resnet20", "model_args": {}}, SimpleNamespace(status="finished"),
               weights)
    assert client.metrics == {} and "export_error" in client.tags


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk.bnn.safetensors").write_bytes(b"not a file")
    for args in (("evaluate", "--exported", "missing.bnn.safetensors"), ("export", "no-such-run"),
                 ("evaluate", "--exported", "junk.bnn.safetensors"), ("evaluate",)):
        rc, _, err = _cli(capsys, *args)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith("binbench: error:"), (args, err)


def test_leaderboard_columns_from_export_metrics():
    import pandas as pd

    from bench.export.columns import EXPORT_SIZE_COL, EXPORT_TOP1_COL, display, export_columns

    fin = pd.DataFrame({"export/top1": [90.0, 92.0], "export/bytes": [5000.0, 5000.0],
                        "export/fp32_bytes": [100000.0, 100000.0], "export/mismatches": [0.0, 1.0]})
    row = pd.Series(export_columns(fin))
    cells = display(row)
    assert cells[EXPORT_TOP1_COL] == "91.00 ± 1.41 ‡" and cells[EXPORT_SIZE_COL] == "5,000 (100,000)"
    assert display(pd.Series(export_columns(pd.DataFrame({"top1": [1.0]}))))[EXPORT_TOP1_COL] == "–"
    assert np.isnan(export_columns(pd.DataFrame({"top1": [1.0]}))["export_bytes"])

"""VISPA: the persistent (paper) constraint, reproducible sampling, evaluation modes. The official code's
semantics and gradient routing, step by step, are in test_fidelity.py."""

from __future__ import annotations

import torch

import bench
from bench.estimator import estimator_quantizers
from bench.layers import binary_layers
from bench.spec import resolve
from bench.train import train

from .conftest import TINY


def _check_constraint(model, scale):
    for _, layer in binary_layers(model):
        z = layer.weight_quantizer.Z
        total = layer.weight.detach().square() + z.detach().square().sum(0) / scale
        assert torch.allclose(total, torch.ones_like(total), atol=1e-5)


def test_persistent_constraint_holds_after_every_step():
    from bench.data import get_dataset, load_dataset
    from bench.spec import resolve
    from bench.train import build_model

    torch.manual_seed(0)
    cfg = resolve({**TINY, "estimator": "vispa",
                          "estimator_hparams": {"rank": 3, "scale": 50.0, "normalize": "persistent"}}).config
    model, est, _ = build_model(cfg, get_dataset("digits"))
    d = load_dataset("digits")
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    x = (d.train_x[:64].float() / 255 - 0.3) / 0.36
    for q, w in [(layer.weight_quantizer, layer.weight) for _, layer in binary_layers(model)]:
        est.constrain_(w, q)
    _check_constraint(model, 50.0)
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x), d.train_y[:64])
        opt.zero_grad()
        loss.backward()
        opt.step()
        for _, layer in binary_layers(model):
            est.constrain_(layer.weight, layer.weight_quantizer)
        _check_constraint(model, 50.0)


def test_training_loop_keeps_persistent_constraint():
    res_model = {}

    def grab(event, stage, model):
        res_model["m"] = model

    train(resolve({**TINY, "estimator": "vispa", "epochs": 1,
                   "estimator_hparams": {"samples": 2, "normalize": "persistent"}}), stage_hooks=[grab])
    _check_constraint(res_model["m"], 100.0)


def test_sample_reproducible_with_seed():
    est = bench.create_estimator("vispa", rank=4)
    torch.manual_seed(0)
    q = est.quantizer("weight", (6, 5))
    m = torch.randn(6, 5)
    torch.manual_seed(3)
    a = q(m)
    torch.manual_seed(3)
    b = q(m)
    c = q(m)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_ensemble_with_one_sample_equals_sample_mode():
    from bench.data import get_dataset
    from bench.spec import resolve
    from bench.train import build_model

    torch.manual_seed(0)
    cfg = resolve({**TINY, "estimator": "vispa", "estimator_hparams": {"samples": 1}}).config
    model, est, _ = build_model(cfg, get_dataset("digits"))
    model.eval()
    x = torch.randn(16, 1, 8, 8)
    outs = {}
    for mode in ("ensemble", "sample", "mean"):
        est.eval_mode = mode
        torch.manual_seed(5)
        outs[mode] = est.predict(model, x, mode)
    assert torch.equal(outs["ensemble"], outs["sample"])
    torch.manual_seed(6)
    est.eval_mode = "mean"
    assert torch.equal(est.predict(model, x, "mean"), outs["mean"])  # deterministic sign(M)


def test_run_reports_three_modes_and_overhead():
    res = train(resolve({**TINY, "estimator": "vispa", "epochs": 2, "estimator_hparams": {"samples": 3}}))
    assert set(res.eval_modes) == {"ensemble", "sample", "mean"}
    assert {"test_top1", "test_sample_top1", "test_mean_top1"} <= set(res.history[-1])
    binary = res.params["binary_weights"]
    assert res.params["estimator_state"] == 4 * binary  # K = 4 latent copies
    assert len(estimator_quantizers(torch.nn.Module())) == 0

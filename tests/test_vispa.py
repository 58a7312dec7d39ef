"""VISPA: the persistent (paper) constraint, reproducible sampling, evaluation modes. The official code's
semantics and gradient routing, step by step, are in test_fidelity.py."""

from __future__ import annotations

import pytest
import torch

import bench
from bench.estimator import estimator_quantizers
from bench.layers import binary_layers
from bench.spec import StagePlan, resolve
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
        torch.manual_seed(5)
        with est.evaluating(mode):
            outs[mode] = est.predict(model, x)
    assert torch.equal(outs["ensemble"], outs["sample"])
    torch.manual_seed(6)
    with est.evaluating("mean"):
        assert torch.equal(est.predict(model, x), outs["mean"])  # deterministic sign(M)


def test_run_reports_three_modes_and_overhead():
    res = train(resolve({**TINY, "estimator": "vispa", "epochs": 2, "estimator_hparams": {"samples": 3}}))
    assert set(res.eval_modes) == {"ensemble", "sample", "mean"}
    assert {"test_top1", "test_sample_top1", "test_mean_top1"} <= set(res.history[-1])
    binary = res.params["binary_weights"]
    assert res.params["estimator_state"] == 4 * binary  # K = 4 latent copies


def _vispa_model(**hparams):
    from bench.data import get_dataset
    from bench.train import build_model

    torch.manual_seed(0)
    cfg = resolve({**TINY, "estimator": "vispa", "estimator_hparams": hparams}).config
    return build_model(cfg, get_dataset("digits"))[:2]


@pytest.mark.parametrize("rank", [1, 3])
def test_every_binary_layer_has_its_own_trained_z(rank):
    """Z (K, *M.shape) per binary layer (docs section 7: "Z (shape (K, C_out, C_in, k, k))"), a parameter the
    optimizer updates and checkpoints keep; its gradient is eps_k times M's (dL/dZ = eps g, no chain rule through
    the normalisation), so each slice Z.grad[k] is parallel to M.grad."""
    from bench.train import make_optimizer

    model, est = _vispa_model(rank=rank)
    layers = binary_layers(model)
    assert layers
    zs = [layer.weight_quantizer.Z for _, layer in layers]
    for (_, layer), z in zip(layers, zs, strict=True):
        assert isinstance(z, torch.nn.Parameter) and z.requires_grad
        assert z.shape == (rank, *layer.weight.shape)
    assert len({id(z) for z in zs}) == len(zs)  # one Z per layer, not a shared one
    state = model.state_dict()
    assert all(f"{name}.weight_quantizer.Z" in state for name, _ in layers)
    opt = make_optimizer(model, StagePlan(0, "main", 1, "sgd", 0.1, 0.9, 0.0, "constant", 0, {}))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(z) in in_opt for z in zs)

    model.train()
    x = torch.randn(8, 1, 8, 8)
    torch.nn.functional.cross_entropy(model(x), torch.arange(8) % 10).backward()
    for (name, layer), z in zip(layers, zs, strict=True):
        g = layer.weight.grad
        assert z.grad is not None and g is not None and g.any(), name
        for k in range(rank):  # z.grad[k] = eps_k g for the layer's one draw eps ~ N(0, I_K)
            coef = (z.grad[k] * g).sum() / g.square().sum()
            assert coef != 0 and torch.allclose(z.grad[k], coef * g, atol=1e-6), (name, k)
    before = [z.detach().clone() for z in zs]
    opt.step()
    assert all(not torch.equal(z, b) for z, b in zip(zs, before, strict=True))


def test_rank_zero_has_no_z():
    model, _ = _vispa_model(rank=0)
    assert binary_layers(model)
    assert not any(hasattr(layer.weight_quantizer, "Z") for _, layer in binary_layers(model))
    assert sum(p.numel() for q in estimator_quantizers(model) for p in q.parameters()) == 0


def _predict(est, model, x, mode, seed):
    torch.manual_seed(seed)
    with est.evaluating(mode):  # as bench.train.evaluate sets it
        return est.predict(model, x)


def test_ensemble_averages_independent_samples():
    """The ensemble is the mean logit of L networks, each with a fresh sample in every layer (docs section 7,
    "Evaluation"): it is the average of L single-sample predictions drawn in turn, it is not any one of them,
    and averaging shrinks the spread from one draw to the next (about 1/sqrt(L))."""
    L = 16
    model, est = _vispa_model(samples=L)
    model.eval()
    x = torch.randn(32, 1, 8, 8)
    ens = _predict(est, model, x, "ensemble", 5)
    torch.manual_seed(5)
    with est.evaluating("sample"):
        singles = torch.stack([est.predict(model, x).float() for _ in range(L)])
    assert torch.allclose(ens, singles.mean(0), atol=1e-5)
    assert not torch.allclose(singles[0], singles[1])  # each pass draws its own sample
    assert not torch.allclose(ens, singles[0])
    mean = _predict(est, model, x, "mean", 5)
    assert torch.equal(mean, _predict(est, model, x, "mean", 6))  # sign(M): no draw
    assert not torch.allclose(ens, mean)  # S = 100: the samples are not the mean's signs
    seeds = range(8)
    spread_ens = torch.stack([_predict(est, model, x, "ensemble", s) for s in seeds]).std(0).mean()
    spread_one = torch.stack([_predict(est, model, x, "sample", s) for s in seeds]).std(0).mean()
    assert spread_ens < 0.5 * spread_one


def test_ensemble_tends_to_the_mean_network_as_the_variance_vanishes():
    """w = m_n + eps^T z_n / sqrt(S): as S grows every sample's signs become sign(M), so the ensemble's logits
    become the mean mode's; at the published S = 100 they are not."""
    model, est = _vispa_model(samples=4, scale=1e12)
    model.eval()
    x = torch.randn(32, 1, 8, 8)
    mean = _predict(est, model, x, "mean", 0)
    assert torch.allclose(_predict(est, model, x, "ensemble", 1), mean, atol=1e-4)
    assert torch.allclose(_predict(est, model, x, "sample", 2), mean, atol=1e-4)
    est.scale = 100.0
    assert not torch.allclose(_predict(est, model, x, "ensemble", 1), mean, atol=1e-4)

"""Table-driven: forward values and surrogate gradients equal the sheet's formulas (through bench.probe)."""

from __future__ import annotations

import math

import pytest
import torch

import bench

X = [-2.0, -1.5, -1.2, -1.0, -0.6, -0.3, -0.1, -0.05, 0.0, 0.02, 0.1, 0.25, 0.5, 0.99, 1.0, 1.2, 1.5, 1.7, 2.0]


def sgn(x):
    return 1.0 if x >= 0 else -1.0


def reste_g(x, o, t=1.5, eps=0.1):
    a = abs(x)
    if a > t:
        return 0.0
    if a <= eps:
        return eps ** (1 / o) / eps
    return (1 / o) * a ** ((1 - o) / o)


def o_of(p, o_end=3.0):
    return 1 + (o_end - 1) * (1 - math.cos(math.pi / 2 * p))


def dsq_g(x, alpha, u=1.0):
    if abs(x) > u:
        return 0.0
    delta = 2 * u
    k = math.log(2 / alpha - 1) / delta
    s = 1 / (1 - alpha)
    return (delta / 2) * s * k * (1 - math.tanh(k * x) ** 2)


def ede(p, tmin=1e-3, tmax=10.0):
    t = 10 ** (math.log10(tmin) + (math.log10(tmax) - math.log10(tmin)) * p)
    return max(1 / t, 1.0), t


def reste_at(p):
    return lambda x: reste_g(x, o_of(p))


def ede_at(p, tmin=1e-3):
    k, t = ede(p, tmin)
    return lambda x: k * t * (1 - math.tanh(t * x) ** 2)


# (name, kind, hparams, progress, stage, forward(x), grad(x))
CASES = [
    ("ste", "weight", {}, 0.0, None, sgn, lambda x: 1.0),
    ("ste", "activation", {}, 0.0, None, sgn, lambda x: 1.0),
    ("clipped_ste", "weight", {}, 0.0, None, sgn, lambda x: float(abs(x) <= 1.0)),
    ("clipped_ste", "activation", {"t": 1.5}, 0.0, None, sgn, lambda x: float(abs(x) <= 1.5)),
    ("approx_sign", "activation", {}, 0.0, None, sgn, lambda x: max(0.0, 2 - 2 * abs(x))),
    ("approx_sign", "weight", {}, 0.0, None, sgn, lambda x: max(0.0, 2 - 2 * abs(x))),
    ("dsq", "weight", {"alpha": 0.2, "range_init": "fixed"}, 0.0, None, sgn, lambda x: dsq_g(x, 0.2)),
    # the default range: a layer holding X takes u = max |X| = 2 (forward +-2, the surrogate spread over [-2, 2])
    ("dsq", "weight", {"alpha": 0.2}, 0.0, None, lambda x: 2.0 * sgn(x), lambda x: dsq_g(x, 0.2, 2.0)),
    ("dsq", "activation", {"alpha": 0.4, "learnable_alpha": False, "range_init": "fixed"}, 0.0, None, sgn,
     lambda x: dsq_g(x, 0.4)),
    ("dsq", "weight", {"alpha": 0.1, "u": 1.5, "range_init": "fixed"}, 0.0, None,
     lambda x: 1.5 * sgn(x), lambda x: dsq_g(x, 0.1, 1.5)),
    *[("reste", k, {}, p, None, sgn, reste_at(p)) for p in (0.0, 0.3, 0.7, 1.0) for k in ("weight", "activation")],
    ("reste", "weight", {"o_end": 2.0, "t": 1.0}, 1.0, None, sgn, lambda x: reste_g(x, 2.0, t=1.0)),
    ("biper", "weight", {}, 0.0, None, lambda x: sgn(math.sin(20 * x)), lambda x: 20 * math.cos(20 * x)),
    ("biper", "weight", {"w0": 7.0}, 0.0, None, lambda x: sgn(math.sin(7 * x)), lambda x: 7 * math.cos(7 * x)),
    ("biper", "weight", {}, 0.0, "real", lambda x: math.sin(20 * x), lambda x: 20 * math.cos(20 * x)),
    *[("irnet", "weight", {"standardize": False}, p, None, sgn, ede_at(p)) for p in (0.0, 0.5, 1.0)],
    ("irnet", "activation", {"t_min": 0.1}, 0.5, None, sgn, ede_at(0.5, 0.1)),
    ("vispa", "weight", {"rank": 0}, 0.0, None, sgn, lambda x: 1.0),
]


@pytest.mark.parametrize(("name", "kind", "hp", "progress", "stage", "f", "g"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[3]}-{c[4]}-{c[2]}" for c in CASES])
def test_forward_and_gradient_match_sheet(name, kind, hp, progress, stage, f, g):
    fwd, grad = bench.probe(name, X, kind=kind, progress=progress, stage=stage, **hp)
    exp_f = torch.tensor([f(x) for x in X])
    exp_g = torch.tensor([g(x) for x in X])
    assert torch.allclose(fwd, exp_f, atol=1e-6), f"forward {fwd.tolist()} != {exp_f.tolist()}"
    assert torch.allclose(grad, exp_g, rtol=1e-4, atol=1e-5), f"grad {grad.tolist()} != {exp_g.tolist()}"


def test_reste_reference_values_at_o3():
    _, g = bench.probe("reste", [0.0, 0.1000001, 1.5, 1.51], progress=1.0)
    assert g[0] == pytest.approx(4.6416, abs=1e-3)
    assert g[1] == pytest.approx(1.547, abs=1e-3)
    assert g[2] == pytest.approx(0.2544, abs=1e-3)
    assert g[3] == 0.0


@pytest.mark.parametrize(("alpha", "peak"), [(0.4, 1.155), (0.2, 1.373), (0.1, 1.636), (0.01, 2.673)])
def test_dsq_peak_slopes(alpha, peak):
    _, g = bench.probe("dsq", [0.0], alpha=alpha, range_init="fixed")
    assert g[0] == pytest.approx(peak, abs=1e-3)


def test_dsq_alpha_receives_gradient_when_learnable():
    est = bench.create_estimator("dsq", alpha=0.2, learnable_alpha=True, learnable_bounds=True)
    q = est.quantizer("weight", (5,))
    x = torch.tensor([-0.7, -0.2, 0.1, 0.4, 0.9], requires_grad=True)
    (q(x) * torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0])).sum().backward()
    assert q.alpha.grad is not None and q.alpha.grad.abs() > 0
    assert q.u.grad is not None and q.u.grad.abs() > 0
    fixed = bench.create_estimator("dsq", learnable_alpha=False).quantizer("weight", (5,))
    assert not any(p is fixed.alpha for p in fixed.parameters())


def test_recu_clamp_and_standardisation():
    # on raw values: gradient 1{|w| <= Q_tau}, Q_tau = -mean|w| ln(2 - 2 tau), tau from the exponential schedule
    x = torch.tensor([-3.0, -1.0, -0.2, 0.3, 1.1, 2.5])
    for p in (0.0, 1.0):
        tau = 0.85 if p == 0.0 else 0.99
        q_tau = -x.abs().mean() * math.log(2 - 2 * tau)
        fwd, g = bench.probe("recu", x, progress=p, standardize=False)
        assert torch.equal(fwd, torch.sign(x))
        assert torch.equal(g, (x.abs() <= q_tau).float())
    w = torch.randn(8, 3, 3, 3)
    w1 = bench.create_estimator("recu").latent(w)
    assert torch.allclose(w1.std(dim=(1, 2, 3)), torch.full((8,), 2 * math.sqrt(2)), rtol=1e-3)
    assert torch.allclose(w1.mean(dim=(1, 2, 3)), torch.zeros(8), atol=1e-5)


def test_irnet_power_of_two_scale_and_libra():
    est = bench.create_estimator("irnet")
    q = est.quantizer("weight", (4, 2, 3, 3), internal_scale=True)
    w = torch.randn(4, 2, 3, 3) * 0.1 + 0.3
    wb = q(w)
    w_hat = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / w.std(dim=(1, 2, 3), keepdim=True)
    scale = 2.0 ** torch.round(torch.log2(w_hat.abs().mean(dim=(1, 2, 3))))
    assert torch.allclose(wb, torch.sign(w_hat) * scale.view(4, 1, 1, 1))


def test_reste_internal_scale_is_layer_mean_not_detached():
    est = bench.create_estimator("reste")
    q = est.quantizer("weight", (3,), internal_scale=True)
    w = torch.tensor([0.2, -0.4, 0.9], requires_grad=True)
    out = q(w)
    assert torch.allclose(out, torch.sign(w.detach()) * w.detach().abs().mean())
    out.sum().backward()
    assert w.grad is not None  # gradient flows through the scale too


def test_biper_loss_term_matches_formula():
    est = bench.create_estimator("biper", tau=0.05)
    qs = [est.quantizer("weight", (10,)) for _ in range(2)]
    ws = [torch.randn(10) * 0.1 for _ in qs]
    for q, w in zip(qs, ws, strict=True):
        q(w)
    expected = sum(0.05 * torch.sin(20 * w).square().mean() for w in ws)
    assert torch.allclose(est.extra_loss(qs), expected)
    assert est.extra_loss(qs) is None  # consumed: one term per forward

"""The fused autograd Functions equal autograd through the plain formulas they replace."""

from __future__ import annotations

import math

import pytest
import torch

import bench
from bench.functional import sign, straight_through


def _plain_recu(w, tau):
    w0 = w - w.mean(dim=(1, 2, 3), keepdim=True)
    w1 = w0 / (torch.sqrt(w0.var(dim=(1, 2, 3), keepdim=True) + 1e-5) / (2 * math.sqrt(2)))
    q = (-w1.abs().mean() * math.log(2 - 2 * tau)).detach()
    w2 = torch.clamp(w1, -q, q)
    return straight_through(sign(w2), w2)


def _plain_irnet(w, k, t):
    w0 = w - w.mean(dim=(1, 2, 3), keepdim=True)
    w_hat = w0 / w0.std(dim=(1, 2, 3), keepdim=True)
    from bench.functional import surrogate_sign
    from estimators.irnet import ede_grad

    out = surrogate_sign(w_hat, lambda x: ede_grad(x, k, t))
    s = torch.pow(2.0, torch.round(torch.log2(w_hat.detach().abs().mean(dim=(1, 2, 3))))).view(-1, 1, 1, 1)
    return out * s


def _plain_dsq(x, alpha, u):
    a = alpha.clamp(1e-3, 0.999)
    uu = u.abs() + 1e-8
    k = torch.log(2.0 / a - 1.0) / (2 * uu)
    s = 1.0 / (1.0 - a)
    inside = x.abs() <= uu
    xc = torch.where(inside, x, torch.zeros_like(x))
    soft = torch.where(inside, -uu + 2 * uu * (s * torch.tanh(k * xc) + 1) / 2, uu * sign(x))
    return straight_through(uu * sign(x), soft)


def _grads(fn, *inputs):
    torch.manual_seed(1)
    upstream = None
    leaves = [i.detach().clone().requires_grad_(True) for i in inputs]
    out = fn(*leaves)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    return out.detach(), [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("progress", [0.0, 0.6, 1.0])
def test_recu_fused_equals_autograd(progress):
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3) * 0.05 + 0.01
    est = bench.create_estimator("recu")
    est.set_progress(bench.Progress.at(progress))
    q = est.quantizer("weight", tuple(w.shape))
    fo, (fg,) = _grads(q, w)
    po, (pg,) = _grads(lambda x: _plain_recu(x, est.tau), w)
    assert torch.equal(fo, po)
    assert torch.allclose(fg, pg, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0])
def test_irnet_fused_equals_autograd(progress):
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 3) * 0.1
    est = bench.create_estimator("irnet")
    est.set_progress(bench.Progress.at(progress))
    q = est.quantizer("weight", tuple(w.shape), internal_scale=True)
    k, t = est.kt
    fo, (fg,) = _grads(q, w)
    po, (pg,) = _grads(lambda x: _plain_irnet(x, k, t), w)
    assert torch.equal(fo, po)
    assert torch.allclose(fg, pg, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("alpha", "u"), [(0.2, 1.0), (0.4, 0.7), (0.05, 1.3)])
def test_dsq_fused_equals_autograd(alpha, u):
    torch.manual_seed(0)
    x = torch.randn(200) * 0.8
    from estimators.dsq import _DsqSign

    fo, fg = _grads(lambda *a: _DsqSign.apply(*a, 1.0), x, torch.tensor(alpha), torch.tensor(u))
    po, pg = _grads(_plain_dsq, x, torch.tensor(alpha), torch.tensor(u))
    assert torch.equal(fo, po)
    for a, b in zip(fg, pg, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)

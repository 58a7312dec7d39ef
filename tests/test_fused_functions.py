"""The fused autograd Functions equal autograd through the papers' formulas, written here independently of the code
under test (../shared/docs/estimators.md, sections 4, 5, 7 and 8): one step on random tensors (outputs bit-equal,
gradients within float rounding) and a 50-step SGD trajectory of a tiny two-layer network (same losses, same signs).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

import bench
from bench.functional import sign

Tensor = torch.Tensor


def _ste(hard: Tensor, soft: Tensor) -> Tensor:
    """The value of ``hard`` exactly (soft - soft is 0), the gradient of ``soft``."""
    return hard.detach() + (soft - soft.detach())


def _std_channels(w: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(w - mean_c) and sqrt(unbiased Var_c + eps) per output channel, with autograd."""
    dims = tuple(range(1, w.dim()))
    w0 = w - w.mean(dim=dims, keepdim=True)
    return w0, torch.sqrt(w0.var(dim=dims, keepdim=True) + eps)


def _plain_recu(w: Tensor, tau: float) -> Tensor:
    """ReCU: w1 = 2 sqrt(2) (w - mu)/sigma, w2 = clamp(w1, -Q, Q), Q = -mean|w1| ln(2 - 2 tau) detached; sign, STE."""
    w0, sigma = _std_channels(w, 1e-5)
    w1 = w0 / (sigma / (2 * math.sqrt(2)))
    q = (-w1.abs().mean() * math.log(2 - 2 * tau)).detach()
    w2 = torch.clamp(w1, -q, q)
    return _ste(sign(w2), w2)


def _plain_irnet(w: Tensor, k: float, t: float, scale: bool) -> Tensor:
    """IR-Net: w_hat = (w - mu)/std (Libra-PB); EDE F(x) = k tanh(t x), whose derivative k t (1 - tanh^2(t x)) is the
    paper's backward; forward sign(w_hat) times the detached 2^round(log2 mean_c |w_hat|)."""
    w0, sigma = _std_channels(w, 0.0)
    w_hat = w0 / sigma
    out = _ste(sign(w_hat), k * torch.tanh(t * w_hat))
    if scale:
        dims = tuple(range(1, w.dim()))
        out = out * torch.pow(2.0, torch.round(torch.log2(w_hat.detach().abs().mean(dim=dims, keepdim=True))))
    return out


def _plain_dsq(x: Tensor, alpha: Tensor, u: Tensor) -> Tensor:
    """DSQ at 1 bit: hard |u| sign(x) forward; backward of Q_S(x) = -u + 2u (s tanh(k x) + 1)/2 on |x| <= u,
    u sign(x) outside, s = 1/(1 - alpha), k = ln(2/alpha - 1)/(2u)."""
    a = alpha.clamp(1e-3, 0.999)
    uu = u.abs() + 1e-8
    k = torch.log(2.0 / a - 1.0) / (2 * uu)
    s = 1.0 / (1.0 - a)
    inside = x.abs() <= uu
    xc = torch.where(inside, x, torch.zeros_like(x))
    soft = torch.where(inside, -uu + 2 * uu * (s * torch.tanh(k * xc) + 1) / 2, uu * sign(x))
    return _ste(u.abs() * sign(x), soft)


def _plain_reste(x: Tensor, o: float, t: float = 1.5, eps: float = 0.1) -> Tensor:
    """ReSTE: sign forward; backward the derivative of F(x) = sign(x)|x|^(1/o) (eps < |x| <= t), x eps^(1/o)/eps
    (|x| <= eps: the chord), constant beyond t (zero gradient; torch.clamp's backward would drop |x| = t too)."""
    power = sign(x) * x.abs().clamp(min=eps) ** (1.0 / o)
    soft = torch.where(x.abs() <= eps, x * (eps ** (1.0 / o) / eps), power)
    return _ste(sign(x), torch.where(x.abs() <= t, soft, soft.detach()))


def _plain_vispa(m: Tensor, z: Tensor, eps: Tensor, scale: float) -> Tensor:
    """VISPA as the official code: normalise copies, (m_n, z_n) = (M, Z)/sqrt(M^2 + ||z||^2/S), sample
    w = m_n + eps . z_n / sqrt(S), sign; dL/dM = g and dL/dZ = eps g (no chain rule through the normalisation)."""
    with torch.no_grad():
        a = (m * m + (z * z).sum(0) / scale).clamp_min(1e-12).sqrt()
        w = m / a + torch.tensordot(eps, z / a, dims=1) / math.sqrt(scale)
    return _ste(sign(w), m + torch.tensordot(eps, z, dims=1))


def _grads(fn: Callable[..., Tensor], *inputs: Tensor) -> tuple[Tensor, list[Tensor | None]]:
    leaves = [i.detach().clone().requires_grad_(True) for i in inputs]
    out = fn(*leaves)
    torch.manual_seed(1)
    out.backward(torch.randn_like(out))
    return out.detach(), [leaf.grad for leaf in leaves]


def _assert_grads(fused: list[Tensor | None], plain: list[Tensor | None], rtol: float = 1e-5) -> None:
    for a, b in zip(fused, plain, strict=True):
        assert a is not None and b is not None
        # rounding of a per-channel reduction is relative to the terms' size, not to a cancelled result
        assert torch.allclose(a, b, rtol=rtol, atol=rtol * b.abs().max().item()), (a - b).abs().max()
        assert b.abs().max() > 0


def _at(name: str, progress: float):
    est = bench.create_estimator(name)
    est.set_progress(bench.Progress.at(progress))
    return est


def _fused_against_plain(q, x, plain):
    """The quantizer ``q`` against plain autograd through ``plain``: the same forward, bit for bit, and gradients
    equal within rounding; returns q's gradients."""
    fo, fg = _grads(q, x)
    po, pg = _grads(plain, x)
    assert torch.equal(fo, po)
    _assert_grads(fg, pg)
    return fg


@pytest.mark.parametrize("progress", [0.0, 0.6, 1.0])
@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (48, 40)])
def test_recu_fused_equals_autograd(progress, shape):
    torch.manual_seed(0)
    w = torch.randn(*shape) * 0.05 + 0.01
    est = _at("recu", progress)
    _fused_against_plain(est.quantizer("weight", tuple(w.shape)), w, lambda x: _plain_recu(x, est.tau))
    # the clamp's mask is active: without the standardisation, some gradients are exactly zero and the rest are not
    q = est.quantizer("weight", tuple(w.shape))
    est.standardize = False
    _, (g_raw,) = _grads(q, w * 50)
    assert 0 < (g_raw == 0).sum() < w.numel()


@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("scale", [True, False])
def test_irnet_fused_equals_autograd(progress, scale):
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 3) * 0.1
    est = _at("irnet", progress)
    k, t = est.kt
    _fused_against_plain(est.quantizer("weight", tuple(w.shape), internal_scale=scale), w,
                         lambda x: _plain_irnet(x, k, t, scale))


@pytest.mark.parametrize("progress", [0.0, 1.0])
def test_irnet_activation_is_ede_alone(progress):
    torch.manual_seed(0)
    x = torch.randn(8, 20)
    est = _at("irnet", progress)
    k, t = est.kt
    _fused_against_plain(est.quantizer("activation", (20,)), x, lambda v: _ste(sign(v), k * torch.tanh(t * v)))


@pytest.mark.parametrize(("alpha", "u"), [(0.2, 1.0), (0.4, 0.7), (0.05, 1.3), (0.4, 0.05), (1.5, -0.6)])
def test_dsq_fused_equals_autograd(alpha, u):
    torch.manual_seed(0)
    x = torch.randn(200) * 0.8
    from estimators.dsq import _DsqSign

    fo, fg = _grads(lambda *a: _DsqSign.apply(*a, 1.0), x, torch.tensor(alpha), torch.tensor(u))
    po, pg = _grads(_plain_dsq, x, torch.tensor(alpha), torch.tensor(u))
    assert torch.equal(fo, po)
    if alpha > 1:  # clamped: no gradient reaches alpha
        assert fg[1] == 0 and pg[1] == 0
        fg, pg = [fg[0], fg[2]], [pg[0], pg[2]]
    _assert_grads(fg, pg)


@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0])
def test_reste_fused_equals_autograd(progress):
    torch.manual_seed(0)
    x = torch.randn(40, 30) * 0.8
    x[0, :4] = torch.tensor([0.0, 0.1, -1.5, 1.6])  # the chord's edge, the clip's edge, beyond it
    est = _at("reste", progress)
    fg = _fused_against_plain(est.quantizer("weight", tuple(x.shape)), x, lambda v: _plain_reste(v, est.o))
    assert fg[0][0, 3] == 0 and fg[0][0, 2] != 0


def test_vispa_fused_equals_official_semantics():
    torch.manual_seed(0)
    est = bench.create_estimator("vispa", rank=3, scale=100.0)
    q = est.quantizer("weight", (12, 5, 3, 3))
    m = torch.randn(12, 5, 3, 3) * 0.05
    torch.manual_seed(7)
    eps = torch.randn(3)
    torch.manual_seed(7)
    fo, fg = _grads(lambda v, zz: est.quantize(v, type("Q", (), {"Z": zz, "training": True})()), m, q.Z.detach())
    po, pg = _grads(lambda v, zz: _plain_vispa(v, zz, eps, 100.0), m, q.Z.detach())
    assert torch.equal(fo, po)
    _assert_grads(fg, pg)


# -- trajectories ----------------------------------------------------------------------------------------
STEPS = 50


def _trajectory(binarize: Callable[[int, Tensor], Tensor], params: list[Tensor], seed_eps: bool) -> tuple[list, list]:
    """50 SGD steps of x -> tanh(0.5 W1b x) -> W2b h -> CE on fixed data; W1b, W2b from ``binarize``."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 12, generator=gen)
    y = torch.randint(0, 4, (64,), generator=gen)
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    losses = []
    for step in range(STEPS):
        if seed_eps:
            torch.manual_seed(1000 + step)  # the same eps draws in both runs
        h = torch.tanh(0.5 * F.linear(x, binarize(0, params[0])))
        loss = F.cross_entropy(0.3 * F.linear(h, binarize(1, params[1])), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in params]


def _init(shapes=((16, 12), (4, 16))) -> list[Tensor]:
    gen = torch.Generator().manual_seed(5)
    return [(torch.randn(*s, generator=gen) * 0.2).requires_grad_(True) for s in shapes]


def _compare(fused: tuple[list, list], plain: tuple[list, list]) -> None:
    fl, fw = fused
    pl, pw = plain
    assert fl == pytest.approx(pl, rel=1e-4)
    assert fl[-1] < fl[0]  # it trained
    for a, b in zip(fw, pw, strict=True):
        assert torch.equal(a >= 0, b >= 0)
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", ["recu", "irnet", "reste"])
def test_trajectory_matches_plain_autograd(name):
    est = bench.create_estimator(name)
    est.set_progress(bench.Progress.at(0.7))
    shapes = [(16, 12), (4, 16)]
    qs = [est.quantizer("weight", s) for s in shapes]
    plain = {"recu": lambda w: _plain_recu(w, est.tau),
             "irnet": lambda w: _plain_irnet(w, *est.kt, scale=False),
             "reste": lambda w: _plain_reste(w, est.o)}[name]
    fused = _trajectory(lambda i, w: qs[i](w), _init(), False)
    ref = _trajectory(lambda i, w: plain(w), _init(), False)
    _compare(fused, ref)


def test_dsq_trajectory_matches_plain_autograd():
    est = bench.create_estimator("dsq")
    shapes = [(16, 12), (4, 16)]
    ws = _init()
    qs = [est.quantizer("weight", s) for s in shapes]
    for q, w in zip(qs, ws, strict=True):
        with torch.no_grad():
            est.init_latent_(w, q)  # u = max |w|
    ref_ab = [(torch.tensor(0.2, requires_grad=True), q.u.detach().clone().requires_grad_(True)) for q in qs]
    scales = [math.prod(s) ** -0.5 for s in shapes]

    def plain(i: int, w: Tensor) -> Tensor:
        a, u = ref_ab[i]
        sc = scales[i]  # gradients of the per-layer scalars divided by sqrt(N): value a, gradient sc * dL/da
        return _plain_dsq(w, a * sc + (a * (1 - sc)).detach(), u * sc + (u * (1 - sc)).detach())

    params = [*ws, *(p for q in qs for p in (q.alpha, q.u))]
    fused = _trajectory(lambda i, w: qs[i](w), params, False)
    ref_params = [*_init(), *(p for ab in ref_ab for p in ab)]
    ref = _trajectory(plain, ref_params, False)
    _compare((fused[0], fused[1][:2]), (ref[0], ref[1][:2]))
    for a, b in zip(fused[1][2:], ref[1][2:], strict=True):  # alpha and u learned alike
        assert torch.allclose(a, b, rtol=1e-4)
    assert not torch.equal(fused[1][2], torch.tensor(0.2))


def test_vispa_trajectory_matches_official_semantics():
    est = bench.create_estimator("vispa", rank=3, scale=100.0)
    shapes = [(16, 12), (4, 16)]
    torch.manual_seed(0)
    qs = [est.quantizer("weight", s) for s in shapes]
    z_ref = [q.Z.detach().clone().requires_grad_(True) for q in qs]

    def plain(i: int, w: Tensor) -> Tensor:
        return _plain_vispa(w, z_ref[i], torch.randn(3), 100.0)

    fused = _trajectory(lambda i, w: est.quantize(w, qs[i]), [*_init(), *(q.Z for q in qs)], True)
    ref = _trajectory(plain, [*_init(), *z_ref], True)
    _compare((fused[0], fused[1][:2]), (ref[0], ref[1][:2]))
    for a, b in zip(fused[1][2:], ref[1][2:], strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)

"""Elementwise building blocks shared by the estimators.

Every estimator's elementwise work goes through one autograd Function, ``SurrogateSign``: the forward is
sign(x) with sign(0) = +1, the backward multiplies the incoming gradient by the estimator's surrogate
derivative g(x). Keeping it in one place keeps the sign convention identical everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

GradFn = Callable[[Tensor], Tensor]


def sign(x: Tensor) -> Tensor:
    """sign(x) in {-1, +1} with sign(0) = +1 (the papers' convention; torch.sign gives 0 at 0)."""
    return torch.where(x < 0, -torch.ones_like(x), torch.ones_like(x))


class SurrogateSign(torch.autograd.Function):
    """y = sign(x); dL/dx = dL/dy * g(x) for a surrogate derivative g."""

    @staticmethod
    def forward(ctx, x: Tensor, grad_fn: GradFn) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.grad_fn = grad_fn
        return sign(x)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_out * ctx.grad_fn(x).to(grad_out.dtype), None


def surrogate_sign(x: Tensor, grad_fn: GradFn) -> Tensor:
    """sign(x) forward, ``grad_fn(x)`` as d sign / dx backward."""
    return SurrogateSign.apply(x, grad_fn)


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """Value of ``hard``, gradient of ``soft`` (for surrogates with learnable parameters)."""
    return soft + (hard - soft).detach()


def channel_dims(w: Tensor) -> tuple[int, ...]:
    """Dimensions reduced for per-output-channel statistics: all but the first, or all for a 1-D tensor."""
    return tuple(range(1, w.dim())) if w.dim() > 1 else (0,)


def channel_view(stat: Tensor, w: Tensor) -> Tensor:
    """Reshape a per-channel statistic so that it broadcasts against ``w``."""
    return stat.reshape(-1, *([1] * (w.dim() - 1))) if w.dim() > 1 else stat.reshape(())


class SignSte(torch.autograd.Function):
    """y = sign(x); dL/dx = dL/dy (identity straight-through: no multiply, no saved tensor)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return sign(x)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        return grad_out


def sign_ste(x: Tensor) -> Tensor:
    return SignSte.apply(x)


def standardize_backward(g: Tensor, w1: Tensor, sigma: Tensor, c: float, dims: tuple[int, ...], n: int) -> Tensor:
    """dL/dw for w1 = c (w - mean) / sigma with sigma^2 = unbiased Var(w) (+ eps), per channel:
    (c/sigma)(g - mean g) - w1 * sum(g w1) / ((n - 1) sigma c)."""
    gm = g.mean(dim=dims, keepdim=True)
    gw = (g * w1).sum(dim=dims, keepdim=True)
    # the expression above, operation for operation (so bit-identical), with the full-size temporaries reused in place
    return (g - gm).mul_(c / sigma).sub_((w1 * gw).div_((n - 1) * sigma * c))


def standardize(w: Tensor, c: float, eps: float) -> tuple[Tensor, Tensor, tuple[int, ...], int]:
    """(w1, sigma, dims, n): per-output-channel c (w - mean) / sqrt(unbiased Var + eps), without autograd."""
    dims = channel_dims(w)
    n = 1
    for d in dims:
        n *= w.shape[d]
    var, mean = torch.var_mean(w, dim=dims, keepdim=True)
    sigma = torch.sqrt(var + eps) if eps else torch.sqrt(var)
    return c * (w - mean) / sigma, sigma, dims, n

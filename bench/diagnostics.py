"""Per-layer diagnostics of the latent weights, computed once per epoch (never per step).

* ``qe``         quantization error, BiPer eq. (15): mean((w_hat - gamma*sign(w_hat))^2), gamma = mean|w_hat|,
                 with w_hat the real value the estimator binarizes;
* ``laplace_b``  maximum-likelihood Laplace scale of the latent weights: mean|w - median(w)|;
* ``flip``       share of binary weights whose sign changed since the previous epoch;
* ``saturation`` share of latent weights outside the estimator's gradient support (|g(w)| <= tol);
* estimator-specific ones (ReSTE's fitting error and gradient stability).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bench.estimator import Estimator, Quantizer
from bench.functional import sign
from bench.layers import binary_layers

SATURATION_TOL = 1e-3


def quantization_error(estimator: Estimator, latent_weights: Tensor, q: Quantizer | None = None) -> float:
    """BiPer eq. (15) for the estimator's w_hat of ``latent_weights``."""
    with torch.no_grad():
        w_hat = estimator.latent(latent_weights.detach().float(), q)
        gamma = w_hat.abs().mean()
        return float(((w_hat - gamma * sign(w_hat)) ** 2).mean())


def qe_laplace(c: float) -> float:
    """Closed form of the expected QE of sin(w0 W), W ~ Laplace(0, b), c = b*w0 (sheet section 9)."""
    gamma = c / math.tanh(math.pi / (2 * c)) / (1 + c * c)
    return 2 * c * c / (1 + 4 * c * c) - gamma * gamma


def laplace_b(w: Tensor) -> float:
    w = w.detach().float().flatten()
    return float((w - w.median()).abs().mean())


def surrogate_grad(q: Quantizer, w: Tensor) -> Tensor:
    """d q(w) / d w elementwise as the estimator's backward defines it (random state untouched)."""
    with torch.random.fork_rng(devices=[w.device] if w.is_cuda else []), torch.enable_grad():
        x = w.detach().clone().requires_grad_(True)
        y = q(x)
        if not y.requires_grad:  # nothing reaches the latent weights (the frozen control)
            return torch.zeros_like(x)
        y.backward(torch.ones_like(x))
    return x.grad.detach()


class DiagnosticsTracker:
    """Remembers last epoch's signs to measure flips; ``collect()`` returns {metric: value}."""

    def __init__(self, model: nn.Module):
        self.layers = binary_layers(model)
        # the signs at initialisation, so that the first epoch's flips are measured too
        with torch.no_grad():
            self.prev: dict[str, Tensor] = {
                name: (q.estimator.latent(layer.weight.detach(), q) >= 0).cpu()
                for name, layer in self.layers for q in [layer.weight_quantizer]}

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.prev)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.prev = dict(state)

    @torch.no_grad()
    def collect(self) -> dict[str, float]:
        out: dict[str, float] = {}
        sums: dict[str, list[float]] = {}
        for name, layer in self.layers:
            q = layer.weight_quantizer
            est = q.estimator
            w = layer.weight
            w_hat = est.latent(w.detach(), q)
            signs = w_hat >= 0
            vals = {
                "qe": quantization_error(est, w.detach(), q),
                "laplace_b": laplace_b(w),
            }
            if name in self.prev and self.prev[name].shape == signs.shape:
                vals["flip"] = float((signs != self.prev[name].to(signs.device)).float().mean())
            self.prev[name] = signs.cpu()
            mask = est.saturated(w.detach(), q)
            if mask is None:
                mask = surrogate_grad(q, w).abs() <= SATURATION_TOL
            vals["saturation"] = float(mask.float().mean())
            vals.update(est.layer_diagnostics(w, q))
            for k, v in vals.items():
                out[f"diag/{name}/{k}"] = v
                sums.setdefault(k, []).append(v)
        for k, vs in sums.items():
            out[f"diag/{k}"] = sum(vs) / len(vs)
        return out

"""Per-layer diagnostics of the latent weights, computed once per epoch (never per step).

* ``qe``         quantization error: mean((w_hat - gamma*sign(w_hat))^2), gamma = mean|w_hat|,
                 with w_hat the real value the estimator binarizes;
* ``laplace_b``  maximum-likelihood Laplace scale of the latent weights: mean|w - median(w)|;
* ``flip``       share of binary weights whose sign changed since the previous epoch;
* ``saturation`` share of latent weights outside the estimator's gradient support (|g(w)| <= tol);
* estimator-specific ones (``Estimator.layer_diagnostics``: a fitting error, a gradient stability).

Per-layer metrics are ``diag/<layer path>/<metric>``, the layer path being the layer's name in
``model.named_modules()`` with a bare position in an ``nn.Sequential`` (``4``, ``features.8``) named by the
layer's kind and its ordinal among that container's layers of the kind, counting from 1 and FP layers included
(``linear2``, ``features.conv2``); named children keep their names (``layer1.0.conv1``). ``diag/<metric>`` is
the mean over the binary layers.
"""

# qe is the quantization error of the BiPer paper (eq. 15); the fitting error and gradient stability are ReSTE's
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bench.estimator import Estimator, Quantizer
from bench.functional import sign
from bench.layers import binary_layers

SATURATION_TOL = 1e-3


def quantization_error(estimator: Estimator, latent_weights: Tensor, q: Quantizer | None = None) -> float:
    """The quantization error of the estimator's w_hat of ``latent_weights``."""
    # the QE of the BiPer paper, eq. (15)
    with torch.no_grad():
        w_hat = estimator.latent(latent_weights.detach().float(), q)
        gamma = w_hat.abs().mean()
        return float(((w_hat - gamma * sign(w_hat)) ** 2).mean())


def qe_laplace(c: float) -> float:
    """Closed form of the expected QE of sin(w0 W), W ~ Laplace(0, b), c = b*w0 (derived in binbench)."""
    gamma = c / math.tanh(math.pi / (2 * c)) / (1 + c * c)
    return 2 * c * c / (1 + 4 * c * c) - gamma * gamma


def laplace_b(w: Tensor) -> float:
    w = w.detach().float().flatten()
    return float((w - w.median()).abs().mean())


def layer_paths(model: nn.Module) -> dict[str, str]:
    """module name -> readable layer path (see the module docstring) for every conv and linear layer."""
    counts: dict[tuple[str, str], int] = {}
    out: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        parent, _, last = name.rpartition(".")
        if not last.isdigit():
            out[name] = name
            continue
        kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
        counts[(parent, kind)] = counts.get((parent, kind), 0) + 1
        out[name] = f"{parent}.{kind}{counts[(parent, kind)]}" if parent else f"{kind}{counts[(parent, kind)]}"
    return out


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
        # metric keys by readable layer path; the sign memory stays keyed by module name (older checkpoints)
        paths = layer_paths(model)
        self.paths = {name: paths.get(name, name) for name, _ in self.layers}
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
                out[f"diag/{self.paths[name]}/{k}"] = v
                sums.setdefault(k, []).append(v)
        for k, vs in sums.items():
            out[f"diag/{k}"] = sum(vs) / len(vs)
        return out


def nonfinite(model: nn.Module) -> str:
    """"" when every parameter and buffer of ``model`` is finite; else one line naming the first layer (in module
    order, by its readable path) that holds a NaN or inf, the tensor and the count, and how many layers do.

    Why it is needed: a binarizer maps NaN and inf to +-1 (sign(NaN) = +1), so a non-finite latent weight or a
    quantizer's non-finite state (a learnable range after one inf input) can leave the loss finite while the network is
    no longer the one being trained. Checked before the first epoch and after every epoch (one host sync), never
    per step.
    """
    tensors = [(name, tname, t) for name, module in model.named_modules()
               for tname, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
               if t is not None and t.is_floating_point() and not isinstance(t, nn.parameter.UninitializedParameter)]
    if not tensors:
        return ""
    with torch.no_grad():
        ok = torch.stack([torch.isfinite(t).all() for _, _, t in tensors]).tolist()
    bad = [(name, tname, t) for (name, tname, t), fine in zip(tensors, ok, strict=True) if not fine]
    if not bad:
        return ""
    paths = layer_paths(model)

    def owner(name: str, tname: str) -> tuple[str, str]:
        if isinstance(model.get_submodule(name), Quantizer):  # a quantizer's state belongs to its layer
            parent, _, attr = name.rpartition(".")
            return paths.get(parent, parent), f"{attr}.{tname}"
        return paths.get(name, name) or "(model)", tname

    layers = list(dict.fromkeys(owner(n, tn)[0] for n, tn, _ in bad))
    layer, tname = owner(*bad[0][:2])
    t = bad[0][2].detach()
    more = f"; {len(layers) - 1} more layer(s) hold non-finite values" if len(layers) > 1 else ""
    return (f"non-finite values in layer {layer!r}: {tname} holds {int(t.isnan().sum())} NaN and "
            f"{int(t.isinf().sum())} inf of {t.numel()}{more}")

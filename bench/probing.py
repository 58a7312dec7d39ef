"""``bench.probe``: an estimator's forward values and surrogate gradient at chosen points."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from bench.estimator import Estimator, Progress, Quantizer, as_tensor_points, create_estimator


def probe(name: str, x: Iterable[float] | Tensor, kind: str = "weight", progress: float = 0.0,
          stage: str | None = None, seed: int = 0, **hparams: Any) -> tuple[Tensor, Tensor]:
    """Return ``(forward, grad)`` of estimator ``name`` at the points ``x``.

    ``forward`` are the binarized values (internal scaling off: +-1 for a pure sign), ``grad`` is
    d forward / d x as the estimator's backward pass defines it (the vector-Jacobian product with ones, which
    is the elementwise surrogate derivative for elementwise estimators). ``progress`` in [0, 1] is e/E for
    scheduled estimators; ``stage`` names a training stage (one of ``Estimator.stages()``). The quantizer runs in
    training mode with the random state seeded by ``seed`` and restored afterwards.

    A probe is a probe of one layer holding the points: weights are the layer's weight (the quantizer has
    their shape and the estimator derives its state from them, as ``init_latent_`` does in a model: a clipping range
    from their max |x|); activations are a layer's input with a channel dimension (1-D points become a batch of
    shape (N, 1), one channel; a tensor of 2 or more dimensions keeps its shape, channels in dimension 1), so a
    per-channel activation estimator sees the shape a layer gives it. The results have the points' shape.
    """
    est = create_estimator(name, **hparams)
    stages = est.stages()
    stage_name = stage or stages[-1].name
    index = next((i for i, s in enumerate(stages) if s.name == stage_name), 0)
    est.set_progress(Progress.at(progress, index, stage_name))
    pts = as_tensor_points(x)
    with torch.random.fork_rng(devices=[]):
        # per-layer random state (a sampled low-rank factor) and draws: both from the seed
        torch.manual_seed(seed)
        q, xin = _layer_quantizer(est, kind, pts)
        q.train()
        xin.requires_grad_(True)
        y = q(xin)
        if not y.requires_grad:  # no gradient reaches x at all (the frozen control): the surrogate is 0
            return y.detach().reshape(pts.shape), torch.zeros_like(pts)
        y.backward(torch.ones_like(y))
    return y.detach().reshape(pts.shape), xin.grad.detach().reshape(pts.shape)


def _layer_quantizer(est: Estimator, kind: str, pts: Tensor) -> tuple[Quantizer, Tensor]:
    """The quantizer a layer holding ``pts`` would have, and the points shaped as that layer hands them over."""
    if kind == "weight":
        q = est.quantizer(kind, tuple(pts.shape), internal_scale=False)
        with torch.no_grad():
            est.init_latent_(pts.clone(), q)  # a copy: an estimator that re-initialises w must not move the points
        return q, pts.clone()
    x = pts.reshape(-1, 1) if pts.dim() < 2 else pts.clone()
    return est.quantizer(kind, (int(x.shape[1]),), internal_scale=False), x

"""``bench.probe``: an estimator's forward values and surrogate gradient at chosen points."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from bench.estimator import Progress, as_tensor_points, create_estimator


def probe(name: str, x: Iterable[float] | Tensor, kind: str = "weight", progress: float = 0.0,
          stage: str | None = None, seed: int = 0, **hparams: Any) -> tuple[Tensor, Tensor]:
    """Return ``(forward, grad)`` of estimator ``name`` at the points ``x``.

    ``forward`` are the binarized values (internal scaling off: +-1 for a pure sign), ``grad`` is
    d forward / d x as the estimator's backward pass defines it (the vector-Jacobian product with ones, which
    is the elementwise surrogate derivative for elementwise estimators). ``progress`` in [0, 1] is e/E for
    scheduled estimators; ``stage`` names a training stage (one of ``Estimator.stages()``). The quantizer runs in
    training mode with the random state seeded by ``seed`` and restored afterwards.
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
        q = est.quantizer(kind, tuple(pts.shape) if kind == "weight" else None, internal_scale=False)
        q.train()
        xin = pts.clone().requires_grad_(True)
        y = q(xin)
        if not y.requires_grad:  # no gradient reaches x at all (the frozen control): the surrogate is 0
            return y.detach(), torch.zeros_like(pts)
        y.backward(torch.ones_like(y))
    return y.detach(), xin.grad.detach()

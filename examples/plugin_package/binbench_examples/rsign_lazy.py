"""RSign as ReActNet's code writes it: thresholds whose count comes from the input (``x.shape[1]``).

The lazy case of the plugin contract: ReActNet's ``LearnableBias(out_chn)`` knows its channel count when the
network is written; a plugin that does not want ``init_state``'s ``shape`` can read it from its first input, as a
paper's code would. The thresholds are an ``nn.UninitializedParameter`` until then, so the optimizer still
trains them: binbench runs one forward pass before it builds the optimizer (``bench.train.materialize_lazy``).
``bench.probe`` hands activations over with a channel dimension, as a layer does, so ``x.shape[1]`` exists there
too.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench import Estimator, register_estimator
from bench.functional import surrogate_sign

from .rsign import approx_sign_grad


@register_estimator("rsign_lazy")
class RSignLazy(Estimator):
    r"""RSign (Liu et al., ReActNet, ECCV 2020, arXiv 2003.03488), thresholds materialised from the input.

    Forward:   a_b = sign(x - beta_c),  beta_c learnable, one per channel c = 0 .. x.shape[1] - 1, initialised 0
    Backward:  dL/dx = dL/da_b max(0, 2 - 2|x - beta_c|)       (Bi-Real's ApproxSign derivative)

    Activations only. Equal to ``rsign``; only where the channel count comes from differs.
    """

    display_name = "RSign (lazy)"
    kinds = ("activation",)
    native_activation = None

    def init_state(self, q, shape) -> None:
        q.beta = nn.UninitializedParameter()

    def quantize(self, x: Tensor, q) -> Tensor:
        if isinstance(q.beta, nn.UninitializedParameter):
            q.beta.materialize((x.shape[1],), device=x.device, dtype=x.dtype)
            with torch.no_grad():
                q.beta.zero_()
        beta = q.beta.view(1, -1, *([1] * (x.dim() - 2)))
        return surrogate_sign(x - beta.to(x.dtype), approx_sign_grad)

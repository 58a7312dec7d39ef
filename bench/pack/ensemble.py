"""An ensemble is a pack too: L sampled networks of one model evaluated as one packed program.

A stochastic estimator's ensemble evaluation averages the logits of L networks, each with its own draw of the
binary weights. Run one after another, that is L forward passes of the whole model; packed, each layer binarizes
its weight L times (L draws, from the global stream, in the layer's turn) and runs one grouped convolution or
batched product for all L networks. The networks are the same as L sequential passes in distribution; the
draws come in another order (layer by layer rather than network by network), so not the same draws.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.pack.model import PackedModel


@torch.no_grad()
def sampled_logits(model: nn.Module, x: Tensor, samples: int) -> Tensor:
    """(samples, B, classes): the logits of ``samples`` sampled networks of ``model`` (in evaluation mode) on the
    batch ``x``, as one packed forward over the batch repeated ``samples`` times."""
    packed = PackedModel([model] * samples)
    packed.eval()
    out = packed(x.repeat(samples, *([1] * (x.dim() - 1))))
    return out.view(samples, x.shape[0], *out.shape[1:])

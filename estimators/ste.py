from __future__ import annotations

from torch import Tensor

from bench import Estimator, register_estimator
from bench.functional import sign_ste


@register_estimator("ste")
class SteSign(Estimator):
    r"""Straight-through estimator (BinaryConnect; Courbariaux, Bengio, David, NeurIPS 2015).

    Forward, with sign(0) = +1:

    .. math::

        x_b = \operatorname{sign}(x)

    Backward (identity):

    .. math::

        \frac{\partial L}{\partial x} = \frac{\partial L}{\partial x_b}

    Paper: https://arxiv.org/abs/1511.00363 (NeurIPS 2015, "BinaryConnect: Training Deep Neural Networks with binary
    weights during propagations").
    Code: https://github.com/MatthieuCourbariaux/BinaryConnect (the authors' Theano/Lasagne code).

    Hyperparameters:
        clip (float | None, default None): if set, latent weights are clipped to [-clip, clip] after every
            optimizer step (BinaryConnect clips to [-1, 1]: set clip=1 for it; no sourced recipe does it here).

    Paired with ApproxSign for activations at W1A1 (the common recipe).
    """

    display_name = "STE"
    reference = True  # the estimator every other is measured against

    native_activation = "approx_sign"
    sample_wise = True  # sign with an identity/clip gradient: element by element
    published = None  # no sourced recipe: BinaryConnect's clip and optimiser are not in a source binbench could check

    def __init__(self, clip: float | None = None):
        super().__init__()
        self.clip = clip

    @property
    def has_constraint(self) -> bool:  # type: ignore[override]
        return self.clip is not None

    def quantize(self, x: Tensor, q) -> Tensor:
        return sign_ste(x)

    def constrain_(self, w: Tensor, q) -> None:
        if self.clip is not None:
            w.clamp_(-self.clip, self.clip)

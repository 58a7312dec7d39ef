from __future__ import annotations

import torch
from torch import Tensor

from bench import Estimator, Stage, register_estimator
from bench.functional import sign_ste
from bench.recipes import Rule


@register_estimator("biper")
class BiPer(Estimator):
    r"""Binary periodic functions (Vargas, Correa, Hinojosa, Arguello, CVPR 2024, arXiv 2404.01278).

    Forward: a square wave of period :math:`2 \pi / \omega_0` (eq. 8; ``w0`` is :math:`\omega_0`):

    .. math::

        w_b = \operatorname{sign}(\sin(\omega_0 w))

    Backward (eqs. 9-10: identity straight-through through the outer sign, autograd through the sine):

    .. math::

        \frac{\partial w_b}{\partial w} = \omega_0 \cos(\omega_0 w)

    Stages: 1 "real": the conv uses :math:`\hat{w} = \sin(\omega_0 w)` directly (real weights, binary activations);
    2 "binary": the square wave, starting from stage 1's weights.

    Loss term [CODE != PAPER: in the official code only; tau = 0 here by default, the published recipe sets 0.037
    (stage 1) and 0.0468 (stage 2)]:

    .. math::

        L = L_{CE} + \sum_{layers} \tau \operatorname{mean}(\sin^2(\omega_0 w))

    Scaling: learnable per-channel alpha ~ U(0, 1) on the conv output (official code; the paper's eq. 3 describes
    one combined gamma). Activations: ApproxSign on the per-sample std-normalised input (ReCU trick), in its own
    recipe.

    Paper: https://arxiv.org/abs/2404.01278 (CVPR 2024, "BiPer: Binary Neural Networks using a Periodic Function").
    Code: https://github.com/edmav4/BiPer (``cifar10/modules/binarized_modules.py``).

    Hyperparameters:
        w0 (float, default 20.0): frequency (README/run scripts and the paper's ablation; argparse says 30).
        tau (float, default 0.0): weight of the sin^2 penalty.
        two_stage (bool, default True): train stage 1 (real sine weights) before the square wave.
        stage1_fraction (float, default 2/3): share of the epochs in stage 1 (600 + 300 officially).
    The official recipe hands the *best* stage-1 checkpoint to stage 2 (stage_handoff = best in the
    published recipe; the common recipe hands over the last weights, to select nothing on the test set).
    QE of w_hat = sin(w0 w): for Laplace(0, b) latents it peaks at 0.1028 for b*w0 = 0.955
    (bench.diagnostics.qe_laplace).
    """

    display_name = "BiPer"

    kinds = ("weight",)
    native_scaling = "alpha"
    native_activation = "approx_sign"
    native_activation_hparams = {"std_normalize": True}
    # the official scripts are for ResNet-18 (CIFAR-10 and ImageNet, W1A1); the ResNet-20 and VGG-small configs
    # are Google-Drive links in the official README, so those settings, W1A32 and other datasets are extrapolated
    published = [
        Rule({}, {"amp": False, "channels_last": False, "schedule_unit": "epoch"},
             "edmav4/BiPer @0c07fdd: float32 (cifar10/utils/options.py:61 --type torch.cuda.FloatTensor, "
             "cifar10/main.py:117 model.type, no amp anywhere); warm-up and cosine per epoch (cifar10/main.py:157 "
             "CosineAnnealingLR, :189-191 lr (e+1)/5 for e < 5, :206-207 stepped once per epoch; "
             "main_stage2.py:194,235-237,252-253; imagenet/main.py:207,239-241,256-257)"),
        Rule({}, {"optimizer": "sgd", "momentum": 0.9, "lr_schedule": "cosine", "warmup_epochs": 5,
                  "stage_handoff": "best", "estimator_hparams": {"w0": 20.0}},
             "edmav4/BiPer cifar10/run_stg1.sh:11-12,15 (cos, --warm_up, freq 20), cifar10/run_stg2.sh:10-11,14 "
             "(cos, --warm_up, stage 1 model_best.pth.tar), cifar10/utils/options.py:82 momentum",
             published_for=({"dataset": "cifar10", "model": "resnet18", "a_bits": 1},
                            {"dataset": "imagenet", "a_bits": 1})),
        Rule({}, {"lr": 0.021, "weight_decay": 0.0016,  # stage 1's (the config's top level)
                  "stages": [{"lr": 0.021, "weight_decay": 0.0016, "estimator": {"tau": 0.037}},
                             {"lr": 0.0037, "weight_decay": 0.00016, "estimator": {"tau": 0.0468}}]},
             "edmav4/BiPer cifar10/run_stg1.sh:8,13-14 (lr 0.021, wd 0.0016, tau 0.037), cifar10/run_stg2.sh:7,12-13 "
             "(lr 0.0037, wd 0.00016, tau 0.0468)",
             published_for=({"dataset": "cifar10", "model": "resnet18", "a_bits": 1},)),
        Rule({"dataset": "cifar*"}, {"epochs": 900, "batch_size": 256},
             "edmav4/BiPer cifar10/run_stg1.sh:7,9 and cifar10/run_stg2.sh:6,8 (600 + 300 epochs, batch 256)",
             published_for=({"dataset": "cifar10", "model": "resnet18", "a_bits": 1},)),
        Rule({"dataset": "imagenet"},
             {"epochs": 300, "batch_size": 512, "lr": 0.1, "weight_decay": 1e-4,
              "stages": [{"lr": 0.1, "weight_decay": 1e-4, "estimator": {"tau": 0.0}},
                         {"lr": 0.01, "weight_decay": 1e-4, "warmup_epochs": 0, "estimator": {"tau": 0.0}}]},
             "edmav4/BiPer imagenet/run_stg1.sh:6-13 (200 ep, lr 0.1, wd 1e-4, b 512, --warm_up), imagenet/run_stg2.sh"
             ":6-11 (100 ep, lr 0.01, b 512, wd 1e-4, no --warm_up); imagenet/main.py: the sin^2 term is commented out",
             published_for=({"dataset": "imagenet", "a_bits": 1},)),
    ]

    def __init__(self, w0: float = 20.0, tau: float = 0.0, two_stage: bool = True, stage1_fraction: float = 2 / 3):
        super().__init__()
        self.w0, self.tau, self.two_stage, self.stage1_fraction = w0, tau, two_stage, stage1_fraction

    def stages(self) -> list[Stage]:
        if not self.two_stage:
            return [Stage("binary", 1.0)]
        return [Stage("real", self.stage1_fraction), Stage("binary", 1.0 - self.stage1_fraction)]

    def latent(self, w: Tensor, q=None) -> Tensor:
        return torch.sin(self.w0 * w)

    def quantize(self, x: Tensor, q) -> Tensor:
        w_hat = torch.sin(self.w0 * x)
        if self.tau:
            q._sin2 = w_hat.square().mean()  # reused by extra_loss: no second pass over the weights
        if self.progress.stage_name == "real":
            return w_hat
        return sign_ste(w_hat)

    def extra_loss(self, quantizers) -> Tensor | None:
        if not self.tau or not quantizers:
            return None
        terms = [q.__dict__.pop("_sin2", None) for q in quantizers]
        terms = [t for t in terms if t is not None]
        return self.tau * torch.stack(terms).sum() if terms else None

    @classmethod
    def report_figures(cls, runs) -> dict:
        """QE against w0 (the paper's eq. 15-18): measured QE of each run at its w0 over the analytic curve for
        Laplace latents of the runs' fitted scale b, per network and bit width."""
        if "diag/laplace_b" not in runs or not runs["diag/laplace_b"].notna().any():
            return {}
        import matplotlib.pyplot as plt
        import numpy as np

        from bench.diagnostics import qe_laplace

        w0 = runs["hparams"].map(lambda h: (h or {}).get("w0", cls.hparam_defaults()["w0"])).astype(float)
        fig, ax = plt.subplots(figsize=(5, 3.4))
        w0s = np.logspace(-0.5, 2.5, 300)
        for (model, bits), gb in runs.groupby(["model", "bits"]):
            b = gb["diag/laplace_b"].mean()
            line, = ax.plot(w0s, [qe_laplace(b * w) for w in w0s], label=f"analytic, b = {b:.3g} ({model} {bits})")
            ax.scatter(w0[gb.index], gb["diag/qe"], color=line.get_color(), zorder=3,
                       label=f"measured ({model} {bits})")
        ax.set_xscale("log")
        ax.set_xlabel("w0")
        ax.set_ylabel("QE")
        ax.set_title("BiPer quantization error vs w0 (Laplace latents, eq. 15-18)")
        ax.legend(fontsize=6)
        return {"biper_qe_vs_w0": fig}

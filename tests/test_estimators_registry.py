"""Every registered estimator, built-in or plugin, without naming it: the registry drives these tests."""

from __future__ import annotations

import pytest
import torch

import bench
from bench import list_estimators
from bench.estimator import get_estimator_class
from bench.spec import resolve
from bench.train import train

from .conftest import TINY

POINTS = torch.linspace(-2.0, 2.0, 41)


def _kinds():
    return [(n, k) for n in list_estimators() for k in get_estimator_class(n).kinds]


@pytest.mark.parametrize(("name", "kind"), _kinds())
def test_forward_is_binary_and_gradient_finite(name, kind):
    fwd, grad = bench.probe(name, POINTS, kind=kind, progress=0.5)
    scale = fwd.abs().max()
    assert scale > 0
    assert torch.allclose(fwd.abs(), scale.expand_as(fwd)), f"{name}: forward takes only +-scale values"
    assert torch.isfinite(grad).all(), f"{name}: gradient is finite"
    if get_estimator_class(name).role == "control":
        assert grad.abs().sum() == 0, f"{name}: a control passes no gradient"
    else:
        assert grad.abs().sum() > 0, f"{name}: some gradient flows"


@pytest.mark.parametrize("name", list_estimators())
def test_sign_of_zero_is_plus_one(name):
    cls = get_estimator_class(name)
    if cls.stochastic:
        pytest.skip(f"{name} binarizes a random sample around x: the value at x = 0 is the noise's sign")
    kind = "activation" if "activation" in cls.kinds else "weight"
    fwd, _ = bench.probe(name, [-0.5, 0.0, 0.5], kind=kind, progress=0.5, **_elementwise(name))
    assert fwd[1] > 0


def _elementwise(name):
    # estimators that standardise per channel are probed on the raw values here
    return {"standardize": False} if "standardize" in get_estimator_class(name).hparam_defaults() else {}


@pytest.mark.parametrize("name", [n for n in list_estimators() if "weight" in get_estimator_class(n).kinds])
def test_one_digits_epoch_learns_above_chance(name):
    res = train(resolve({**TINY, "estimator": name, "epochs": 2, "seed": 0, "diagnostics": False,
                       "eval_modes": [get_estimator_class(name).eval_modes[0]]}))
    assert res.status == "finished"
    assert res.top1 > 30.0, f"{name}: {res.top1:.1f}% after 2 digits epochs (chance is 10%)"


@pytest.mark.parametrize("name", [n for n in list_estimators() if "activation" in get_estimator_class(n).kinds])
def test_digits_w1a1_with_it_as_activation_estimator(name):
    """Every activation estimator binarizes the inputs of real layers (per-channel state sized by each layer,
    whether made in init_state or from the input's x.shape[1]) and every parameter it holds is trained."""
    from bench.estimator import estimator_quantizers, reference_estimator

    cfg = {**TINY, "estimator": reference_estimator(), "activation_estimator": name, "a_bits": 1, "epochs": 2,
           "seed": 0, "diagnostics": False, "model_args": {"hidden": [64, 48], "binarize_first_last": True}}
    hooks = []
    res = train(resolve(cfg), stage_hooks=[lambda when, i, model: hooks.append(model)])
    assert res.status == "finished"
    if get_estimator_class(name).role != "control":
        assert res.top1 > 30.0, f"{name}: {res.top1:.1f}% after 2 digits epochs (chance is 10%)"
    model = hooks[-1]
    for q in estimator_quantizers(model, "activation"):
        for pname, p in q.named_parameters():
            assert not isinstance(p, torch.nn.parameter.UninitializedParameter), f"{name}: {pname} never materialised"
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: {pname} got no gradient"


@pytest.mark.parametrize("name", [n for n in list_estimators() if "weight" in get_estimator_class(n).kinds])
@pytest.mark.parametrize("recipe", ["common", "published"])
def test_recipes_resolve(name, recipe):
    from bench.recipes import resolve_recipe
    from bench.spec import resolve

    for model, ds, a in [("resnet20", "cifar10", 1), ("resnet18", "cifar10", 32), ("mlp", "mnist", 1)]:
        cfg = resolve({"estimator": name, "recipe": recipe, "model": model, "dataset": ds, "a_bits": a}).config
        # what the recipe sets for this setting is what the run gets (resolve itself checks ranges and names)
        want = resolve_recipe(name, recipe, {"model": model, "dataset": ds, "w_bits": 1, "a_bits": a})
        plain = ("lr", "optimizer", "momentum", "weight_decay", "epochs", "lr_schedule", "warmup_epochs")
        assert {k: getattr(cfg, k) for k in plain if k in want} == {k: want[k] for k in plain if k in want}
        if a == 32:
            assert cfg.activation_estimator is None


@pytest.fixture(scope="module")
def cifar_format(tmp_path_factory):
    from bench.benchmark import write_cifar_format

    return str(write_cifar_format(tmp_path_factory.mktemp("cifar"), 40, 16))


@pytest.mark.parametrize("name", [n for n in list_estimators() if "weight" in get_estimator_class(n).kinds])
def test_published_recipe_starts_on_resnet20_cifar_format(name, cifar_format):
    # the paper's recipe, its epochs cut to one per stage and one batch per epoch
    n_stages = len(bench.create_estimator(name).stages())
    res = train(resolve({"estimator": name, "recipe": "published", "model": "resnet20", "dataset": "cifar10",
                 "data_root": cifar_format, "epochs": n_stages, "batch_size": 8, "limit_train_batches": 1,
                 "eval_batch_size": 16, "threads": 1, "diagnostics": False,
                 "estimator_hparams": {"samples": 2} if name == "vispa" else {}}))
    assert res.status == "finished" and len(res.history) == n_stages
    from bench.recipes import has_published_recipe

    # an estimator without a published recipe runs the common one (alpha scaling)
    expected = get_estimator_class(name).native_scaling if has_published_recipe(name) else "alpha"
    assert res.config["scaling"] == expected

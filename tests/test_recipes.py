"""Recipes: every published rule names its source, extrapolated values say so, and the published values match
the official code where they had drifted from it."""

from __future__ import annotations

import re

import pytest

from bench.errors import ConfigError
from bench.estimator import Estimator, get_estimator_class, list_estimators
from bench.recipes import (
    COMMON,
    NESTED,
    Rule,
    has_published_recipe,
    published_rules,
    recipe_provenance,
    resolve_recipe,
)
from bench.spec import resolve

WITH_PUBLISHED = ["biper", "irnet", "recu", "reste", "vispa"]
WITHOUT_PUBLISHED = ["approx_sign", "clipped_ste", "dsq", "frozen", "ste"]
#: a citation names a file and line ("trainer.py:130", "README.md:56-68") or a paper/sheet section or table
#: what a rule's source must name (README "Published recipes"): a file:line, or a paper's section, table or equation
LOCATOR = re.compile(r"\w\.\w+:\d+|\b(?:sec(?:tion)?\.?|§)\s*\d|\btable\s*\d|\beq(?:uation)?s?\.?\s*\(?\d", re.I)


def ctx(model: str = "resnet20", dataset: str = "cifar10", a_bits: int = 1, w_bits: int = 1) -> dict:
    return {"model": model, "dataset": dataset, "w_bits": w_bits, "a_bits": a_bits}


def prov(estimator: str, **kw) -> dict:
    return {p.key: p for p in recipe_provenance(estimator, ctx(**kw))}


def test_the_expected_estimators_have_and_lack_published_recipes():
    names = set(list_estimators())
    assert set(WITH_PUBLISHED) | set(WITHOUT_PUBLISHED) <= names
    assert [n for n in WITH_PUBLISHED if not has_published_recipe(n)] == []
    assert [n for n in WITHOUT_PUBLISHED if has_published_recipe(n)] == []


@pytest.mark.parametrize("name", list_estimators())
def test_every_published_rule_names_its_source(name):
    rules = published_rules(get_estimator_class(name))
    if rules is None:
        return
    assert rules, f"{name}: an empty published list should be None"
    for i, rule in enumerate(rules):
        assert isinstance(rule, Rule), f"{name} rule {i} is not a Rule"
        assert rule.source.strip(), f"{name} rule {i} has no source"
        assert LOCATOR.search(rule.source), f"{name} rule {i}: {rule.source!r} names no file:line or section/table"


@pytest.mark.parametrize("name", WITH_PUBLISHED)
@pytest.mark.parametrize("setting", [ctx(), ctx("resnet18"), ctx("vgg_small"), ctx("resnet18", a_bits=32),
                                     ctx("resnet18", "imagenet"), ctx("mlp", "mnist"), ctx("resnet18", "cifar100")])
def test_provenance_covers_every_recipe_value(name, setting):
    values = resolve_recipe(name, "published", setting)
    flat = set()
    for k, v in values.items():
        if k in NESTED and isinstance(v, dict) and v:
            flat |= {f"{k}.{sub}" for sub in v}
        else:
            flat.add(k)
    got = {p.key: p for p in recipe_provenance(name, setting)}
    assert set(got) == flat
    for key, p in got.items():
        top, _, sub = key.partition(".")
        assert p.value == (values[top][sub] if sub else values[top])
        assert p.source.strip()


def test_two_tuple_and_unsourced_rules_are_config_errors(monkeypatch):
    class Legacy(Estimator):
        published = [({}, {"lr": 0.1})]

    with pytest.raises(ConfigError, match="without a source"):
        published_rules(Legacy)

    class Unsourced(Estimator):
        published = [Rule({}, {"lr": 0.1}, "  ")]

    with pytest.raises(ConfigError, match="empty source"):
        published_rules(Unsourced)

    class Empty(Estimator):
        published: list = []

    with pytest.raises(ConfigError, match="published = None"):
        published_rules(Empty)
    # a registered estimator with an unsourced rule stops the run's resolution, with its name in the message
    monkeypatch.setattr(get_estimator_class("recu"), "published", [({"dataset": "cifar*"}, {"epochs": 1})])
    with pytest.raises(ConfigError, match="'recu'.*without a source"):
        resolve({"estimator": "recu", "recipe": "published", "model": "resnet20", "dataset": "cifar10"})


def test_rule_checks_its_match_keys_and_source_type():
    with pytest.raises(ConfigError, match="unknown key"):
        Rule({"arch": "resnet20"}, {"lr": 0.1}, "x.py:1")
    with pytest.raises(ConfigError, match="unknown key"):
        Rule({}, {"lr": 0.1}, "x.py:1", published_for=({"net": "vgg"},))
    with pytest.raises(ConfigError, match="source must be a string"):
        Rule({}, {"lr": 0.1}, None)  # type: ignore[arg-type]
    assert Rule({}, {}, "x.py:1", published_for=[{"model": "mlp"}]).published_for == ({"model": "mlp"},)


@pytest.mark.parametrize("name", WITHOUT_PUBLISHED)
def test_no_published_recipe_resolves_to_the_common_one(name):
    for setting in (ctx(), ctx("resnet18", "imagenet", a_bits=32), ctx("mlp", "digits")):
        assert resolve_recipe(name, "published", setting) == resolve_recipe(name, "common", setting)
        assert {p.source for p in recipe_provenance(name, setting)} == {COMMON[0].source}
    if "weight" in get_estimator_class(name).kinds:
        cfg = resolve({"estimator": name, "recipe": "published", "model": "resnet20", "dataset": "cifar10"}).config
        assert (cfg.scaling, cfg.optimizer, cfg.lr, cfg.warmup_epochs) == ("alpha", "sgd", 0.1, 5)


def test_ste_published_is_not_the_unsourced_adam_recipe():
    cfg = resolve({"estimator": "ste", "recipe": "published", "model": "resnet20", "dataset": "cifar10"}).config
    assert cfg.optimizer == "sgd" and cfg.estimator_hparams["clip"] is None


def test_irnet_resnet20_w1a32_uses_the_1w32a_trainer():
    cfg = resolve({"estimator": "irnet", "recipe": "published", "model": "resnet20", "dataset": "cifar10",
                          "a_bits": 32}).config
    assert cfg.estimator_hparams["t_min"] == 0.1 and cfg.warmup_epochs == 0
    assert (cfg.lr, cfg.weight_decay, cfg.epochs, cfg.batch_size) == (0.1, 1e-4, 400, 128)
    p = prov("irnet", a_bits=32)
    assert "1w32a/trainer.py:129" in p["estimator_hparams.t_min"].source
    assert not any(x.extrapolated for x in p.values())
    w1a1 = resolve({"estimator": "irnet", "recipe": "published", "model": "resnet20", "dataset": "cifar10"}).config
    assert w1a1.estimator_hparams["t_min"] == 1e-3


@pytest.mark.parametrize("model", ["resnet20", "resnet18", "vgg_small"])
@pytest.mark.parametrize("a_bits", [1, 32])
def test_irnet_has_no_warmup_on_cifar(model, a_bits):
    spec = resolve({"estimator": "irnet", "recipe": "published", "model": model, "dataset": "cifar10",
                    "a_bits": a_bits})
    assert spec.config.warmup_epochs == 0
    assert spec.stages[0].warmup_epochs == 0


def test_irnet_vgg_small_and_imagenet():
    cfg = resolve({"estimator": "irnet", "recipe": "published", "model": "vgg_small", "dataset": "cifar10"}).config
    assert (cfg.lr, cfg.epochs, cfg.estimator_hparams["t_min"]) == (0.007, 300, 0.1)
    im = resolve({"estimator": "irnet", "recipe": "published", "model": "resnet18", "dataset": "imagenet"}).config
    assert im.lr_schedule == "step" and im.optimizer == "sgd" and im.epochs == 100
    assert resolve_recipe("irnet", "published", ctx("resnet18", "imagenet", a_bits=32))["weight_decay"] == 1e-4


def test_extrapolated_values_are_marked():
    # IR-Net has no ResNet-18 CIFAR trainer: its values come from the ResNet-20 one
    assert prov("irnet", model="resnet18")["lr"].extrapolated
    assert not prov("irnet", model="resnet20")["lr"].extrapolated
    assert prov("irnet", model="vgg_small", a_bits=32)["lr"].extrapolated
    # BiPer's scripts are ResNet-18 CIFAR-10 W1A1 only
    r18 = prov("biper", model="resnet18")
    assert not any(r18[k].extrapolated for k in ("epochs", "stages", "lr", "warmup_epochs"))
    for kw in ({"model": "resnet20"}, {"model": "vgg_small"}, {"model": "resnet18", "a_bits": 32}):
        p = prov("biper", **kw)
        assert p["epochs"].extrapolated and p["stages"].extrapolated, kw
    # the method's native scaling is its own, never extrapolated; common values are not published ones
    assert not prov("biper", model="resnet20")["scaling"].extrapolated
    assert prov("irnet")["stage_handoff"].source == COMMON[0].source


def test_recu_imagenet_recipe():
    cfg = resolve({"estimator": "recu", "recipe": "published", "model": "resnet18", "dataset": "imagenet"}).config
    assert (cfg.weight_decay, cfg.batch_size, cfg.epochs, cfg.lr, cfg.warmup_epochs) == (1e-4, 512, 200, 0.1, 5)
    assert "imagenet/run.sh" in prov("recu", model="resnet18", dataset="imagenet")["weight_decay"].source


def test_reste_imagenet_has_no_warmup_cifar_has():
    im = resolve({"estimator": "reste", "recipe": "published", "model": "resnet18", "dataset": "imagenet"}).config
    assert (im.warmup_epochs, im.epochs, im.batch_size) == (0, 250, 750)
    c = resolve({"estimator": "reste", "recipe": "published", "model": "resnet18", "dataset": "cifar10"}).config
    assert (c.warmup_epochs, c.epochs, c.batch_size) == (5, 2000, 96)


def test_biper_imagenet_stage2_has_no_warmup():
    plan = resolve({"estimator": "biper", "recipe": "published", "model": "resnet18", "dataset": "imagenet"}).stages
    assert [(p.epochs, p.lr, p.warmup_epochs) for p in plan] == [(200, 0.1, 5), (100, 0.01, 0)]
    cifar = resolve({"estimator": "biper", "recipe": "published", "model": "resnet18", "dataset": "cifar10"})
    assert [p.warmup_epochs for p in cifar.stages] == [5, 5] and cifar.config.lr == 0.021


def test_vispa_published_initialises_m_as_the_official_code():
    cfg = resolve({"estimator": "vispa", "recipe": "published", "model": "resnet18", "dataset": "cifar10"}).config
    assert cfg.estimator_hparams["m_init"] == "xavier" and cfg.estimator_hparams["normalize"] == "forward"
    assert "sdp_wo_entropy.py:58-59" in prov("vispa", model="resnet18")["estimator_hparams.m_init"].source
    assert (cfg.lr, cfg.weight_decay, cfg.estimator_hparams["rank"], cfg.epochs) == (0.5, 1e-5, 4, 600)
    a32 = resolve({"estimator": "vispa", "recipe": "published", "model": "vgg16", "dataset": "cifar100",
                          "a_bits": 32}).config
    assert (a32.lr, a32.weight_decay, a32.estimator_hparams["rank"], a32.epochs) == (0.1, 5e-4, 8, 500)
    assert not any(p.extrapolated for p in prov("vispa", model="vgg16", dataset="cifar100", a_bits=32).values())
    assert prov("vispa", model="resnet20")["epochs"].extrapolated  # VISPA has no ResNet-20 run


def test_vispa_imagenet_lr_is_the_code_scaled_one():
    cfg = resolve({"estimator": "vispa", "recipe": "published", "model": "resnet18", "dataset": "imagenet"}).config
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.estimator_hparams["rank"]) == (2.0, 1024, 200, 2)
    a32 = resolve_recipe("vispa", "published", ctx("resnet18", "imagenet", a_bits=32))
    assert (a32["lr"], a32["weight_decay"], a32["estimator_hparams"]["rank"]) == (0.4, 5e-5, 4)

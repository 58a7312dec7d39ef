"""Training recipes: ``common`` (one recipe every estimator shares, for a fair comparison) and ``published``
(each estimator's own paper/code recipe).

A recipe is a list of rules ``(match, values)``: ``values`` apply when every ``match`` key equals (or, for
strings, wildcard-matches) the run's model, dataset, w_bits and a_bits. Later rules win. Estimators declare
their published rules as the class attribute ``published``; the common rules live here.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from bench.errors import ConfigError

Rule = tuple[dict[str, Any], dict[str, Any]]
RECIPES = ("common", "published")

#: The common recipe (sheet section 10): everything fixed but the weight estimator.
COMMON: list[Rule] = [
    ({}, {
        "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "lr_schedule": "cosine",
        "warmup_epochs": 0, "scaling": "alpha", "activation_estimator": "approx_sign", "activation_hparams": {},
        "stage_handoff": "last",
    }),
    ({"dataset": "digits"}, {"weight_decay": 1e-4}),
    ({"dataset": "cifar*"}, {"warmup_epochs": 5}),
    ({"dataset": "*imagenet"}, {"warmup_epochs": 5, "weight_decay": 1e-4}),
]


def _matches(match: dict[str, Any], ctx: dict[str, Any]) -> bool:
    for key, want in match.items():
        have = ctx.get(key)
        if isinstance(want, str) and isinstance(have, str):
            if not fnmatch.fnmatchcase(have, want):
                return False
        elif have != want:
            return False
    return True


def apply_rules(rules: list[Rule], ctx: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for match, values in rules:
        if _matches(match, ctx):
            for k, v in values.items():
                if isinstance(v, dict) and isinstance(out.get(k), dict):
                    out[k] = {**out[k], **v}
                else:
                    out[k] = v
    return out


def resolve_recipe(estimator: str, recipe: str, ctx: dict[str, Any]) -> dict[str, Any]:
    """The values a recipe sets for this estimator in this context (model, dataset, w_bits, a_bits)."""
    from bench.estimator import get_estimator_class

    cls = get_estimator_class(estimator)
    if recipe == "common":
        return apply_rules(COMMON, ctx)
    if recipe == "published":
        rules = getattr(cls, "published", None) or []
        base = {"scaling": "native", "activation_estimator": cls.native_activation or estimator,
                "activation_hparams": dict(cls.native_activation_hparams)}
        return {**apply_rules(COMMON, ctx), **base, **apply_rules(rules, ctx)}
    raise ConfigError(f"unknown recipe {recipe!r}; valid: {', '.join(RECIPES)}")


def recipe_table(estimator: str) -> dict[str, list[Rule]]:
    """The raw rules of both recipes (for ``binbench show estimator``)."""
    from bench.estimator import get_estimator_class

    cls = get_estimator_class(estimator)
    return {"common": COMMON, "published": list(getattr(cls, "published", None) or [])}

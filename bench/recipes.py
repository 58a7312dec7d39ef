"""Training recipes: ``common`` (one recipe every estimator shares, for a fair comparison) and ``published``
(each estimator's own paper/code recipe).

A recipe is a list of :class:`Rule`: a rule's ``values`` apply when every key of its ``match`` equals (or, for
strings, wildcard-matches) the run's model, dataset, w_bits and a_bits. Later rules win; dict values (estimator
hyperparameters, model arguments) merge key by key. Every rule names its ``source``: the repository file and
line, or the paper section and table, its values come from. A rule whose values the source gives for another
setting (another model, dataset or bit width) says so: ``extrapolated=True`` everywhere it matches, or
``published_for`` lists the settings the source covers and the rule counts as extrapolated outside them.

Estimators declare their published rules as the class attribute ``published`` (None: the method has no
published recipe, and ``--recipe published`` runs the common one); the common rules live here.
:func:`recipe_provenance` says, for one run, which value came from which source.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from bench.errors import ConfigError
from bench.estimator import COMMON_ACTIVATION, get_estimator_class, native_activation_of
from bench.words import RECIPES  # noqa: E402,F401 - one definition, read without torch by the CLI

#: COMMON_ACTIVATION (``bench.estimator``), an estimator's ``native_activation`` and the common recipe's
#: ``activation_estimator``, means "the registered estimator that declares ``common_activation``"; resolved to its
#: name when a run is resolved
#: the run properties a rule can match on
MATCH_KEYS = ("model", "dataset", "w_bits", "a_bits")
#: config keys whose dict values merge key by key across rules
NESTED = ("estimator_hparams", "activation_hparams", "model_args")
NO_PUBLISHED = "the estimator declares no published recipe (published = None): --recipe published runs the common one"


def _matches(match: Mapping[str, Any], ctx: Mapping[str, Any]) -> bool:
    for key, want in match.items():
        have = ctx.get(key)
        if isinstance(want, str) and isinstance(have, str):
            if not fnmatch.fnmatchcase(have, want):
                return False
        elif have != want:
            return False
    return True


def describe_match(match: Mapping[str, Any]) -> str:
    """'dataset=cifar*, model=resnet20', or 'always' for an empty match."""
    return ", ".join(f"{k}={v}" for k, v in match.items()) or "always"


@dataclass(frozen=True)
class Rule:
    """One recipe rule: ``values`` apply to the runs that fit ``match``; ``source`` says where they come from.

    ``extrapolated``: the source gives these values for another setting than any this rule matches.
    ``published_for``: the settings (match dicts) the source gives the values for; in a matching run outside
    all of them the values count as extrapolated. None: the source covers every setting the rule matches.
    """

    match: Mapping[str, Any]
    values: Mapping[str, Any]
    source: str
    extrapolated: bool = False
    published_for: tuple[Mapping[str, Any], ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.match, Mapping) or not isinstance(self.values, Mapping):
            raise ConfigError(f"a recipe rule needs a match dict and a values dict, got {self.match!r}, "
                              f"{self.values!r}")
        for where in (self.match, *(self.published_for or ())):
            bad = set(where) - set(MATCH_KEYS)
            if bad:
                raise ConfigError(f"recipe rule matches on unknown key(s) {sorted(bad)}; valid: "
                                  f"{', '.join(MATCH_KEYS)}")
        if not isinstance(self.source, str):
            raise ConfigError(f"recipe rule {describe_match(self.match)}: source must be a string, got {self.source!r}")
        if self.published_for is not None and not isinstance(self.published_for, tuple):
            object.__setattr__(self, "published_for", tuple(self.published_for))

    def applies(self, ctx: Mapping[str, Any]) -> bool:
        return _matches(self.match, ctx)

    def extrapolated_in(self, ctx: Mapping[str, Any]) -> bool:
        """True when the values are not the source's own for this run's setting."""
        if self.extrapolated:
            return True
        return self.published_for is not None and not any(_matches(p, ctx) for p in self.published_for)

    def scope(self) -> str:
        """Where the source gives these values, in words (for ``binbench show estimator``)."""
        if self.extrapolated:
            return "extrapolated: the source gives these values for another setting"
        if self.published_for is None:
            return ""
        return "published for " + "; ".join(describe_match(p) for p in self.published_for) + "; extrapolated elsewhere"

    def to_dict(self) -> dict[str, Any]:
        return {"match": dict(self.match), "values": dict(self.values), "source": self.source,
                "extrapolated": self.extrapolated,
                "published_for": [dict(p) for p in self.published_for] if self.published_for is not None else None}


class Provenance(NamedTuple):
    """Where one resolved recipe value comes from; nested values are keyed ``estimator_hparams.t_min``."""

    key: str
    value: Any
    source: str
    extrapolated: bool


_COMMON_SOURCE = "binbench common recipe (a synthesis for a fair comparison: only the weight estimator varies)"

#: The common recipe: everything fixed but the weight estimator.
COMMON: list[Rule] = [
    Rule({}, {
        "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "lr_schedule": "cosine",
        "warmup_epochs": 0, "scaling": "alpha", "activation_estimator": COMMON_ACTIVATION, "activation_hparams": {},
        "stage_handoff": "last", "schedule_unit": "iteration", "amp": True, "channels_last": True,
    }, _COMMON_SOURCE),  # amp/channels_last: bf16 and channels-last on CUDA for speed (nothing on a CPU)
    Rule({"dataset": "digits"}, {"weight_decay": 1e-4}, _COMMON_SOURCE),
    Rule({"dataset": "cifar*"}, {"warmup_epochs": 5}, _COMMON_SOURCE),
    Rule({"dataset": "*imagenet"}, {"warmup_epochs": 5, "weight_decay": 1e-4}, _COMMON_SOURCE),
]


def published_rules(cls: type) -> list[Rule] | None:
    """An estimator class's published rules, checked; None when it has no published recipe.

    Every rule must be a :class:`Rule` with a non-empty source: a published value nobody can trace is not
    published. Anything else is a ConfigError that names the estimator and the rule.
    """
    name = getattr(cls, "name", cls.__name__)
    rules = getattr(cls, "published", None)
    if rules is None:
        return None
    if isinstance(rules, (str, bytes, Mapping)) or not isinstance(rules, Sequence):
        raise ConfigError(f"estimator {name!r}: published must be a list of bench.recipes.Rule or None, "
                          f"got {type(rules).__name__}")
    if not rules:
        raise ConfigError(f"estimator {name!r}: published is an empty list; set published = None when the method "
                          "has no published recipe")
    out = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, Rule):
            what = "a (match, values) tuple" if isinstance(rule, tuple) else type(rule).__name__
            raise ConfigError(f"estimator {name!r}: published rule {i} is {what} without a source; write "
                              "Rule(match, values, source='repo/file.py:LINE or paper section/table')")
        if not rule.source.strip():
            raise ConfigError(f"estimator {name!r}: published rule {i} ({describe_match(rule.match)}) has an empty "
                              "source; every published value must cite where it comes from")
        out.append(rule)
    return out


def has_published_recipe(estimator: str) -> bool:
    return published_rules(get_estimator_class(estimator)) is not None


def _native_rule(cls: type, estimator: str) -> Rule:
    """What every published recipe starts from: the method's own scaling and activation estimator."""
    act = native_activation_of(estimator)
    return Rule({}, {"scaling": "native", "activation_estimator": act,
                     "activation_hparams": dict(cls.native_activation_hparams)},
                f"{cls.__module__}.{cls.__qualname__}: native_scaling={cls.native_scaling!r}, native_activation="
                f"{act!r} (the method's own code, as its docstring cites)")


def recipe_rules(estimator: str, recipe: str) -> list[Rule]:
    """The rules a recipe applies for this estimator, in order (common first, then the published ones)."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; valid: {', '.join(RECIPES)}")
    cls = get_estimator_class(estimator)
    if recipe == "common":
        return list(COMMON)
    rules = published_rules(cls)
    if rules is None:
        return list(COMMON)  # no published recipe: the common one, labelled as such by its sources
    return [*COMMON, _native_rule(cls, estimator), *rules]


def _apply(rules: Sequence[Rule], ctx: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Provenance]]:
    out: dict[str, Any] = {}
    prov: dict[str, Provenance] = {}
    for rule in rules:
        if not rule.applies(ctx):
            continue
        ext = rule.extrapolated_in(ctx)
        for k, v in rule.values.items():
            if isinstance(v, Mapping):
                if not isinstance(out.get(k), dict):
                    prov = {p: e for p, e in prov.items() if not p.startswith(f"{k}.")}
                    out[k] = {}
                out[k] = {**out[k], **v}
                if v:
                    prov.pop(k, None)
                    for sub, sv in v.items():
                        prov[f"{k}.{sub}"] = Provenance(f"{k}.{sub}", sv, rule.source, ext)
                elif not any(p.startswith(f"{k}.") for p in prov):
                    prov[k] = Provenance(k, {}, rule.source, ext)
            else:
                prov = {p: e for p, e in prov.items() if not p.startswith(f"{k}.")}
                out[k] = v
                prov[k] = Provenance(k, v, rule.source, ext)
    return out, prov


def apply_rules(rules: Sequence[Rule], ctx: Mapping[str, Any]) -> dict[str, Any]:
    """The values the matching rules set, later rules winning (dict values merge)."""
    return _apply(rules, ctx)[0]


def resolve_recipe(estimator: str, recipe: str, ctx: Mapping[str, Any]) -> dict[str, Any]:
    """The values a recipe sets for this estimator in this context (model, dataset, w_bits, a_bits)."""
    return apply_rules(recipe_rules(estimator, recipe), ctx)


def recipe_provenance(estimator: str, ctx: Mapping[str, Any], recipe: str = "published") -> list[Provenance]:
    """(key, value, source, extrapolated) of every value the recipe sets in this context, in key order."""
    prov = _apply(recipe_rules(estimator, recipe), ctx)[1]
    return [prov[k] for k in sorted(prov)]


def recipe_table(estimator: str) -> dict[str, list[Rule]]:
    """The raw rules of both recipes (for ``binbench show estimator``); ``published`` is [] when there is none."""
    return {"common": list(COMMON), "published": published_rules(get_estimator_class(estimator)) or []}

"""Names and text vocabularies shared by the light parts of binbench (the command line's parser, config checks)
and the heavy ones, kept here so that reading them imports no torch (``binbench --help`` and ``list`` stay fast)."""

from __future__ import annotations

#: the recipes every estimator has (``bench.recipes``)
RECIPES = ("common", "published")
#: a recipe's stand-in for the common recipe's activation estimator (the estimator declaring ``common_activation``)
COMMON_ACTIVATION = ":common"
#: the one vocabulary of true/false words binbench reads from text (--set, suite files, hyperparameters)
BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_bool(text: str) -> bool:
    """``text`` as a boolean (:data:`BOOL_WORDS`, any case); ValueError for anything else."""
    try:
        return BOOL_WORDS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"not a boolean: {text!r}") from None

"""Example third-party binbench estimators, one module per estimator.

Each module registers its estimator when it is imported; binbench imports it through the module's entry point
in the group ``binbench.estimators`` (see pyproject.toml). This file imports none of them on purpose: the
registry records, for each estimator, the entry point whose import registered it ("entry point rsign
(binbench-example-estimators 0.3.0)"), so each module must be imported by its own entry point.
"""

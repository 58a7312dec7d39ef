"""Which code produced a run: each estimator's package, version and a digest of its source.

A run's key is its experiment (the resolved config); its *code* is what computed it. Both are recorded, and
``--resume`` compares both: a trial whose estimator's code changed since it ran is trained again, and a
checkpoint written by other code is not continued. The digest is of the source file that defines the estimator
class (a built-in's ``estimators/NAME.py``, a plugin's module): a change there, installed or edited in place,
changes it, whether or not the package's version was raised.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from dataclasses import dataclass


@dataclass(frozen=True)
class Origin:
    """Where a registered estimator comes from."""

    estimator: str
    package: str  # "binbench" for a built-in, the distribution of a plugin, "" for a local module
    version: str
    module: str
    digest: str  # "sha256:<12 hex>" of the module's source file, "" where it has none

    def label(self) -> str:
        """'binbench 0.1.0', 'binbench-example-estimators 0.3.0' or 'module my_estimators' (for tables)."""
        return f"{self.package} {self.version}".strip() if self.package else f"module {self.module}"


@functools.cache
def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.sha256(f.read()).hexdigest()[:12]


def estimator_origin(name: str) -> Origin:
    from bench.estimator import ESTIMATORS

    entry = ESTIMATORS.entry(name)
    try:
        file = inspect.getsourcefile(entry.obj)
    except TypeError:
        file = None
    return Origin(name, entry.package, entry.version, entry.obj.__module__, _file_digest(file) if file else "")


def code_digest(estimators: tuple[str, ...]) -> str:
    """One digest over the source of the estimators a run uses (weight, activation): "" for none (FP32)."""
    parts = [f"{n}={estimator_origin(n).digest}" for n in dict.fromkeys(estimators)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16] if parts else ""


def origin_tags(estimators: dict[str, str]) -> dict[str, str]:
    """MLflow tags of a run's estimators by role ({"weight": NAME, "activation": NAME}):
    ``binbench.origin.<role>`` = 'NAME: binbench 0.1.0 sha256:...' (package, version, source digest)."""
    out = {}
    for role, name in estimators.items():
        o = estimator_origin(name)
        out[f"binbench.origin.{role}"] = f"{name}: {o.label()} {o.digest}".strip()
    return out

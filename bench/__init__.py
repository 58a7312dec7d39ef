"""binbench: a benchmark harness for the binarization estimators of binary neural networks."""

from bench.errors import BinbenchError, ConfigError, DataNotFoundError, UnknownNameError
from bench.estimator import (
    Estimator,
    Progress,
    Quantizer,
    Stage,
    create_estimator,
    estimator_info,
    list_estimators,
    register_estimator,
)
from bench.probe import probe

__version__ = "0.1.0"


def __getattr__(name: str):
    # heavy submodules load on first use, so `import bench` stays cheap for plugins
    if name in {"RunConfig", "RunResult"}:
        import bench.train as _t
        from bench.config import RunConfig

        return {"RunConfig": RunConfig, "RunResult": _t.RunResult}[name]
    if name in {"create_model", "list_models", "register_model"}:
        import bench.models as _m

        return getattr(_m, name)
    if name in {"list_datasets", "load_dataset"}:
        import bench.data as _d

        return getattr(_d, name)
    if name in {"diagnostics", "layers", "config", "data", "models", "recipes", "train"}:
        import importlib

        return importlib.import_module(f"bench.{name}")
    raise AttributeError(f"module 'bench' has no attribute {name!r}")


__all__ = [
    "BinbenchError", "ConfigError", "DataNotFoundError", "Estimator", "Progress", "Quantizer", "Stage",
    "UnknownNameError", "create_estimator", "estimator_info", "list_estimators", "probe", "register_estimator",
]

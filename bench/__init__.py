"""binbench: a benchmark harness for the binarization estimators of binary neural networks."""

from bench.errors import BinbenchError, ConfigError, DataNotFoundError, UnknownNameError

__version__ = "0.1.0"

#: what ``from bench import X`` gives for the plugin API; loaded on first use (they import torch), so that
#: ``import bench`` and the CLI's listings stay fast
_ESTIMATOR_API = {"Estimator", "Progress", "Quantizer", "Stage", "create_estimator", "estimator_info",
                  "list_estimators", "register_estimator"}


def __getattr__(name: str):
    if name in _ESTIMATOR_API:
        import bench.estimator as _e

        return getattr(_e, name)
    if name == "probe":  # the function (its module is bench.probing, so no submodule shadows it)
        from bench.probing import probe

        return probe
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
    if name in {"diagnostics", "layers", "config", "data", "models", "recipes", "train", "functional"}:
        import importlib

        return importlib.import_module(f"bench.{name}")
    raise AttributeError(f"module 'bench' has no attribute {name!r}")


__all__ = [
    "BinbenchError", "ConfigError", "DataNotFoundError", "Estimator", "Progress", "Quantizer", "Stage",
    "UnknownNameError", "create_estimator", "estimator_info", "list_estimators", "probe", "register_estimator",
]

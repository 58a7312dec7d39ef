"""What a run leaves in MLflow besides its metrics: the complete record of one experiment.

* params hold the experiment (what was trained and how), never the execution: where the data or checkpoints lay,
  threads, device, resumption and the CUDA-only switches on a CPU are ``exec.*`` tags instead, so that two
  executions of one experiment compare equal param by param;
* ``config.json``: the resolved run config, every key (what ``binbench evaluate`` rebuilds the model from);
* the dataset as an MLflow dataset input (name, digest, where it came from, the subset used), context training;
* ``model/weights.pt``: the final weights (a ``state_dict`` saved by ``torch.save``);
* system metrics (``system/*``) while the run trains, when psutil is installed;
* for a suite, its parent run keeps the suite file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.spec import EXECUTION_KEYS
from bench.track import store

# config keys that describe one execution, not the experiment (bench.spec.EXECUTION_KEYS): ``exec.<key>`` tags
#: switches that only act on CUDA: on a CPU they change nothing, so they are execution facts there
CUDA_ONLY_KEYS = ("amp", "channels_last", "compile")
WEIGHTS = "model/weights.pt"
CONFIG = "config.json"
SYSTEM_METRICS_INTERVAL_S = 5.0


def quiet_mlflow() -> None:
    """MLflow's INFO lines (creating a store's tables) are noise on a console; its warnings are kept."""
    import logging

    import mlflow  # noqa: F401 - importing it configures its loggers: set the level after that

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def on_cuda(config: dict[str, Any]) -> bool:
    device = str(config.get("device") or "auto")
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


def split_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(params, exec tags) of a resolved config dict."""
    execution = sorted(EXECUTION_KEYS) + ([] if on_cuda(config) else list(CUDA_ONLY_KEYS))
    params = {k: v for k, v in config.items() if k not in execution}
    tags = {f"exec.{k}": str(config.get(k)) for k in execution if k in config}
    return params, tags


def artifact_root(tracking_uri: str, results_dir: str | os.PathLike | None = None) -> str | None:
    """``<results>/artifacts`` as a file URI: beside a SQLite store unless a results folder is given; None (the
    server's default) for a remote tracking server."""
    if results_dir is not None:
        return (Path(results_dir).resolve() / "artifacts").as_uri()
    db = store.sqlite_path(tracking_uri)
    if db is not None:
        return (db.resolve().parent / "artifacts").as_uri()
    return None


def dataset_input(name: str, source: str, digest: str, config: dict[str, Any]) -> Any:
    """The run's training data as an MLflow ``DatasetInput`` (a MetaDataset: no rows copied into the store)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    subset = {k: config.get(k) for k in ("train_subset", "val_split") if config.get(k)}
    where = {"source": source or name, "digest": digest, **{k: str(v) for k, v in subset.items()}}
    # the store keeps 36 characters of a digest: the content hash's head, its full value stays in the source
    short = digest.rpartition(":")[2][:36] if digest else hashlib.sha1(source.encode()).hexdigest()[:36]
    label = name + "".join(f" {k}={v}" for k, v in subset.items())
    ds = MetaDataset(CodeDatasetSource(where), name=label, digest=short)
    return DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "training")])


class FinalModel:
    """A stage hook for ``train``: holds the model after the last stage ends, for the weights artifact, and the
    binary layers' latent weights as training starts, for the latent-weight histogram."""

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.first: torch.Tensor | None = None

    def __call__(self, when: str, stage: int, model: nn.Module) -> None:
        if when == "start" and self.first is None:
            self.first = _pooled_latents(model)
        if when == "end":
            self.model = model

    def latent_histogram(self, epochs: int, bins: int = 80) -> dict[str, Any] | None:
        """``{"edges", "epochs": {"0": counts, "<epochs>": counts}}``: the pooled latent values of the binary
        layers (what their quantizers binarize) before the first epoch and after the last, on common edges (what
        the report's surrogate figure draws its curves over). None when the run had no binary layer or never
        started here."""
        if self.model is None or self.first is None or self.first.numel() == 0:
            return None
        last = _pooled_latents(self.model)
        m = float(torch.cat([self.first.abs(), last.abs()]).max()) or 1.0
        edges = torch.linspace(-m, m, bins + 1)
        counts = {str(e): torch.histogram(w, bins=edges).hist.long().tolist() for e, w in ((0, self.first),
                                                                                             (epochs, last))}
        return {"edges": [round(float(x), 6) for x in edges], "epochs": counts}

    def state_dict(self, fallback: Path | None = None) -> dict[str, Any] | None:
        if self.model is not None:
            return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        if fallback is not None and fallback.exists():  # a run resumed after it had finished: no stage ran now
            from bench import checkpoint

            return checkpoint.load(fallback)["model"]
        return None


def _pooled_latents(model: nn.Module) -> torch.Tensor:
    from bench.layers import binary_layers

    ws = []
    # what each quantizer binarizes (ReCU/IR-Net: the standardized weight; BiPer: sin(w0 w))
    with torch.no_grad():
        for _, m in binary_layers(model):
            q = m.weight_quantizer
            ws.append(q.estimator.latent(m.weight, q).detach().float().flatten().cpu())
    return torch.cat(ws) if ws else torch.empty(0)


def log_run_record(client: Any, run_id: str, config: dict[str, Any], result: Any,
                   weights: dict[str, Any] | None, latent_hist: dict[str, Any] | None = None) -> None:
    """config.json, the dataset input and (unless the run diverged) the final weights of a finished run.

    A store whose artifact location cannot be written (an experiment created by an older binbench points at a
    temporary folder that is gone) must not fail a trial that trained: the failure is a tag on the run instead.
    """
    from mlflow.exceptions import MlflowException

    try:
        _log_run_record(client, run_id, config, result, weights)
        if latent_hist is not None and not foreign_artifact_root(client, run_id):
            client.log_dict(run_id, latent_hist, "latent_hist.json")
    except (OSError, MlflowException) as exc:
        client.set_tag(run_id, "record_error", f"{type(exc).__name__}: {exc}"[:5000])


def foreign_artifact_root(client: Any, run_id: str) -> str | None:
    """Why the run's artifacts must not be written, or None.

    A store copied from another machine (the committed ``results/*/mlflow.db``) keeps the absolute artifact
    location it was made with; writing there would create folders outside the user's results folder. Artifacts
    are written only where the folder holding the experiment's artifact location already exists.
    """
    from urllib.parse import unquote, urlparse

    u = urlparse(client.get_run(run_id).info.artifact_uri)
    if u.scheme not in ("", "file"):
        return None  # a tracking server's artifact store
    root = Path(unquote(u.path)).parents[1]  # <experiment artifact location>/<run id>/artifacts
    if root.parent.is_dir():
        return None
    return (f"artifact location {root} is in a folder that does not exist here (the store was made elsewhere): "
            "no artifacts written; use a results folder of your own for new runs")


def _log_run_record(client: Any, run_id: str, config: dict[str, Any], result: Any,
                    weights: dict[str, Any] | None) -> None:
    import torch

    why = foreign_artifact_root(client, run_id)
    if why:
        client.set_tag(run_id, "record_error", why)
        return
    client.log_dict(run_id, json.loads(json.dumps(config, default=str)), CONFIG)
    client.log_inputs(run_id, datasets=[dataset_input(config["dataset"], result.data_source,
                                                      getattr(result, "data_digest", ""), config)])
    if weights is None or result.status != "finished":
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(WEIGHTS).name
        torch.save(weights, path)
        client.log_artifact(run_id, str(path), str(Path(WEIGHTS).parent))


def log_suite_file(client: Any, run_id: str, path: str | os.PathLike) -> None:
    from mlflow.exceptions import MlflowException

    try:
        why = foreign_artifact_root(client, run_id)
        if why:
            client.set_tag(run_id, "record_error", why)
            return
        client.log_artifact(run_id, str(path))
    except (OSError, MlflowException) as exc:  # as in log_run_record: a record gap is not worth a failed suite
        client.set_tag(run_id, "record_error", f"{type(exc).__name__}: {exc}"[:5000])


def start_system_metrics(run_id: str, tracking_uri: str) -> Any:
    """MLflow's system metrics monitor for the run, sampling every few seconds; None without psutil."""
    try:
        import psutil  # noqa: F401 - MLflow's monitor needs it
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:
        return None
    quiet_mlflow()  # its start and stop lines (INFO) in every trial worker are noise on the suite's console
    monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, samples_before_logging=1,
                                   tracking_uri=tracking_uri)
    monitor.start()
    return monitor


def stop_system_metrics(monitor: Any) -> None:
    if monitor is not None:
        monitor.finish()


def final_metrics(res: Any) -> dict[str, float]:
    """A finished (or diverged) run's closing metrics, logged at the step after its last epoch."""
    final = {"top1": res.top1, "best_top1": res.best_top1, "best_epoch": res.best_epoch,
             "late_gain": res.late_gain, "epoch_seconds": res.epoch_seconds, "epochs_run": len(res.history),
             **{f"params_{k}": v for k, v in res.params.items()},
             **{f"top1_{m}": v for m, v in res.eval_modes.items()}}
    if res.top5 is not None:
        final.update(top5=res.top5, best_top5=res.best_top5)
    if res.selected_top1 is not None:
        final.update(selected_top1=res.selected_top1, selected_epoch=res.selected_epoch)
    return {k: v for k, v in final.items() if v is not None}


def final_tags(res: Any) -> dict[str, str]:
    return {store.STATUS_TAG: res.status, store.HEADLINE_TAG: next(iter(res.eval_modes)),
            store.MESSAGE_TAG: res.message, store.DATA_SOURCE_TAG: res.data_source,
            store.STAGE_EPOCHS_TAG: ", ".join(f"{st['name']}: {st['epochs']}" for st in res.stages)}


RUN_EXPERIMENT = "binbench-run"


def default_run_store() -> str:
    """Where ``binbench run`` records: $BINBENCH_RUN_STORE (a tracking URI), else runs/mlflow.db under the
    current directory (``bench.track.store.run_store_file``)."""
    env = os.environ.get("BINBENCH_RUN_STORE")
    if env:
        return env
    return store.sqlite_uri(store.run_store_file())

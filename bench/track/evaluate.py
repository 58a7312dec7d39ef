"""``binbench evaluate``: rebuild a recorded run's model from its ``config.json``, load its final weights and
measure its test top-1 again, to check that the record is complete enough to reproduce the result.

A run is named by its MLflow run id (looked up in --tracking-uri, else in runs/, runs/*/ and results/*/ under the
current directory) or by a folder holding ``config.json`` and ``model/weights.pt`` (a run's downloaded artifacts).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BinbenchError


@dataclass
class Recorded:
    config: dict[str, Any]
    weights: Path
    where: str  # "run ID in URI" or the folder
    logged_top1: float | None = None
    tmp: Any = field(default=None, repr=False)  # keeps downloaded artifacts alive


def stores(tracking_uri: str | None) -> list[str]:
    """The tracking URIs a command naming a run searches: ``--tracking-uri``, else ``binbench run``'s store and
    the SQLite stores under the current folder (``bench.track.store.known_stores``: the user's runs, then the
    committed reference results, which are only read)."""
    if tracking_uri:
        return [tracking_uri]
    from bench.track.record import default_run_store
    from bench.track.store import known_stores, sqlite_uri

    return list(dict.fromkeys([default_run_store(), *(sqlite_uri(p) for p in known_stores())]))


def _from_folder(folder: Path) -> Recorded:
    from bench.track.record import CONFIG, WEIGHTS

    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise BinbenchError(f"{folder} holds no {CONFIG} and {WEIGHTS}: give a run id or a run's artifact folder")
    return Recorded(json.loads((folder / CONFIG).read_text()), folder / WEIGHTS, str(folder))


def find_run(ref: str, tracking_uri: str | None = None) -> Recorded:
    """The recorded run ``ref`` (a run id or a folder): its artifacts where the store keeps them on this machine
    (see ``bench.track.store.artifact_folder``), else downloaded from the server into a temporary folder."""
    if Path(ref).is_dir():
        return _from_folder(Path(ref))
    from mlflow.exceptions import MlflowException

    from bench.track.store import mlflow_client, sqlite_path

    searched = []
    for uri in stores(tracking_uri):
        db = sqlite_path(uri)
        if db is not None and not db.exists():
            continue
        searched.append(uri)
        try:
            run = mlflow_client(uri).get_run(ref)
        except MlflowException:
            continue
        rec = _recorded(uri, run)
        rec.where, rec.logged_top1 = f"run {ref} in {uri}", run.data.metrics.get("top1")
        return rec
    raise BinbenchError(f"no run or folder {ref!r}; searched " + (", ".join(searched) or "no MLflow store")
                        + " (pass --tracking-uri where it was recorded)")


def _recorded(uri: str, run: Any) -> Recorded:
    """A found run's config and weights, or one line saying why they are not there (the real cause)."""
    from bench.track.record import CONFIG, WEIGHTS
    from bench.track.store import ERROR_TAG, MESSAGE_TAG, artifact_folder, run_status

    ref = run.info.run_id
    status = run_status(run)
    if status != "finished":
        why = run.data.tags.get(ERROR_TAG) or run.data.tags.get(MESSAGE_TAG) or ""
        raise BinbenchError(f"run {ref} in {uri} {status}" + (f" ({why[:200]})" if why else "")
                            + ": only a finished run has final weights to evaluate")
    folder = artifact_folder(uri, run)
    if folder is None:
        return _downloaded(uri, run)
    if not folder.is_dir():
        raise BinbenchError(f"run {ref} in {uri}: its artifacts are not on this machine: the store records them at "
                            f"{folder}, where it was made, and the same path under the store's folder does not exist "
                            "either (a store copied without its artifacts, as the committed results/*/mlflow.db); "
                            "evaluate a run of your own, or copy the artifacts folder beside the store")
    missing = [f for f in (CONFIG, WEIGHTS) if not (folder / f).is_file()]
    if missing:
        noted = run.data.tags.get("record_error")
        raise BinbenchError(f"run {ref} in {uri}: {' and '.join(missing)} not in {folder}"
                            + (f" (the run noted: {noted[:200]})" if noted else
                               " (weights are not committed with results/; a binbench older than `binbench "
                               "evaluate` recorded none)"))
    return Recorded(json.loads((folder / CONFIG).read_text()), folder / WEIGHTS, "")


def _downloaded(uri: str, run: Any) -> Recorded:
    """A run's artifacts from a tracking server's artifact store, into a temporary folder kept with the record."""
    from mlflow.exceptions import MlflowException

    from bench.track.store import mlflow_client

    tmp = tempfile.TemporaryDirectory(prefix="binbench-eval-")
    try:
        mlflow_client(uri).download_artifacts(run.info.run_id, "", tmp.name)
        rec = _from_folder(Path(tmp.name))
    except (MlflowException, OSError) as exc:
        tmp.cleanup()
        msg = " ".join(str(exc).split())[:200]
        raise BinbenchError(f"run {run.info.run_id} in {uri}: its artifacts could not be downloaded "
                            f"({type(exc).__name__}: {msg})") from None
    except BinbenchError:
        tmp.cleanup()
        raise BinbenchError(f"run {run.info.run_id} in {uri} recorded no config.json and model/weights.pt (a "
                            "binbench older than `binbench evaluate` recorded none)") from None
    rec.tmp = tmp
    return rec


def evaluate_recorded(rec: Recorded, data_root: str | None = None, device: str | None = None) -> dict[str, float]:
    """Test top-1 per evaluation mode (the headline mode first) of the recorded model."""
    import torch

    from bench.data import get_dataset
    from bench.estimator import Progress, Stage
    from bench.spec import recorded_values, resolve
    from bench.train import build_model, evaluate, make_loaders, pick_device, seed_everything

    # the recorded config is resolved: turned back into values resolve takes (scaling native, not internal)
    values = {**recorded_values(rec.config), "resume": False, "checkpoint_dir": None, "download": False}
    if data_root:
        values["data_root"] = data_root
    if device:
        values["device"] = device
    spec = resolve(values)
    cfg = spec.config
    dev = pick_device(cfg.device)
    seed_everything(cfg.seed)
    ds = get_dataset(cfg.dataset)
    loaders = make_loaders(cfg, ds, dev, channels_last=False)
    model, est, act = build_model(cfg, ds)
    model.load_state_dict(torch.load(rec.weights, map_location="cpu", weights_only=True))
    model.to(dev)
    last = spec.stages[-1]
    for e in [e for e in dict.fromkeys([est, act]) if e is not None]:  # the estimators as they ended training
        e.begin_stage(last.index, Stage(last.name, 1.0, last.estimator if e is est else {}))
        e.set_progress(Progress(last.index, last.name, last.epochs - 1, last.epochs))
    use_amp = cfg.amp and dev.type == "cuda"

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()

    return {m: evaluate(model, est, loaders.test, m, ds.num_classes >= 10, autocast)["top1"] for m in spec.eval_modes}

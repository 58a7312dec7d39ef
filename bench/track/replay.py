"""``binbench replay``: train the first epochs of recorded suite trials again with the code checked out now and
compare every epoch's metrics with what the store recorded.

A table in ``results/`` stays valid across code changes only while the code would still produce its numbers.
Replaying is how that is shown rather than claimed: the trial's resolved config is rebuilt from its logged
params, resolved again (its key must equal the recorded ``binbench.key``: the reconstruction is exact), trained
for ``epochs`` epochs of its full schedule, and its train loss and test top-1 per epoch compared with the
recorded ones (equal to the last printed digit: the CPU path is deterministic for a seed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bench.errors import BinbenchError

COMPARED = ("train_loss", "test_top1")


class _Enough(Exception):
    """Raised by the epoch callback once the replayed epochs are done."""


@dataclass
class Replayed:
    label: str
    run_id: str
    epochs: int
    differences: list[str]  # "epoch 1 train_loss: recorded 0.4123, now 0.4125"; empty when equal


def config_from_params(params: dict[str, str]) -> dict[str, Any]:
    """The resolved config a trial logged, from its flattened params (``estimator_hparams.w0`` -> nested)."""
    out: dict[str, Any] = {}
    for key, text in params.items():
        value = _parse(text)
        head, _, sub = key.partition(".")
        if sub:
            out.setdefault(head, {})[sub] = value
        else:
            out[key] = value
    return out


def _parse(text: str) -> Any:
    if text == "None":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return json.loads(text)
    except ValueError:
        return text


def replay_run(run: Any, history: dict[str, dict[int, float]], epochs: int, data_root: str | None,
               threads: int | None) -> Replayed:
    """Replay one recorded trial run (an MLflow Run) for ``epochs`` epochs; ``history``: metric -> step -> value."""
    from bench.spec import recorded_values, resolve
    from bench.track import store as tracking
    from bench.train import train

    tags = run.data.tags
    label = run.info.run_name or run.info.run_id
    config = recorded_values(config_from_params(run.data.params))
    config.update(data_root=data_root, threads=threads, device="cpu", diagnostics=True)
    spec = resolve(config, tags.get(tracking.SUITE_TAG))
    if spec.key != tags.get(tracking.KEY_TAG):
        raise BinbenchError(f"{label}: its logged params do not resolve to its recorded key with this binbench "
                            f"({spec.key} != {tags.get(tracking.KEY_TAG)}): the code resolves configurations "
                            "differently now, so its numbers cannot be replayed")
    seen: list[dict[str, Any]] = []

    def stop(record: dict[str, Any]) -> None:
        seen.append(record)
        if len(seen) >= epochs:
            raise _Enough

    try:
        train(spec, callbacks=[stop])
    except _Enough:
        pass
    diffs = []
    for rec in seen:
        step = int(rec["global_epoch"])
        for metric in COMPARED:
            logged = history.get(metric, {}).get(step)
            if logged is None or f"{logged:.6g}" != f"{rec[metric]:.6g}":
                diffs.append(f"epoch {step + 1} {metric}: recorded {logged}, now {rec[metric]}")
    if diffs:
        diffs += platform_differences(tags)
    return Replayed(label, run.info.run_id, len(seen), diffs)


def platform_differences(tags: dict[str, str]) -> list[str]:
    """Where the recorded run's torch or CPU differ from this machine's: their kernels round differently, and a
    float-level difference grows over a chaotic run, so equality is only expected on the same platform."""
    import torch

    from bench.env import hardware

    here = hardware()  # the fields a run records, so both sides name them alike
    now = {"version.torch": torch.__version__,
           **{f"hardware.{k}": here[k] for k in ("cpu", "cpu_id", "cpu_capability")}}
    out = [f"(recorded {k} {tags.get(k)!r}, replayed on {v!r})" for k, v in now.items()
           if k in tags and tags[k] != v]
    unknown = [k for k in now if k not in tags]
    if unknown:  # runs recorded before binbench wrote these: a difference there cannot be ruled out
        out.append(f"(not recorded by the run, so not compared: {', '.join(unknown)})")
    return out


def replay_suite(uri: str, suite: str, epochs: int = 1, per_estimator: int = 1, data_root: str | None = None,
                 threads: int | None = None, log=print) -> list[Replayed]:
    """Replay ``per_estimator`` finished trials of each estimator (and the FP baseline) of ``suite`` in ``uri``."""
    from bench.track import store as tracking

    client = tracking.mlflow_client(uri)
    exp = client.get_experiment_by_name(suite)
    if exp is None:
        raise BinbenchError(f"no runs of suite {suite!r} in {uri}: pass --results-dir where it ran")
    picked: dict[str, list[Any]] = {}
    for r in sorted(tracking.trial_runs(uri, exp.experiment_id), key=lambda r: r.info.run_name or ""):
        est = r.data.tags.get(tracking.ESTIMATOR_TAG, "?")
        if tracking.run_status(r) == "finished" and len(picked.setdefault(est, [])) < per_estimator:
            picked[est].append(r)
    out = []
    for runs in picked.values():
        for r in runs:
            history = {m: {h.step: h.value for h in client.get_metric_history(r.info.run_id, m)} for m in COMPARED}
            res = replay_run(r, history, epochs, data_root, threads)
            log(f"{res.label}: {res.epochs} epoch(s) " + ("equal" if not res.differences else
                                                          "DIFFER: " + "; ".join(res.differences)))
            out.append(res)
    return out

"""``binbench benchmark``: binbench's speed and memory against the loops researchers run today.

Every comparison is measured side by side in one process run, repeated, with medians and min-max:

1. overhead   a binbench epoch against the floor: a minimal hand-written loop over the same ready tensors
              (forward, backward, step, nothing else);
2. reference  against the pipeline of the methods' official code: torchvision dataset objects with
              per-image transforms and a DataLoader (the better of 0 and 2 workers);
3. estimator  each estimator's training step against the reference estimator's on the same model;
4. suite      trials of the ``mnist`` suite through Ray Tune in parallel against the same trials one after
              another in one process with all cores;
5. memory     peak RSS of a resnet20 trial and of the suite driver.
"""

# the reference pipeline is the one of edmav4/BiPer, z-hXu/ReCU and DravenALG/ReSTE (their train scripts)
from __future__ import annotations

import contextlib
import csv
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

TARGETS = {
    ("overhead", "mlp/mnist"): 1.05, ("overhead", "resnet20/cifar-format"): 1.05,
    ("reference", "mlp/mnist"): 0.5, ("reference", "resnet20/cifar-format"): 1.0,
}
#: suite wall time over the same trials in sequence in one process with all cores, nothing tracked (issue 16's
#: baseline). Packed (the default, ``--pack auto``): a suite cell trained as one program must cost a fraction of
#: doing it by hand (issue 23); solo (``--pack off``) must not be slower than by hand (issue 16); Ray is listed
#: for comparison (a cluster's engine)
#: an ensemble-evaluating estimator's epoch (training + every evaluation mode, its ensemble of sampled networks
#: included) over the reference estimator's epoch on the same model (issue 23: the forward-pass count alone is ~3x)
ENSEMBLE_TARGET = 3.5
SUITE_TARGETS = {("smoke", "packed"): 0.4, ("mnist-6-trials", "packed"): 0.7, ("cifar10-cpu-cell", "packed"): 0.7,
                 ("mnist-6-trials", "solo"): 1.0, ("smoke", "solo"): 1.1}
#: how each suite variant runs: ``binbench suite run`` arguments after the suite and its folder
SUITE_VARIANTS = {"packed": ["--executor", "local"], "solo": ["--executor", "local", "--pack", "off"],
                  "ray": ["--executor", "ray"]}
GPU_TARGETS = {("reference", "resnet20/cifar-format"): 0.2, ("reference", "resnet18/cifar-format"): 0.2}


def _timed(fn: Callable[[], Any], repeats: int, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(clock() - t0)
    return out


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


# -- data ----------------------------------------------------------------------------------------------------
def write_cifar_format(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A CIFAR-10 folder in the real on-disk format (python pickles), random images."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per = -(-n_train // 5)
    for i in range(5):
        k = max(0, min(per, n_train - i * per))
        with open(d / f"data_batch_{i + 1}", "wb") as fh:
            pickle.dump({"data": rng.integers(0, 256, (k, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, k).tolist()}, fh, protocol=2)
    with open(d / "test_batch", "wb") as fh:
        pickle.dump({"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
                     "labels": rng.integers(0, 10, n_test).tolist()}, fh, protocol=2)
    with open(d / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh, protocol=2)
    return root


class Workload:
    """A model + dataset + batch size, and the four ways to train one epoch of it."""

    def __init__(self, name: str, model: str, dataset: str, data_root: str, batch: int, device: torch.device,
                 threads: int, train_subset: int | None = None, model_args: dict | None = None):
        self.name, self.model, self.dataset, self.data_root = name, model, dataset, data_root
        self.batch, self.device, self.threads, self.subset = batch, device, threads, train_subset
        self.model_args = model_args or {}

    def config(self, **kw: Any) -> dict[str, Any]:
        from bench.estimator import reference_estimator

        return {"estimator": reference_estimator(), "model": self.model, "dataset": self.dataset,
                "data_root": self.data_root, "epochs": 1, "batch_size": self.batch, "threads": self.threads,
                "diagnostics": False, "train_subset": self.subset, "model_args": self.model_args, "seed": 0,
                "device": self.device.type, **kw}

    def binbench_epoch(self) -> float:
        """Seconds of the training part of one binbench epoch (the loop's own clock, evaluation excluded)."""
        from bench.spec import resolve
        from bench.train import train

        return train(resolve(self.config())).history[0]["epoch_seconds"]

    def _model(self):
        from bench.data import get_dataset
        from bench.spec import resolve
        from bench.train import build_model

        cfg = resolve(self.config()).config
        torch.manual_seed(0)
        model, est, _ = build_model(cfg, get_dataset(self.dataset))
        model.to(self.device)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
        return model, opt

    def ready_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        from bench.data import get_dataset, load_dataset

        spec = get_dataset(self.dataset)
        d = load_dataset(self.dataset, self.data_root)
        x, y = d.train_x, d.train_y
        if self.subset:
            x, y = x[: self.subset], y[: self.subset]
        mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
        std = torch.tensor(spec.std).view(1, -1, 1, 1)
        return ((x.float() / 255 - mean) / std).to(self.device), y.to(self.device)

    def floor_epoch(self) -> Callable[[], None]:
        x, y = self.ready_tensors()
        model, opt = self._model()
        model.train()

        def run() -> None:
            for i in range(0, x.shape[0], self.batch):
                loss = F.cross_entropy(model(x[i:i + self.batch]), y[i:i + self.batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        return run

    def reference_epoch(self, workers: int) -> Callable[[], None]:
        """The official repos' pipeline: torchvision dataset + per-image transforms + DataLoader."""
        import torchvision.transforms as T

        from bench.data import get_dataset

        spec = get_dataset(self.dataset)
        norm = T.Normalize(spec.mean, spec.std)
        if self.dataset == "cifar10":
            from torchvision.datasets import CIFAR10

            from bench.data import load_dataset

            # torchvision's dataset and per-image pipeline, over the batches binbench read with its restricted
            # unpickler (torchvision's own reader runs plain pickle on whatever the folder holds)
            d = load_dataset("cifar10", self.data_root)
            ds = CIFAR10.__new__(CIFAR10)
            ds.root, ds.train, ds.target_transform = str(self.data_root), True, None
            ds.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm])
            ds.data = d.train_x.permute(0, 2, 3, 1).contiguous().numpy()  # HWC, as torchvision keeps it
            ds.targets = d.train_y.tolist()
            ds.classes = [f"c{i}" for i in range(10)]
        else:
            from torchvision.datasets import MNIST

            from bench.data.sources import extract_archives, mnist_archives

            root = self.data_root
            if not (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
                gz, digest = mnist_archives(Path(root))
                root = str(extract_archives(gz, "MNIST", digest))  # where binbench extracts the archives
            ds = MNIST(root, train=True, transform=T.Compose([T.ToTensor(), norm]))
        if self.subset:
            ds = torch.utils.data.Subset(ds, range(self.subset))
        model, opt = self._model()
        model.train()

        def run() -> None:
            loader = torch.utils.data.DataLoader(ds, batch_size=self.batch, shuffle=True, num_workers=workers,
                                                 pin_memory=self.device.type == "cuda")
            for xb, yb in loader:
                xb, yb = xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        return run


# -- the measurements ----------------------------------------------------------------------------------------
def measure_overhead_and_reference(w: Workload, repeats: int, rows: list[dict], log) -> None:
    floor = w.floor_epoch()
    floor()  # warm-up: allocator, kernels
    ref0, ref2 = w.reference_epoch(0), w.reference_epoch(2)
    times: dict[str, list[float]] = {"binbench": [], "floor": [], "reference (0 workers)": [],
                                     "reference (2 workers)": []}
    w.binbench_epoch()  # warm-up
    for _ in range(repeats):  # interleaved, so drifting load hits every variant alike
        times["binbench"].append(w.binbench_epoch())
        times["floor"] += _timed(floor, 1)
        times["reference (0 workers)"] += _timed(ref0, 1)
        times["reference (2 workers)"] += _timed(ref2, 1)
        log(f"  {w.name}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    st = {k: _stats(v) for k, v in times.items()}
    best_ref = min(("reference (0 workers)", "reference (2 workers)"), key=lambda k: st[k]["median"])
    for variant in times:
        rows.append({"measure": "epoch time", "workload": w.name, "variant": variant, **st[variant], "unit": "s"})
    gpu = w.device.type == "cuda"
    for measure, base in (("overhead", "floor"), ("reference", best_ref)):
        ratio = st["binbench"]["median"] / st[base]["median"]
        target = (GPU_TARGETS if gpu else TARGETS).get((measure, w.name), TARGETS.get((measure, w.name)))
        rows.append({"measure": measure, "workload": w.name, "variant": f"binbench / {base}", "ratio": ratio,
                     "target": target, "met": None if target is None else ratio <= target})


def measure_estimators(w: Workload, steps: int, repeats: int, rows: list[dict], log,
                       names: list[str] | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
    """Each weight estimator's training step against the reference estimator's on the same model and batch,
    interleaved, medians; a row that misses its ``step_cost_target`` gets a profile row. ``clock`` times the
    steps (tests give a clock of their own, so that what they check does not depend on the machine's load)."""
    from bench import list_estimators
    from bench.data import get_dataset
    from bench.estimator import Progress, Stage, estimator_quantizers, get_estimator_class, reference_estimator
    from bench.spec import resolve
    from bench.train import build_model, quantized_weights, training_step

    spec = get_dataset(w.dataset)
    x = torch.randn(w.batch, *spec.shape, device=w.device)
    y = torch.randint(0, spec.num_classes, (w.batch,), device=w.device)
    ref = reference_estimator()
    names = list(dict.fromkeys([ref, *(names or [n for n in list_estimators() if "weight" in
                                                  get_estimator_class(n).kinds and not n.startswith("test_")])]))
    runners = {}
    for name in names:
        # as many epochs as the estimator has stages (the step measured is the last stage's)
        run = resolve(w.config(estimator=name, epochs=len(get_estimator_class(name)().stages())))
        cfg, last = run.config, run.stages[-1]
        torch.manual_seed(0)
        model, est, act = build_model(cfg, spec)
        model.to(w.device).train()
        for e in {est, act} - {None}:  # the last stage (the binary one, where there are two), as train enters it
            e.begin_stage(last.index, Stage(last.name, 1.0, last.estimator if e is est else {}))
            e.set_progress(Progress(last.index, last.name, 0, last.epochs))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        qs = estimator_quantizers(model, "weight")
        constrained = [(q, p) for q, p in quantized_weights(model) if q.estimator.has_constraint]

        def run(model=model, est=est, qs=qs, constrained=constrained, opt=opt) -> None:
            for _ in range(steps):
                training_step(model, est, qs, constrained, opt, None, x, y)

        run()
        runners[name] = (run, cfg, sum(p.numel() for q in qs for p in q.parameters()))
    times = {n: [] for n in names}
    for _ in range(repeats):
        for n in names:
            times[n] += _timed(runners[n][0], 1, clock)
    base = statistics.median(times[ref])
    for n in names:
        med = statistics.median(times[n])
        cls = get_estimator_class(n)
        label = cls.setting_label(runners[n][1].estimator_hparams)
        extra = f" ({label}; {runners[n][2]:,} extra values)" if runners[n][2] else f" ({label})" if label else ""
        target = cls.step_cost_target
        rows.append({"measure": "estimator step", "workload": w.name, "variant": f"{n} / {ref}{extra}",
                     "ratio": med / base, "median": med / steps, "min": min(times[n]) / steps,
                     "max": max(times[n]) / steps, "unit": "s/step", "target": target,
                     "met": None if target is None else med / base <= target})
    log(f"  estimators on {w.name}: " + ", ".join(f"{n} {statistics.median(times[n]) / base:.2f}x" for n in names))
    missed = [r for r in rows if r.get("met") is False and r["measure"] == "estimator step" and r["workload"] == w.name]
    for r in missed:
        n = r["variant"].split(" / ")[0]
        rows.append({"measure": "profile", "workload": w.name, "variant": f"{n} and {ref}, {steps} steps",
                     "profile": f"{n}: {profile_ops(runners[n][0])}; {ref}: {profile_ops(runners[ref][0])}"})


def measure_ensembles(root: str, device: torch.device, quick: bool, rows: list[dict], log) -> None:
    """One epoch (training + evaluation in every mode) of each estimator that evaluates an ensemble of sampled
    networks (``eval_cost`` above its number of modes) against the reference estimator's epoch, on the MNIST conv
    net with the whole training and test sets (a subset would weigh the evaluation more than a real epoch does);
    one repeat (minutes each)."""
    from bench import list_estimators
    from bench.estimator import get_estimator_class, reference_estimator
    from bench.spec import resolve
    from bench.train import train

    threads = os.cpu_count() or 1
    ens = [n for n in list_estimators() if (c := get_estimator_class(n)).eval_cost({}) > len(c.eval_modes)]
    base = {"model": "convnet", "dataset": "digits" if quick else "mnist", "data_root": root, "epochs": 1,
            "threads": threads, "seed": 0, "device": device.type}  # quick: the embedded 8x8 digits

    def epoch(est: str) -> float:
        h = train(resolve({**base, "estimator": est})).history[0]
        return h["epoch_seconds"] + h.get("eval_seconds", 0.0)

    ref = epoch(reference_estimator())
    where = f"convnet/{base['dataset']} epoch"
    rows.append({"measure": "ensemble", "workload": where, "variant": f"{reference_estimator()}: "
                 "training + evaluation", "median": ref, "unit": "s"})
    for name in ens:
        seconds = epoch(name)
        cls = get_estimator_class(name)
        log(f"  {name} epoch {seconds:.1f}s, {reference_estimator()} {ref:.1f}s")
        rows.append({"measure": "ensemble", "workload": where, "variant": f"{name} "
                     f"({cls.setting_label({})}; modes {', '.join(cls.eval_modes)}) / {reference_estimator()}",
                     "median": seconds, "unit": "s", "ratio": seconds / ref, "target": ENSEMBLE_TARGET,
                     "met": seconds / ref <= ENSEMBLE_TARGET})


def profile_ops(fn: Callable[[], None], top: int = 8) -> str:
    """Where one call of ``fn`` spends its CPU time: the ``top`` operators by self time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return ", ".join(f"{e.key} {e.self_cpu_time_total / 1e3:.1f} ms ({100 * e.self_cpu_time_total / total:.0f}%, "
                     f"{e.count} calls)" for e in events[:top]) + f"; total {total / 1e3:.1f} ms"


def _peak_rss_of(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Run a command; return (wall seconds, peak RSS in bytes of that process, sampled from /proc)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            with contextlib.suppress(OSError):
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]) * 1024)
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, err = proc.communicate()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err[-1500:]}")
    return time.perf_counter() - t0, peak[0]


def suite_phases(results_dir: Path, started: float, ended: float) -> str:
    """Where a ``binbench suite run``'s wall time went, from its own store: process start to the first trial,
    the packs' spans against the training time their epochs report (the rest of each pack is its members' MLflow
    records and set-up), and what follows the last trial. ``started``/``ended``: the process's epoch seconds.

    A packed member's run is open for its whole pack and its ``epoch_seconds`` is its share of the pack's epoch,
    so spans are taken per pack (the union of its members' runs) and training time summed over members; a trial
    without a pack tag is a pack of its own."""
    import sqlite3

    from bench.track.store import PACK_TAG

    con = sqlite3.connect(results_dir / "mlflow.db")
    try:
        trials = con.execute(
            "select r.run_uuid, r.start_time, r.end_time, p.value from runs r join tags t on t.run_uuid = r.run_uuid "
            "left join tags p on p.run_uuid = r.run_uuid and p.key = ? "
            "where t.key = 'binbench.kind' and t.value = 'trial'", (PACK_TAG,)).fetchall()
        trained = sum(con.execute("select coalesce(sum(value), 0) from metrics where run_uuid = ? and key in "
                                  "('epoch_seconds', 'eval_seconds')", (t[0],)).fetchone()[0] for t in trials)
    finally:
        con.close()
    if not trials:
        return "no trial ran"
    packs: dict[str, list[tuple[float, float]]] = {}
    for rid, start, end, pack in trials:
        packs.setdefault(pack or rid, []).append((start / 1e3, (end or start) / 1e3))
    spans = [max(e for _, e in v) - min(s for s, _ in v) for v in packs.values()]
    first, last = min(t[1] for t in trials) / 1e3, max(t[2] or t[1] for t in trials) / 1e3
    busy = sum(spans)
    return (f"process start to the first trial {first - started:.1f} s (imports, the store, workers); trials "
            f"{last - first:.1f} s wall in {len(packs)} pack(s) of {len(trials)} trials, the packs' spans summed "
            f"{busy:.1f} s of which {trained:.1f} s train and evaluate ({(busy - trained) / len(packs):.2f} s per "
            f"pack outside training: its members' MLflow runs, params, per-epoch metrics, records, model artifacts "
            f"and set-up); after the last trial {ended - last:.1f} s")


def _mnist_case(data_root: str, n_trials: int, epochs: int, subset: int, tmp: Path) -> Path:
    """A suite file of ``n_trials`` short MNIST MLP trials (the issue's "6 short MNIST trials" case)."""
    import yaml

    from bench.estimator import get_estimator_class, reference_estimator
    from bench.suite import FP, load_suite

    mnist = load_suite("mnist", data_root=data_root)
    full = max(t.budget or 1.0 for t in mnist.trials)  # a suite with budgets: its trials at the largest one
    picked = [t for t in mnist.trials if t.model == "mlp" and t.bits == "W1A1" and (t.budget or 1.0) == full]
    picked = picked[:n_trials]
    est = sorted({t.estimator for t in picked} - {FP}) or [reference_estimator()]
    body = {"name": "bench-mnist-trials", "grid": {"estimators": est, "models": ["mlp"], "datasets": ["mnist"],
                                                   "bits": ["W1A1"], "seeds": sorted({t.seed for t in picked})},
            # at least as many epochs as the estimators have stages
            "defaults": {"epochs": max(epochs, *(len(get_estimator_class(e)().stages()) for e in est)),
                         "train_subset": subset, "data_root": data_root}}
    path = tmp / "bench-mnist-trials.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def run_sequential(suite_path: str, data_root: str | None, threads: int) -> None:
    """The baseline a suite executor is measured against: the suite's trials trained one after another in this
    one process with ``threads`` threads, nothing tracked (``python -c`` entry of ``measure_suite``)."""
    from bench.suite import load_suite
    from bench.train import train

    for t in load_suite(suite_path, data_root=data_root).trials:
        train(t.spec.with_execution(threads=threads, device="cpu"))


def measure_suite(case: str, suite_path: Path, data_root: str, repeats: int, rows: list[dict], log,
                  tmp: Path, variants: tuple[str, ...] = ("packed", "solo", "ray")) -> None:
    """Wall time of ``binbench suite run`` in each variant (packed, solo, Ray; fresh results folder, one process
    start included) against the same trials in sequence in one fresh process with all cores; interleaved,
    medians."""
    from bench.suite import load_suite

    n = len(load_suite(str(suite_path), data_root=data_root).trials)
    cores = os.cpu_count() or 1
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    seq = [sys.executable, "-c", f"from bench.benchmark import run_sequential; run_sequential({str(suite_path)!r}, "
                                 f"{data_root!r}, {cores})"]
    walls: dict[str, list[float]] = {"sequential": [], **{v: [] for v in variants}}
    peak: dict[str, int] = {}
    phases: dict[str, str] = {}
    for r in range(repeats):
        for variant in walls:
            cmd = seq if variant == "sequential" else [
                sys.executable, "-m", "bench.cli", "suite", "run", str(suite_path), "--results-dir",
                str(tmp / f"{case}-{variant}-{r}"), "--cpus-per-trial", "1", "--data-root", data_root,
                *SUITE_VARIANTS[variant]]
            started = time.time()
            wall, rss = _peak_rss_of(cmd, env)
            walls[variant].append(wall)
            peak[variant] = max(peak.get(variant, 0), rss)
            if variant != "sequential" and r == repeats - 1:  # the last repeat's breakdown, from its store
                phases[variant] = suite_phases(tmp / f"{case}-{variant}-{r}", started, started + wall)
    base = statistics.median(walls["sequential"])
    log(f"  {case}: {n} trials, " + ", ".join(f"{v} {statistics.median(w):.1f}s" for v, w in walls.items()))
    rows.append({"measure": "suite", "workload": case, "variant": f"sequential, one process, {cores} threads "
                 f"({n} trials)", **_stats(walls["sequential"]), "unit": "s"})
    for variant in variants:
        ratio = statistics.median(walls[variant]) / base
        target = SUITE_TARGETS.get((case, variant))
        what = {"packed": "local, packed (--pack auto)", "solo": "local, solo (--pack off)", "ray": "ray, packed"}
        rows.append({"measure": "suite", "workload": case, "variant": f"{what[variant]}: {cores} x 1-CPU workers / "
                     "sequential", **_stats(walls[variant]), "unit": "s", "ratio": ratio, "target": target,
                     "met": None if target is None else ratio <= target})
        rows.append({"measure": "memory", "workload": f"{case} driver ({variant})", "variant": "peak RSS",
                     "median": peak[variant] / 2**20, "unit": "MiB"})
        if ratio > (target or float("inf")) or variant == "ray":
            rows.append({"measure": "profile", "workload": case, "variant": f"{variant} executor",
                         "profile": f"{phases.get(variant, '?')}; the same trials in sequence in one process: "
                                    f"{base:.1f} s"})


def _cifar_cell(data_root: str, tmp: Path) -> Path | None:
    """One cell of cifar10-cpu (every estimator and the control at W1A1, its 3 seeds) for 2 epochs (a two-stage
    method's minimum), or None when CIFAR-10 is not under ``data_root``."""
    import yaml

    from bench.errors import BinbenchError
    from bench.suite import find_suite, load_suite

    body = yaml.safe_load(Path(find_suite("cifar10-cpu")).read_text())
    body.update(name="bench-cifar10-cpu-cell", fp_baseline=False)
    body["grid"]["bits"] = ["W1A1"]
    body["defaults"].update(epochs=2, data_root=data_root)
    path = tmp / "bench-cifar10-cpu-cell.yaml"
    path.write_text(yaml.safe_dump(body))
    from bench.suite import missing_data

    try:
        return None if missing_data(load_suite(str(path), data_root=data_root)) else path
    except BinbenchError as exc:  # not the data: say what
        raise BinbenchError(f"the cifar10-cpu cell does not load: {exc}") from None


def measure_pack_memory(suite_path: Path, data_root: str, rows: list[dict], log) -> None:
    """Peak memory (RSS) of one pack of a suite cell's binary trials against one of its trials alone times the
    pack's size, each in a fresh process (both hold torch and the data once: what packing saves)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    peaks = {}
    for what in ("one", "pack"):
        cmd = [sys.executable, "-c", f"from bench.benchmark import train_cell; train_cell({str(suite_path)!r}, "
                                     f"{data_root!r}, {what!r})"]
        peaks[what] = _peak_rss_of(cmd, env)[1] / 2**20
    from bench.suite import load_suite

    n = sum(1 for t in load_suite(str(suite_path), data_root=data_root).trials if t.estimator != "fp")
    log(f"  pack memory: {n} members {peaks['pack']:.0f} MiB, one trial {peaks['one']:.0f} MiB")
    rows.append({"measure": "memory", "workload": f"{Path(suite_path).stem} trial", "variant": "peak RSS, one trial "
                 "alone", "median": peaks["one"], "unit": "MiB"})
    rows.append({"measure": "memory", "workload": f"{Path(suite_path).stem} pack", "variant": f"peak RSS, pack of "
                 f"{n} / ({n} x one trial alone)", "median": peaks["pack"], "unit": "MiB",
                 "ratio": peaks["pack"] / (n * peaks["one"])})


def train_cell(suite_path: str, data_root: str, what: str) -> None:
    """``measure_pack_memory``'s subject: a suite's binary trials (shortened) as one pack, or its first trial
    alone."""
    from bench.pack import train_pack
    from bench.suite import load_suite
    from bench.train import train

    # two epochs (a two-stage method's stages) of 20 steps: the memory a pack holds, not a full training
    specs = [t.spec.with_values(epochs=2, limit_train_batches=20).with_execution(threads=1, device="cpu")
             for t in load_suite(suite_path, data_root=data_root).trials if t.estimator != "fp"]
    if what == "one":
        train(specs[0])
    else:
        train_pack(specs, fallback=False)


def measure_trial_memory(data_root: str, rows: list[dict], log) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "bench.cli", "run", "-m", "resnet20", "-d", "cifar10", "--data-root",
           data_root, "--epochs", "1", "--json", "--set", "threads=2", "--set", "diagnostics=false"]
    _, rss = _peak_rss_of(cmd, env)
    log(f"  resnet20 trial peak RSS {rss / 2**20:.0f} MiB")
    rows.append({"measure": "memory", "workload": "resnet20/cifar-format trial", "variant": "peak RSS",
                 "median": rss / 2**20, "unit": "MiB"})


# -- the whole benchmark --------------------------------------------------------------------------------------
def machine() -> dict[str, str]:
    from bench.env import cpu_model

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": cpu_model(), "cores": str(os.cpu_count()), "gpu": gpu, "torch": torch.__version__,
            "threads": str(torch.get_num_threads())}


def run_benchmark(out_dir: str | Path, data_root: str | None = None, repeats: int = 3, quick: bool = False,
                  only: set[str] | None = None, log=print) -> list[dict[str, Any]]:
    from bench.data import resolve_data_root

    only = only or {"overhead", "estimators", "ensemble", "suite", "memory"}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    root = str(resolve_data_root(data_root))
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()

    def section(name: str, fn: Callable[[], None]) -> None:
        """Run one measurement; a failure becomes a row and the table is rewritten after every section."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - the other sections' numbers must survive
            log(f"  {name} failed: {type(exc).__name__}: {exc}")
            rows.append({"measure": name, "workload": "", "variant": f"FAILED: {type(exc).__name__}: {exc}"[:300]})
        write(rows, Path(out_dir), time.perf_counter() - t_start, repeats, quick)

    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        n_cifar = 256 if quick else 2560
        cifar_root = str(write_cifar_format(tmp / "cifar", n_cifar, 256))
        has_mnist = (Path(root) / "MNIST" / "raw").is_dir()
        works = []
        if has_mnist:
            works.append(Workload("mlp/mnist", "mlp", "mnist", root, 128, device, threads,
                                  train_subset=6000 if quick else None))
        else:
            log(f"MNIST not found under {root}: the mlp/mnist workloads are skipped (pass --data-root)")
        works.append(Workload("resnet20/cifar-format", "resnet20", "cifar10", cifar_root, 128, device, threads))
        if device.type == "cuda":
            works.append(Workload("resnet18/cifar-format", "resnet18", "cifar10", cifar_root, 128, device, threads))
        if "overhead" in only:
            for w in works:
                log(f"overhead and reference: {w.name}")
                section("overhead", lambda w=w: measure_overhead_and_reference(w, repeats, rows, log))
        if "estimators" in only:
            log("estimator cost")
            mlp = works[0] if has_mnist else Workload("mlp/digits", "mlp", "digits", root, 128, device, threads)
            section("estimator step", lambda: measure_estimators(mlp, 5 if quick else 50, repeats, rows, log))
            conv = next(w for w in works if w.model == "resnet20")
            section("estimator step", lambda: measure_estimators(conv, 2 if quick else 8, repeats, rows, log))
        if "ensemble" in only and (has_mnist or quick):
            log("ensemble evaluation")
            section("ensemble", lambda: measure_ensembles(root, device, quick, rows, log))
        if "suite" in only:
            _suite_sections(section, root, has_mnist, quick, repeats, rows, log, tmp)
        if "memory" in only:
            log("memory")
            section("memory", lambda: measure_trial_memory(cifar_root, rows, log))
    return rows


def _suite_sections(section: Callable, root: str, has_mnist: bool, quick: bool, repeats: int, rows: list[dict],
                    log, tmp: Path) -> None:
    """The suite rows: six short MNIST trials, smoke (and its pack's memory), one cifar10-cpu cell."""
    from bench.suite import find_suite

    log("suite throughput")
    if has_mnist:
        case = _mnist_case(root, 2 if quick else 6, 1, 2000 if quick else 10000, tmp)
        section("suite", lambda: measure_suite("mnist-6-trials", case, root, repeats, rows, log, tmp))
    if not quick:  # 33 digits trials under four variants: minutes, not a quick check
        section("suite", lambda: measure_suite("smoke", find_suite("smoke"), root, repeats, rows, log, tmp))
        section("memory", lambda: measure_pack_memory(Path(find_suite("smoke")), root, rows, log))
    cell = _cifar_cell(root, tmp)
    if cell is not None and not quick:  # 33 CIFAR-10 trials: one repeat (minutes each)
        section("suite", lambda: measure_suite("cifar10-cpu-cell", cell, root, 1, rows, log, tmp, ("packed", "solo")))
    elif cell is None:
        log(f"CIFAR-10 not found under {root}: the cifar10-cpu cell is skipped (pass --data-root)")


def _command(quick: bool, repeats: int) -> str:
    """The command that made the table (its arguments as given, paths as the user wrote them)."""
    if sys.argv and Path(sys.argv[0]).name in ("binbench", "cli.py", "__main__.py") and "benchmark" in sys.argv:
        return "binbench " + " ".join(sys.argv[sys.argv.index("benchmark"):])
    return f"binbench benchmark{' --quick' if quick else ''} --repeats {repeats}"


def write(rows: list[dict[str, Any]], out: Path, seconds: float, repeats: int, quick: bool) -> None:
    from bench.env import git_commit
    from bench.report.paths import relative  # no machine path in a committed table (--data-root, --out)

    out.mkdir(parents=True, exist_ok=True)
    m = machine()
    tag = "gpu" if m["gpu"] != "none" else "cpu"
    cols = ["measure", "workload", "variant", "median", "min", "max", "unit", "ratio", "target", "met"]
    with open(out / f"benchmark-{tag}.csv", "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        wr.writeheader()
        wr.writerows(rows)

    def f(v: Any, nd: int = 3) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        if isinstance(v, bool):
            return "yes" if v else "**no**"
        return f"{v:.{nd}g}" if isinstance(v, float) else str(v)

    lines = [f"# binbench benchmark ({tag})", "",
             f"- machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu']}, torch {m['torch']}",
             f"- commit {git_commit()}; {repeats} repeats per measurement, medians (min-max); "
             f"{'QUICK (reduced sizes) ' if quick else ''}run took {seconds:.0f} s",
             f"- made by: {relative(_command(quick, repeats), out)}", "",
             "| measure | workload | variant | median | min | max | unit | ratio | target | met |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["measure"] != "profile":
            lines.append("| " + " | ".join(f(r.get(c)) for c in cols) + " |")
    lines += ["", "ratio: binbench's time over the named baseline's (lower is better); target: the bound the "
              "project set (issues 7 and 16). Suite rows: wall time of `binbench suite run` (a fresh process and "
              "results folder each) against the same trials trained one after another in one fresh process with "
              "all cores, nothing tracked."]
    profiles = [r for r in rows if r["measure"] == "profile"]
    if profiles:
        lines += ["", "## Where the time goes in the rows that miss their target", ""]
        lines += [f"- {r['workload']}, {r['variant']}: {r['profile']}" for r in profiles]
    (out / f"benchmark-{tag}.md").write_text("\n".join(lines) + "\n")

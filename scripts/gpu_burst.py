"""A GPU lease made into a table: what ``scripts/gpu-burst.sh`` runs (see the README's "A GPU burst").

In at most ``--minutes`` (9) on one GPU, with no network and neither MLflow nor Ray installed (the device image
has torch, torchvision, pandas, seaborn, pytest; nothing here imports MLflow or Ray, and ``--dry-run`` refuses to):

1. the CUDA tests (``pytest -k cuda``: no host sync in a packed step, a pack's float64 numbers on the GPU);
2. a GPU epoch of ResNet-20 against the hand-written floor (``bench.benchmark``), and a pack of every estimator
   against the same trials one after another (steps only);
3. BiPer's Table 2 setting (ResNet-20, CIFAR-10 from the JPEG copy, W1A32, every estimator + the frozen control,
   3 seeds, common recipe; the suite ``cifar10-w1a32``) trained as one pack for as many epochs as the time left
   holds: a calibration pack measures an epoch, then the pack trains from scratch with the cosine schedule of
   that many epochs (a full run at that budget, not a truncated longer one);
4. into ``--out`` (at most 8 files): ``table.md`` (method, W/A, top-1 mean +- std over seeds, the published
   number, the budget, the command, commit and hardware), ``curves.png`` (test top-1 per epoch), ``runs.jsonl``
   (every member's identity, config and per-epoch history: the store), ``measurements.md``, ``burst.log``.

``--dry-run`` runs the same code on a CPU at tiny sizes (synthetic CIFAR-format images, a few steps), in under
two minutes: what ``tests/test_gpu_burst.py`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _traceback() -> str:
    """The current traceback with the checkout's path left out: burst.log is committed, and names no machine path."""
    return traceback.format_exc().replace(f"{REPO}/", "")


class _Refuse:
    """An import hook that refuses MLflow and Ray: the burst path must run on an image without them."""

    def find_spec(self, name: str, path=None, target=None):
        if name.split(".")[0] in ("mlflow", "ray"):
            raise ImportError(f"the GPU burst imported {name}: the device image has no MLflow or Ray")
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="the output folder (created; at most 8 files are written)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on a CPU: checks the path, no numbers")
    ap.add_argument("--minutes", type=float, default=9.0, help="the whole burst's time budget (default 9)")
    ap.add_argument("--table-only", action="store_true",
                    help="skip the CUDA tests and the measurements: a short lease's whole time goes to the table")
    ap.add_argument("--data-root", default=os.environ.get("BINBENCH_DATA"),
                    help="where CIFAR-10 is (the JPEG copy's CIFAR-10-images/ or torchvision's files)")
    args = ap.parse_args()
    sys.meta_path.insert(0, _Refuse())
    import torch

    if args.dry_run:
        torch.set_num_threads(1)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu-burst: no CUDA device here; on a CPU run it with --dry-run", file=sys.stderr)
        return 2
    if not args.dry_run and _missing_cifar(args.data_root):
        print(f"gpu-burst: CIFAR-10 is not under --data-root {args.data_root!r} (the JPEG copy's CIFAR-10-images/ "
              "or torchvision's cifar-10-batches-py/): carry it and pass its folder", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    burst = Burst(out, args.dry_run, args.minutes * 60, args.data_root, args.table_only)
    burst.run()
    return 0


class Burst:
    def __init__(self, out: Path, dry: bool, budget_s: float, data_root: str | None, table_only: bool = False):
        import torch

        self.out, self.dry, self.budget, self.t0 = out, dry, budget_s, time.monotonic()
        self.device = "cuda" if torch.cuda.is_available() and not dry else "cpu"
        self.data_root, self.table_only = data_root, table_only
        self.cifar_format: Path | None = None  # synthetic CIFAR-format images, written once when first needed
        self.lines: list[str] = []
        self.measured: list[str] = []
        self.fast = True  # bf16 + channels_last on a GPU; dropped (and said) if a pack fails with them
        self.tmp = Path(tempfile.mkdtemp(prefix="binbench-burst-"))  # synthetic images: removed at the end

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def log(self, text: str) -> None:
        stamp = f"[{time.monotonic() - self.t0:6.1f} s] "
        print(stamp + text, flush=True)
        self.lines.append(stamp + text)
        (self.out / "burst.log").write_text("\n".join(self.lines) + "\n")

    def run(self) -> None:
        import torch

        from bench.env import git_commit

        name = torch.cuda.get_device_name(0) if self.device == "cuda" else "CPU (dry run)"
        self.log(f"gpu-burst on {name}, torch {torch.__version__}, commit {git_commit()}, budget {self.budget:.0f} s")
        try:
            if not self.table_only:
                self.cuda_tests()
                # a measurement that fails is logged and the burst goes on: the table is what the lease is for
                for stage in (self.epoch_vs_floor, self.packed_vs_solo):
                    self.guarded(stage)
            self.table()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        (self.out / "measurements.md").write_text("# GPU burst measurements\n\n" + "\n".join(self.measured) + "\n")
        self.log(f"done in {time.monotonic() - self.t0:.0f} s; files: "
                 f"{', '.join(sorted(p.name for p in self.out.iterdir()))}")

    def guarded(self, stage) -> None:
        """Run one measurement stage; a failure is logged with its traceback (into burst.log) and not raised."""
        try:
            stage()
        except Exception as exc:  # noqa: BLE001 - any failure of a measurement must leave the table its time
            if self.dry:
                raise  # the dry run is a test: a broken stage must fail it
            self.log(f"{stage.__name__} failed: {exc!r}\n{_traceback()}")
            self.measured.append(f"- {stage.__name__}: failed ({exc!r}); see burst.log")

    # -- 1. the CUDA tests ----------------------------------------------------------------------------------
    def cuda_tests(self) -> None:
        if self.dry:
            self.log("CUDA tests: not run in a dry run (they skip without CUDA)")
            return
        cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda", "--timeout", "150",
               "tests/test_host_sync.py", "tests/test_pack.py"]
        try:
            res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=200)
            tail = (res.stdout + res.stderr).strip().splitlines()[-3:]
            self.log(f"CUDA tests (exit {res.returncode}): " + " | ".join(tail))
            self.measured.append(f"- CUDA tests: exit {res.returncode}: {' | '.join(tail)}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.log(f"CUDA tests did not complete: {exc}")

    # -- 2. measurements ------------------------------------------------------------------------------------
    def synthetic(self) -> Path:
        """CIFAR-format images of random pixels (the measurements' data, and a dry run's table's)."""
        from bench.benchmark import write_cifar_format

        if self.cifar_format is None:
            self.cifar_format = write_cifar_format(self.tmp, 256 if self.dry else 10240, 32 if self.dry else 1024)
        return self.cifar_format

    def epoch_vs_floor(self) -> None:
        import torch

        from bench.benchmark import Workload, measure_overhead_and_reference

        root = self.synthetic()
        w = Workload("resnet20/cifar-format", "resnet20", "cifar10", str(root), 32 if self.dry else 128,
                     torch.device(self.device), 1 if self.dry else 8, train_subset=64 if self.dry else None)
        rows: list[dict] = []
        measure_overhead_and_reference(w, 1, rows, self.log)
        for r in rows:
            if "ratio" in r:
                self.measured.append(f"- {r['measure']} {r['workload']}: {r['variant']} = {r['ratio']:.3g} "
                                     f"(target {r.get('target')})")
            elif "median" in r:
                self.measured.append(f"- epoch {r['workload']} {r['variant']}: {r['median']:.3g} s")

    def packed_vs_solo(self) -> None:
        from bench.pack import train_pack
        from bench.train import train

        specs = self.specs(self.synthetic(), steps=1 if self.dry else 15, epochs=2, seeds=(0,))
        train(specs[0])  # first-call costs (kernels, allocator) out of the measurement
        t = time.perf_counter()
        train_pack(specs, fallback=False)
        packed = time.perf_counter() - t
        t = time.perf_counter()
        for s in specs:
            train(s)
        solo = time.perf_counter() - t
        line = (f"packed vs solo, resnet20 W1A32, {len(specs)} trials x 2 epochs of {1 if self.dry else 15} steps "
                f"+ evaluation: "
                f"packed {packed:.1f} s, one after another {solo:.1f} s, ratio {packed / solo:.2f}")
        self.log(line)
        self.measured.append(f"- {line}")

    # -- 3. the table ---------------------------------------------------------------------------------------
    def specs(self, root: Path | str, steps: int | None, epochs: int, seeds: tuple[int, ...]) -> list:
        """The suite cifar10-w1a32's common-recipe trials (every estimator and the control) at this budget."""
        from bench.suite import load_suite

        trials = [t for t in load_suite("cifar10-w1a32", data_root=str(root)).trials
                  if t.recipe == "common" and t.estimator != "fp" and t.seed in seeds]
        # one thread on a CPU: OpenMP threads that wait on each other collapse on a shared machine
        execution = {"device": self.device, "threads": 1 if self.dry else 8, "data_root": str(root)}
        # the common recipe runs bf16 autocast and channels_last on CUDA (nothing on a CPU); the fallback drops them
        values = {"epochs": epochs, **({"limit_train_batches": steps} if steps else {}),
                  **({} if self.fast else {"amp": False, "channels_last": False}),
                  **({"train_subset": 256, "batch_size": 32, "diagnostics": False} if self.dry else {})}
        return [t.spec.with_values(**values).with_execution(**execution) for t in trials]

    def table(self) -> None:
        from bench.pack import train_pack

        root = self.synthetic() if self.dry else self.data_root
        # two epochs (a two-stage method's minimum) of a few steps each: an epoch's cost, extrapolated
        seeds = (0,) if self.dry else (0, 1, 2)  # a dry run: one seed, the path and not the statistics
        t = time.perf_counter()
        try:
            calib = self.specs(root, steps=1 if self.dry else 25, epochs=2, seeds=seeds)
            res = train_pack(calib, fallback=False)
        except Exception as exc:  # noqa: BLE001 - the one retry a lease affords: plain fp32, NCHW
            if self.dry or not self.fast:
                raise
            self.log(f"the pack failed with bf16 + channels_last ({exc!r}); again in fp32\n{_traceback()}")
            self.fast = False
            calib = self.specs(root, steps=25, epochs=2, seeds=seeds)
            res = train_pack(calib, fallback=False)
        took = time.perf_counter() - t
        steps = calib[0].config.limit_train_batches
        full = self._steps_per_epoch(calib[0])
        # the second epoch (the first pays one-time costs: kernels, the allocator)
        train_s = sum(r.history[-1]["epoch_seconds"] for r in res)
        eval_s = sum(r.history[-1].get("eval_seconds", 0.0) for r in res)
        epoch_s = train_s * full / max(1, steps) + eval_s
        margin = 45.0  # the table, the figure and the files
        epochs = 2 if self.dry else max(2, int((self.left() - margin) / max(epoch_s, 1e-6)))
        self.log(f"calibration: {len(calib)} members, {steps} steps in {took:.1f} s; an epoch of {full} steps "
                 f"~{epoch_s:.1f} s; {self.left():.0f} s left: {epochs} epochs")
        specs = self.specs(root, steps=1 if self.dry else None, epochs=epochs, seeds=seeds)
        t = time.perf_counter()
        results = train_pack(specs, fallback=False)
        self.log(f"trained {len(specs)} members x {epochs} epochs as one pack in {time.perf_counter() - t:.0f} s")
        self.write_table(specs, results, epochs, time.perf_counter() - t)

    @staticmethod
    def _steps_per_epoch(spec) -> int:
        """The steps of a full epoch of ``spec`` (its loader's batches; the step limit applies in training)."""
        import torch

        from bench.data import get_dataset
        from bench.train import make_loaders

        cfg = spec.config
        return len(make_loaders(cfg, get_dataset(cfg.dataset), torch.device("cpu"), False).train)

    def write_table(self, specs: list, results: list, epochs: int, seconds: float) -> None:
        from bench.env import git_commit

        rows: dict[str, list[float]] = {}
        with open(self.out / "runs.jsonl", "w") as fh:
            for spec, res in zip(specs, results, strict=True):
                cfg = spec.config
                rows.setdefault(cfg.estimator, []).append(res.top1 if res.status == "finished" else float("nan"))
                fh.write(json.dumps({"key": spec.key, "estimator": cfg.estimator, "seed": cfg.seed,
                                     "status": res.status, "top1": res.top1, "config": spec.config.to_dict(),
                                     "history": res.history}, default=str) + "\n")
        published = _published()
        lines = ["# BiPer Table 2 setting: ResNet-20, CIFAR-10 (JPEG copy), W1A32, common recipe, as one pack", "",
                 f"- budget: {epochs} epoch(s) (cosine over {epochs}), seeds "
                 f"{', '.join(sorted({str(s.config.seed) for s in specs}))}; trained in {seconds:.0f} s"
                 f"{' (DRY RUN: synthetic images, 1 step an epoch: no numbers)' if self.dry else ''}",
                 f"- made by: {self.command()}; commit {git_commit()}; {self._hw()}; execution "
                 f"{'bf16 autocast, channels_last' if self.device == 'cuda' and specs[0].config.amp else 'fp32'}",
                 "- the papers train 400-1000 epochs: at this budget the rows rank estimators early in training",
                 "", "| Method | W/A | Top-1 (mean ± std) | n | published |", "|---|---|---|---|---|"]
        for est, xs in sorted(rows.items(), key=lambda kv: -statistics.fmean(kv[1])):
            std = statistics.stdev(xs) if len(xs) > 1 else 0.0
            pub = published.get(est)
            lines.append(f"| {est} | 1/32 | {statistics.fmean(xs):.2f} ± {std:.2f} | {len(xs)} | "
                         f"{'' if pub is None else f'{pub:.2f}'} |")
        (self.out / "table.md").write_text("\n".join(lines) + "\n")
        self.curves(specs, results)

    def command(self) -> str:
        """The command that made these files: the output folder by its own name, every other path as reports
        write them (``bench.report.paths.relative``: no machine path)."""
        from bench.report.paths import relative

        args = list(sys.argv[1:])
        for i, a in enumerate(args[:-1]):
            if a == "--out":
                args[i + 1] = self.out.name
        return relative(" ".join(["scripts/gpu-burst.sh", *args]), self.out)

    def _hw(self) -> str:
        import torch

        return torch.cuda.get_device_name(0) if self.device == "cuda" else f"{os.cpu_count()} CPU cores"

    def curves(self, specs: list, results: list) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.9, 3.2))
        by_est: dict[str, list[list[float]]] = {}
        for spec, res in zip(specs, results, strict=True):
            by_est.setdefault(spec.config.estimator, []).append([h.get("test_top1", float("nan"))
                                                                 for h in res.history])
        for est, curves in sorted(by_est.items()):
            n = min(len(c) for c in curves)
            mean = [statistics.fmean(c[i] for c in curves) for i in range(n)]
            ax.plot(range(1, n + 1), mean, marker="o", ms=3, label=est)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test top-1 (%)")
        ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        fig.savefig(self.out / "curves.png", dpi=150)
        plt.close(fig)


def _missing_cifar(root: str | None) -> bool:
    from bench.errors import BinbenchError
    from bench.suite import load_suite, missing_data

    try:
        return bool(missing_data(load_suite("cifar10-w1a32", data_root=root)))
    except BinbenchError:
        return True


def _published() -> dict[str, float]:
    """BiPer Table 2's ResNet-20 W1A32 rows (bench/reference/published.csv), by estimator name."""
    import csv

    out = {}
    with open(REPO / "bench" / "reference" / "published.csv") as fh:
        for r in csv.DictReader(fh):
            if r["dataset"] == "cifar10" and r["arch"] == "resnet20" and r["w_bits"] == "1" and r["a_bits"] == "32":
                out[r["method"]] = float(r["top1"])
    return out


if __name__ == "__main__":
    sys.exit(main())

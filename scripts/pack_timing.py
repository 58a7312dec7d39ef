"""Side-by-side wall time of one suite cell trained packed (bench.pack.train_pack) and one trial after another in
one process (bench.train.train), untracked: every weight estimator (the control included), seed 0, in the smoke
suite's W1A1 digits MLP or (``--cell cifar10-cpu``) the cifar10-cpu suite's W1A32 conv net on a subset of its
training images (needs the CIFAR-10 files: ``--data-root`` or BINBENCH_DATA). ``--grouped`` packs convolutions as
one grouped convolution (CUDA's way) instead of the CPU's one per member. A measurement, not a test: the numbers
depend on the machine and its load.

    python scripts/pack_timing.py [--cell smoke|cifar10-cpu] [--grouped] [--epochs 10] [--seeds 1] [--repeat 2]
"""

from __future__ import annotations

import argparse
import time

import torch

import bench
from bench.estimator import get_estimator_class
from bench.pack import train_pack
from bench.pack.model import PackedConv2d
from bench.spec import resolve
from bench.train import train

CELLS = {
    "smoke": {"model": "mlp", "dataset": "digits", "val_split": 0.1, "threads": 1,
              "model_args": {"hidden": [128, 128], "binarize_first_last": True}},
    "cifar10-cpu": {"model": "convnet", "dataset": "cifar10", "val_split": 0.1, "threads": 1, "a_bits": 32,
                    "lr": 0.03, "warmup_epochs": 0, "batch_size": 128, "eval_batch_size": 250, "train_subset": 2000,
                    "model_args": {"widths": [16, 32, 64], "binarize_first_last": True}},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--cell", choices=sorted(CELLS), default="smoke")
    ap.add_argument("--grouped", action="store_true", help="one grouped convolution over the members")
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    PackedConv2d.grouped = True if args.grouped else None
    cell = {**CELLS[args.cell], **({"data_root": args.data_root} if args.data_root else {})}
    names = [n for n in bench.list_estimators() if "weight" in get_estimator_class(n).kinds]
    specs = [resolve({**cell, "estimator": n, "seed": s, "epochs": args.epochs,
                      **({"estimator_hparams": {"samples": 8}} if get_estimator_class(n).eval_cost({}) > 8 else {})})
             for n in names for s in range(args.seeds)]
    train(specs[0])  # imports and first-call costs out of the measurement
    for r in range(args.repeat):  # interleaved: the machine's load drifts
        t = time.perf_counter()
        packed = train_pack(specs, fallback=False)
        tp = time.perf_counter() - t
        t = time.perf_counter()
        solo = [train(s) for s in specs]
        ts = time.perf_counter() - t
        ep_p = sum(sum(h["epoch_seconds"] for h in res.history) for res in packed)
        ep_s = sum(sum(h["epoch_seconds"] for h in res.history) for res in solo)
        same = all(a.top1 == b.top1 for a, b in zip(packed, solo, strict=True))
        label = args.cell + (" (grouped conv)" if args.grouped else "")
        print(f"{label} round {r + 1}: {len(specs)} trials x {args.epochs} epochs: packed {tp:.1f} s, one after "
              f"another {ts:.1f} s, ratio {ts / tp:.2f}; training steps only {ep_p:.1f} s vs {ep_s:.1f} s, ratio "
              f"{ep_s / ep_p:.2f}; same final top-1 for every trial: {same}")


if __name__ == "__main__":
    main()

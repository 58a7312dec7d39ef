#!/usr/bin/env bash
# A GPU lease made into a table (README: "A GPU burst"): the CUDA tests, GPU epoch vs floor, packed vs solo, and
# BiPer Table 2's setting (ResNet-20, CIFAR-10 JPEG copy, W1A32, every estimator + control, 3 seeds) as one pack
# for as many epochs as fit, in at most 9 minutes; no MLflow or Ray needed.
#   scripts/gpu-burst.sh --out DIR [--data-root DIR] [--minutes 9]     on a machine with a GPU
#   scripts/gpu-burst.sh --out DIR --dry-run                           on a CPU: the same code at tiny sizes
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec python3 scripts/gpu_burst.py "$@"

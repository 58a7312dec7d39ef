"""What a run records about where it ran: versions, git commit, hardware."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch


@functools.cache
def git_commit() -> str:
    """Commit of the binbench checkout this code runs from ('+dirty' when modified), or 'unknown'."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return _shipped_commit()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return _shipped_commit()


def _shipped_commit() -> str:
    """A copy without ``.git`` (a working tree sent to a GPU machine) names its commit in BINBENCH_GIT_COMMIT."""
    given = os.environ.get("BINBENCH_GIT_COMMIT", "").strip()
    return f"{given} (BINBENCH_GIT_COMMIT: a copy without .git)" if given else "unknown"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("binbench", "torch", "torchvision", "numpy", "pandas", "mlflow", "ray"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    out["torch"] = torch.__version__  # keeps the build tag (+cu130, +cpu)
    out["cuda"] = torch.version.cuda or "none"
    return out


@functools.cache
@functools.cache
def _cpuinfo() -> str:
    """/proc/cpuinfo, read once per process ('' where there is none): cpu_model and cpu_id both parse it."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_id(cpuinfo: str | None = None) -> str:
    """The CPU's vendor and family/model/stepping (``AuthenticAMD 25/17/1``) from ``cpuinfo`` (default: this
    machine's /proc/cpuinfo), or '' where there is none. A virtual machine's model name can be only "AMD EPYC"
    across generations whose float32 kernels round differently; these numbers tell them apart."""
    if cpuinfo is None:
        cpuinfo = _cpuinfo()
    first = cpuinfo.strip().split("\n\n", 1)[0]  # the first processor's block
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}
    if not {"vendor_id", "cpu family", "model"} & fields.keys():
        return ""
    return " ".join([fields.get("vendor_id", "?"),
                     "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping"))])


def cpu_capability() -> str:
    """The instruction set torch's CPU kernels dispatch to (AVX512, AVX2, ...): it decides their rounding."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


def hardware(device: torch.device | None = None) -> dict[str, str]:
    """Where a run ran. Float32 training is chaotic: a run repeats to the bit only with the same torch, threads and
    CPU kernels (cpu_id, cpu_capability); ``binbench replay`` names whichever of these differ."""
    out = {"cpu": cpu_model(), "cpu_id": cpu_id(), "cpu_capability": cpu_capability(), "cores": str(os.cpu_count()),
           "torch_threads": str(torch.get_num_threads())}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(device if device is not None and device.type == "cuda" else 0)
    else:
        out["gpu"] = "none"
    return out


def describe(device: torch.device | None = None) -> dict[str, object]:
    return {"git_commit": git_commit(), "versions": package_versions(), "hardware": hardware(device)}

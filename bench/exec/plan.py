"""How a suite's trials are packed: which trials train as one program, and how many at once.

Trials pack when they share model, data, batch size and epochs (``bench.pack.pack_key``); a search suite's trials
run alone (each Tune trial samples its own point). ``--pack auto`` packs every group as far as memory allows (the
estimate of :func:`member_bytes` against the device's free memory) and the workers share the trials evenly (on a
CPU, two single-thread processes use two cores, where one pack in one process would use one); ``--pack N`` caps a
pack at N trials; ``--pack off`` runs every trial alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bench.errors import BinbenchError
from bench.exec.trial import Pack
from bench.suite import Trial

#: the share of the free memory the packs of one worker may plan to use (the estimate is rough, the rest margin)
MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class PackMode:
    """``--pack``: auto (as large as memory allows), off (every trial alone) or a cap of N trials per pack."""

    mode: str  # auto | off | cap
    cap: int | None = None

    @classmethod
    def parse(cls, text: str | int) -> PackMode:
        word = str(text).strip().lower()
        if word in ("auto", "off"):
            return cls(word)
        if word.isdigit() and int(word) >= 1:
            return cls("off") if int(word) == 1 else cls("cap", int(word))
        raise BinbenchError(f"--pack must be auto, off or a number of trials >= 1 (the largest pack), got {text!r}")


def plan_packs(trials: Sequence[Trial], mode: PackMode, workers: int = 1, search: bool = False,
               memory: int | None = None) -> list[Pack]:
    """The packs ``trials`` run in (every trial once). ``workers``: how many run at once; ``memory``: the bytes the
    packs of one worker may use (default: a share of the free memory of the trials' device).

    Order: first-seen for one worker and for a search; for several workers the costliest pack first (longest
    processing time first), so that the workers' last packs end close together instead of one worker training a
    suite's longest pack alone at the end (a suite with ``budgets`` lists its short packs first)."""
    if search:
        return [Pack((t,)) for t in trials]
    if mode.mode == "off":
        return _costliest_first([Pack((t,)) for t in trials], workers)
    from bench.pack import packable

    by_key = {t.spec.key: t for t in trials}
    groups = [[by_key[s.key] for s in g] for g in packable([t.spec for t in trials])]
    # auto: the workers share the trials evenly (a pack's time grows with its size: one pack per worker)
    cap = mode.cap or math.ceil(len(trials) / max(1, workers))
    packs: list[list[Trial]] = []
    for group in groups:
        size = min(len(group), cap, max_members(group[0], memory))
        packs.extend(_split(group, math.ceil(len(group) / size)))
    return _costliest_first([Pack(tuple(p)) for p in packs], workers)


def _costliest_first(packs: list[Pack], workers: int) -> list[Pack]:
    """``packs`` by their rough training cost (``bench.suite.trial_flop`` summed over members), costliest first,
    ties in their given order; as given for one worker."""
    if workers <= 1 or len(packs) <= 1:
        return packs
    from bench.suite import trial_flop

    cache: dict[tuple, float] = {}
    cost = {id(p): sum(trial_flop(t, cache) for t in p.trials) for p in packs}
    return sorted(packs, key=lambda p: -cost[id(p)])


def _split(group: list[Trial], n: int) -> list[list[Trial]]:
    """``group`` in ``n`` consecutive parts of sizes that differ by at most one."""
    q, r = divmod(len(group), n)
    out, i = [], 0
    for k in range(n):
        j = i + q + (1 if k < r else 0)
        out.append(group[i:j])
        i = j
    return [p for p in out if p]


def max_members(trial: Trial, memory: int | None = None) -> int:
    """How many members like ``trial`` fit in ``memory`` bytes (default: a share of the device's free memory)."""
    budget = memory if memory is not None else free_memory(trial.spec.config.device)
    return max(1, int(budget * MEMORY_SHARE // max(1, member_bytes(trial))))


def free_memory(device: str) -> int:
    """Free bytes where the trials train: the GPU's free memory for CUDA, the machine's available memory else."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available() or device.startswith("cuda:"):
        return int(torch.cuda.mem_get_info()[0])
    import psutil

    return int(psutil.virtual_memory().available)


def member_bytes(trial: Trial) -> int:
    """An estimate of what one member needs while it trains: its parameters four times (weights, gradients, two
    optimizer states) and the outputs of every leaf module for one batch three times (the forward's activations,
    what backward keeps, their gradients), in float32. A forward of two images measures the outputs."""
    import torch

    from bench.data import get_dataset
    from bench.train import build_model

    cfg = trial.spec.config
    ds = get_dataset(cfg.dataset)
    with torch.random.fork_rng():
        model, _, _ = build_model(cfg, ds)
    out = [0]

    def count(module: torch.nn.Module, args: object, result: object) -> None:
        if isinstance(result, torch.Tensor) and not list(module.children()):
            out[0] += result.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad(), torch.random.fork_rng():
        model.eval()
        model(torch.zeros(2, *ds.shape))
    for h in hooks:
        h.remove()
    params = sum(p.numel() for p in model.parameters())
    return 4 * (4 * params + 3 * out[0] // 2 * cfg.batch_size)


def describe(packs: Sequence[Pack]) -> list[str]:
    """One line per pack: its size and what its members share; for ``suite show`` and the driver's log."""
    lines = []
    for p in packs:
        t = p.trials[0]
        what = f"{t.model} {t.dataset} {t.bits}, {t.spec.config.epochs} epochs, batch {t.spec.config.batch_size}"
        lines.append(f"{len(p.trials)} trial(s) as one program: {what}" if len(p.trials) > 1 else
                     f"alone: {t.label}")
    return lines

"""No host synchronisation inside a training step (issue 23): every estimator's quantize, forward, backward,
extra_loss and constrain_ run on the device without asking it for a value.

On a GPU a host sync stalls the step until the device has caught up (``.item()``, ``.cpu()``, ``.tolist()``,
``float(t)``, ``bool(t)`` and so a Python ``if`` on a tensor, ``torch.nonzero``, boolean-mask indexing, whose result
shape depends on the values). ``torch.cuda.set_sync_debug_mode`` sees them on CUDA only; on a CPU this module traps
the Python entry points of those operations on ``torch.Tensor`` and ``torch`` for the duration of the training
steps (forward and backward: custom autograd Functions run their Python ``backward`` through the same methods) and
records every call whose direct caller is code of this repository (the core's step, the layers, every estimator,
the example plugins). A call made inside torch itself (an optimizer reading a CPU step count) is torch's, and a
CPU scalar there is no device sync. The trap is shown to catch each kind of sync by an estimator written to sync.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import bench
import bench.train
from bench.estimator import ESTIMATORS, Estimator
from bench.estimator import get_estimator_class as est_class
from bench.functional import sign, surrogate_sign
from bench.pack import Pack, start_members
from bench.spec import resolve

from .conftest import REPO

#: Tensor methods that copy a value to the host (or make Python read one)
VALUE_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__", "__complex__",
                 "__format__")
#: operations whose result's shape depends on the values (the host must learn it)
SHAPE_FUNCTIONS = ("nonzero", "argwhere", "masked_select", "unique", "unique_consecutive")
#: what counts as "our code": the core, the built-in estimators, the example plugins, and this module (whose
#: deliberately syncing estimator shows that the trap works)
OWN_CODE = (*(str(REPO / d) + "/" for d in ("bench", "estimators", "examples")), __file__)

BASE = {"model": "mlp", "dataset": "digits", "batch_size": 16, "threads": 1, "diagnostics": False,
        "model_args": {"hidden": [24, 24], "binarize_first_last": True}, "a_bits": 1, "epochs": 3,
        "limit_train_batches": 2, "stage_handoff": "last"}
CONV = {**BASE, "model": "convnet", "model_args": {"widths": [4, 8], "binarize_first_last": True}}


@dataclass(frozen=True)
class Sync:
    what: str
    where: str  # file:line of the direct caller

    def __str__(self) -> str:
        return f"{self.what} at {self.where}"


def _caller() -> str | None:
    """file:line of the code that called the trapped operation (the frame above the trap's wrapper and ``note``),
    if it is code of this repository."""
    frame = sys._getframe(3)
    if frame is None or not frame.f_code.co_filename.startswith(OWN_CODE):
        return None
    return f"{Path(frame.f_code.co_filename).relative_to(REPO)}:{frame.f_lineno}"


def _is_mask(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, Tensor) and i.dtype in (torch.bool, torch.uint8) for i in items)


@contextlib.contextmanager
def sync_trap() -> Iterator[list[Sync]]:
    """Record the host syncs our code makes while the block runs (see the module's docstring)."""
    found: list[Sync] = []

    def note(what: str) -> None:
        where = _caller()
        if where is not None:
            found.append(Sync(what, where))

    def method(name: str, orig):
        def trapped(self, *args, **kwargs):
            note(f"Tensor.{name}")
            return orig(self, *args, **kwargs)
        return trapped

    def function(name: str, orig):
        def trapped(*args, **kwargs):
            note(f"torch.{name}")
            return orig(*args, **kwargs)
        return trapped

    def indexing(name: str, orig):
        def trapped(self, index, *args):
            if _is_mask(index):
                note(f"boolean-mask Tensor.{name}")
            return orig(self, index, *args)
        return trapped

    def to(orig):
        def trapped(self, *args, **kwargs):
            target = kwargs.get("device", args[0] if args else None)
            if isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu":
                note("Tensor.to(cpu)")
            return orig(self, *args, **kwargs)
        return trapped

    patches: list[tuple[Any, str, Any]] = []
    for name in VALUE_METHODS:
        patches.append((torch.Tensor, name, method(name, getattr(torch.Tensor, name))))
    for name in SHAPE_FUNCTIONS:
        patches.append((torch.Tensor, name, method(name, getattr(torch.Tensor, name))))
        patches.append((torch, name, function(name, getattr(torch, name))))
    for name in ("__getitem__", "__setitem__"):
        patches.append((torch.Tensor, name, indexing(name, getattr(torch.Tensor, name))))
    patches.append((torch.Tensor, "to", to(torch.Tensor.to)))
    own = [(owner, name, name in vars(owner), vars(owner).get(name)) for owner, name, _ in patches]
    try:
        for owner, name, new in patches:
            setattr(owner, name, new)
        yield found
    finally:  # what the class held itself goes back; what it inherited (from TensorBase) is inherited again
        for owner, name, held, old in reversed(own):
            if held:
                setattr(owner, name, old)
            else:
                delattr(owner, name)


def _trapped_steps(monkeypatch: pytest.MonkeyPatch, found: list[Sync]) -> None:
    """Run every packed step (and every solo step) under the trap; nothing else (evaluation, checkpoints,
    the per-epoch reads of the loss) is trapped."""
    pack_step, solo_step = Pack.step, bench.train.training_step

    def packed(self, x, y):
        with sync_trap() as syncs:
            out = pack_step(self, x, y)
        found.extend(syncs)
        return out

    def solo(*args, **kwargs):
        with sync_trap() as syncs:
            out = solo_step(*args, **kwargs)
        found.extend(syncs)
        return out

    monkeypatch.setattr(Pack, "step", packed)
    monkeypatch.setattr(bench.train, "training_step", solo)


def train_packed(configs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> list[Sync]:
    found: list[Sync] = []
    _trapped_steps(monkeypatch, found)
    members = start_members([resolve(c) for c in configs])
    results = Pack(members, []).run()
    assert [r.status for r in results] == ["finished"] * len(configs)
    assert len(results[0].history) == BASE["epochs"]
    return found


def _names(kind: str) -> list[str]:
    return [n for n in bench.list_estimators() if kind in est_class(n).kinds and not n.startswith("test_")]


#: hyperparameters that open the paths a default run leaves closed: a loss term, a projection after the step
OPEN_PATHS = {"biper": {"tau": 0.03}, "ste": {"clip": 1.0}, "vispa": {"normalize": "persistent"}}


@pytest.mark.parametrize("scaling", ["alpha", "mean", "native"])
def test_no_weight_estimator_syncs_the_host_in_a_packed_step(scaling, monkeypatch):
    """Every weight estimator (and the paths a loss term or a projection opens) under each scaling: ``mean`` calls
    ``latent`` in every forward; ``native`` runs the estimators that scale inside ``quantize`` (internal scaling)."""
    names = [n for n in _names("weight") if scaling != "native" or est_class(n).native_scaling == "internal"]
    configs = [{**BASE, "estimator": n, "seed": i, "scaling": scaling} for i, n in enumerate(names)]
    if scaling == "alpha":
        configs += [{**BASE, "estimator": n, "estimator_hparams": h, "seed": 10 + i}
                    for i, (n, h) in enumerate(OPEN_PATHS.items()) if n in names]
        if "vispa" in names:
            configs.append({**BASE, "estimator": "vispa", "estimator_hparams": {"rank": 0, "clamp": True}, "seed": 20})
    found = train_packed(configs, monkeypatch)
    assert found == [], "\n".join(map(str, found))


def test_no_activation_estimator_syncs_the_host_in_a_packed_step(monkeypatch):
    """Activation estimators on a conv net (per-image statistics, a range read from the first batch)."""
    ref = bench.estimator.reference_estimator()
    configs = [{**CONV, "estimator": ref, "activation_estimator": n, "seed": i}
               for i, n in enumerate(_names("activation"))]
    configs.append({**CONV, "estimator": ref, "activation_estimator": bench.estimator.common_activation_estimator(),
                    "activation_hparams": {"std_normalize": True}, "seed": 30})
    found = train_packed(configs, monkeypatch)
    assert found == [], "\n".join(map(str, found))


class _Stop(Exception):
    pass


def _stop_after(epochs: int):
    def callback(record: dict[str, Any]) -> None:
        if record["global_epoch"] + 1 >= epochs:
            raise _Stop
    return callback


@pytest.mark.parametrize("name", _names("weight"))
def test_a_resumed_run_does_not_sync_the_host_in_its_steps(name, monkeypatch, tmp_path):
    """A run stopped after an epoch and resumed reloads every quantizer's state from its checkpoint (a range read
    from the first batch, say) and trains on without reading that state back to the host in a step."""
    found: list[Sync] = []
    _trapped_steps(monkeypatch, found)
    spec = resolve({**CONV, "estimator": name, "checkpoint_dir": str(tmp_path)})
    with pytest.raises(_Stop):
        bench.train.train(spec, callbacks=[_stop_after(1)])
    before, found[:] = list(found), []
    result = bench.train.train(resolve({**CONV, "estimator": name, "checkpoint_dir": str(tmp_path), "resume": True}))
    assert result.status == "finished" and len(result.history) == CONV["epochs"]
    assert found == [], "after the resume:\n" + "\n".join(map(str, found))
    assert before == [], "before the stop:\n" + "\n".join(map(str, before))


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="torch.cuda.set_sync_debug_mode needs CUDA (the tests above trap the Python entry points)")
def test_no_sync_in_a_packed_step_on_cuda(monkeypatch):
    """On a GPU, CUDA's own detector: every synchronising call torch makes inside a packed step warns, and none
    may come from our code. (Written for the first GPU session; CPU-only sessions skip it.)"""
    pack_step, found = Pack.step, []

    def packed(self, x, y):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                out = pack_step(self, x, y)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        found.extend(f"{w.filename}:{w.lineno}: {w.message}" for w in caught
                     if "synchroniz" in str(w.message) and w.filename.startswith(OWN_CODE))
        return out

    monkeypatch.setattr(Pack, "step", packed)
    configs = [{**CONV, "estimator": n, "seed": i, "device": "cuda"} for i, n in enumerate(_names("weight"))]
    results = Pack(start_members([resolve(c) for c in configs]), []).run()
    assert [r.status for r in results] == ["finished"] * len(configs)
    assert found == [], "\n".join(found)


# -- the trap catches what it claims to catch -------------------------------------------------------------------
class _SyncingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        if (x.abs() > 1e6).any():  # SYNC: a Python branch on a tensor value in the backward
            g = g * 0
        return g


class SyncingSign(Estimator):
    """Every kind of sync this module traps, one per hook."""

    kinds = ("weight", "activation")
    has_constraint = True

    def quantize(self, x: Tensor, q) -> Tensor:
        scale = x.abs().max().item()  # SYNC: .item() in the forward
        if q.kind == "activation":
            return surrogate_sign(x, lambda v: (v.abs() <= scale).to(v.dtype))
        return _SyncingFunction.apply(x)

    def extra_loss(self, quantizers) -> Tensor | None:
        n = int(torch.nonzero(torch.ones(3)).shape[0])  # SYNC: a value-dependent shape
        return None if n == 0 else None

    def constrain_(self, w: Tensor, q) -> None:
        w[w.abs() > 10.0] = 0.0  # SYNC: boolean-mask indexing


@pytest.fixture
def syncing():
    bench.register_estimator("test_sync_syncing")(SyncingSign)
    yield "test_sync_syncing"
    ESTIMATORS.unregister("test_sync_syncing")


def test_the_trap_catches_every_kind_of_sync(monkeypatch, syncing):
    configs = [{**BASE, "estimator": syncing, "activation_estimator": syncing, "seed": 0},
               {**BASE, "estimator": bench.estimator.reference_estimator(), "seed": 1}]
    found = train_packed(configs, monkeypatch)
    kinds = {s.what for s in found}
    assert kinds == {"Tensor.item", "Tensor.__bool__", "torch.nonzero", "boolean-mask Tensor.__setitem__"}, kinds
    assert all(s.where.startswith("tests/test_host_sync.py:") for s in found)
    assert {s.what for s in found if s.what == "Tensor.__bool__"}  # the backward's branch, through autograd


def test_the_trap_leaves_torch_as_it_found_it():
    before = {n: torch.Tensor.__dict__.get(n) for n in (*VALUE_METHODS, *SHAPE_FUNCTIONS, "to", "__getitem__")}
    with sync_trap() as found:
        t = torch.ones(2)
        float(t.sum())
        _ = t[t > 0]
    assert [s.what for s in found] == ["Tensor.__float__", "boolean-mask Tensor.__getitem__"]
    assert before == {n: torch.Tensor.__dict__.get(n) for n in before}

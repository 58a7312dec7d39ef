"""Do the committed suites' DSQ and VISPA rows change with the init-order fix (issue 21)?

For every DSQ/VISPA trial of a suite (its current definition), build the model as its run did, twice: with
``init_latent_`` at layer construction (the order before the fix) and after the model function (the fix), and
compare the two initial state dicts bit for bit; report DSQ's saturation at step 0 (the share of latent weights
outside [-u, u]) under both orders. Identical initial states mean identical runs (nothing else changed).

    python scripts/check_init_order.py smoke mnist fashion-mnist cifar10-cpu
"""

from __future__ import annotations

import sys

import torch

from bench.data import get_dataset
from bench.diagnostics import DiagnosticsTracker
from bench.layers import _Binary
from bench.suite import load_suite
from bench.train import build_model, seed_everything

WATCHED = ("dsq", "vispa")


def _build(spec, old_order: bool):
    setup = _Binary._setup

    def at_construction(self, weight_est, act_est, scaling):  # the order before the fix
        setup(self, weight_est, act_est, scaling)
        if self.weight_quantizer is not None:
            with torch.no_grad():
                weight_est.init_latent_(self.weight, self.weight_quantizer)
            self.latent_ready = True

    _Binary._setup = at_construction if old_order else setup
    try:
        seed_everything(spec.config.seed)
        model, _, _ = build_model(spec.config, get_dataset(spec.config.dataset))
    finally:
        _Binary._setup = setup
    return model


def _saturation(model) -> float:
    return DiagnosticsTracker(model).collect().get("diag/saturation", float("nan"))


def main(suites: list[str]) -> int:
    print("| suite | estimator | model | bits | trials | initial state old == new | saturation at step 0 (old, new) |")
    print("|---|---|---|---|---|---|---|")
    for name in suites:
        rows: dict[tuple, list] = {}
        for t in load_suite(name).trials:
            if t.estimator not in WATCHED:
                continue
            old, new = _build(t.spec, True), _build(t.spec, False)
            so, sn = old.state_dict(), new.state_dict()
            same = so.keys() == sn.keys() and all(torch.equal(so[k], sn[k]) for k in so)
            rows.setdefault((t.estimator, t.model, t.bits), []).append((same, _saturation(old), _saturation(new)))
        for (est, model, bits), rs in sorted(rows.items()):
            same = sum(r[0] for r in rs)
            print(f"| {name} | {est} | {model} | {bits} | {len(rs)} | {same} of {len(rs)} | "
                  f"{max(r[1] for r in rs):.3f}, {max(r[2] for r in rs):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["smoke", "mnist", "fashion-mnist", "cifar10-cpu"]))

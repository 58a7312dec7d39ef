"""The one training loop: reproducible, resumable, stages, divergence, clear config errors."""

from __future__ import annotations

import pytest
import torch

import bench
from bench import Estimator, register_estimator
from bench.errors import ConfigError
from bench.estimator import ESTIMATORS
from bench.functional import straight_through
from bench.train import train

from .conftest import TINY, needs_mnist, shared_data


def _metrics(res):
    return [(h["train_loss"], h["test_top1"], h.get("diag/qe")) for h in res.history]


def test_same_seed_same_metrics_and_seed_matters():
    cfg = {**TINY, "estimator": "reste", "epochs": 3, "seed": 7}
    a, b = train(cfg), train(cfg)
    assert _metrics(a) == _metrics(b)
    c = train({**cfg, "seed": 8})
    assert _metrics(a) != _metrics(c)


def test_result_fields():
    res = train({**TINY, "estimator": "ste", "epochs": 2})
    assert res.status == "finished" and len(res.history) == 2
    assert res.top5 is not None and 0 <= res.top1 <= 100 and res.best_top1 >= res.top1
    assert res.env["versions"]["torch"] == torch.__version__ and res.env["git_commit"]
    assert res.config["lr"] == 0.1 and res.config["scaling"] == "alpha"  # resolved from the common recipe
    assert {"train_loss", "train_top1", "test_top1", "epoch_seconds", "diag/qe", "diag/flip"} <= set(res.history[1])


def test_resume_equals_uninterrupted(tmp_path):
    cfg = {**TINY, "estimator": "vispa", "epochs": 4, "seed": 1, "estimator_hparams": {"samples": 2}}
    full = train({**cfg, "checkpoint_dir": str(tmp_path / "full")})
    part = tmp_path / "part"
    stop = {"n": 0}

    def interrupt(record):
        stop["n"] += 1
        if stop["n"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train({**cfg, "checkpoint_dir": str(part)}, callbacks=[interrupt])
    resumed = train({**cfg, "checkpoint_dir": str(part), "resume": True})
    assert _metrics(resumed) == _metrics(full)
    assert len(resumed.history) == 4


def test_resume_rejects_other_config(tmp_path):
    train({**TINY, "estimator": "ste", "epochs": 1, "checkpoint_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="different configuration"):
        train({**TINY, "estimator": "ste", "epochs": 1, "lr": 0.2, "checkpoint_dir": str(tmp_path),
                     "resume": True})


@pytest.mark.parametrize("handoff", ["last", "best"])
def test_biper_stage1_weights_handed_to_stage2(tmp_path, handoff):
    seen = {}

    def hook(event, stage, model):
        seen[(event, stage)] = {k: v.clone() for k, v in model.state_dict().items()}

    res = train({**TINY, "estimator": "biper", "epochs": 4, "stage_handoff": handoff,
                       "checkpoint_dir": str(tmp_path)}, stage_hooks=[hook])
    assert [h["stage_name"] for h in res.history] == ["real", "real", "real", "binary"]
    end1, start2 = seen[("end", 0)], seen[("start", 1)]
    assert all(torch.equal(end1[k], start2[k]) for k in end1)
    if handoff == "best":
        best = torch.load(tmp_path / "best_stage0.pt", weights_only=True)["model"]
        assert all(torch.equal(best[k], start2[k]) for k in best)
    # stage 1 trained: the binary layer's latent weights moved before they were handed over
    assert not torch.equal(seen[("start", 0)]["4.weight"], end1["4.weight"])
    assert res.best_epoch >= 0 and res.history[-1]["stage"] == 1


def test_biper_published_recipe_stages():
    from bench.config import resolve_config
    from bench.train import plan_stages

    cfg = resolve_config({"estimator": "biper", "recipe": "published", "model": "resnet20", "dataset": "cifar10"})
    plan = plan_stages(cfg, bench.create_estimator("biper", **cfg.estimator_hparams))
    assert [(p["name"], p["epochs"], p["lr"], p["weight_decay"]) for p in plan] == [
        ("real", 600, 0.021, 0.0016), ("binary", 300, 0.0037, 0.00016)]
    assert plan[0]["estimator"] == {"tau": 0.037} and plan[1]["estimator"] == {"tau": 0.0468}
    assert cfg.stage_handoff == "best" and cfg.activation_hparams == {"std_normalize": True}


@register_estimator("test_nan_after_1")
class NanAfterOneEpoch(Estimator):
    """Forward sign, backward identity; returns NaN from the second epoch on (a diverging run, 2024)."""

    def quantize(self, x, q):
        out = straight_through(torch.sign(x) + (x == 0).float(), x)
        return out * float("nan") if self.progress.epoch >= 1 else out


def test_diverging_run_stops_with_status(tmp_path):
    res = train({**TINY, "estimator": "test_nan_after_1", "epochs": 4, "checkpoint_dir": str(tmp_path)})
    assert res.status == "diverged"
    assert len(res.history) == 2 and res.history[-1]["diverged"]
    assert "lower the learning rate" in res.message


def teardown_module(module):
    ESTIMATORS.unregister("test_nan_after_1")


@pytest.mark.parametrize(("cfg", "match"), [
    ({"estimator": "ste", "lrr": 0.1}, r"unknown config key 'lrr'.*did you mean: lr"),
    ({"estimator": "ste", "epochs": "many"}, r"'epochs' must be int"),
    ({"estimator": "ste", "optimizer": "rmsprop"}, r"'optimizer' must be one of sgd, adam"),
    ({"estimator": "ste", "estimator_hparams": {"t": 1}}, r"unknown hyperparameter 't' for estimator 'ste'"),
    ({"estimator": "biper", "epochs": 1}, r"trains in 2 stages.*--epochs >= 2"),
    ({"estimator": "ste", "activation_estimator": "biper"}, r"cannot binarize activations"),
    ({"estimator": "ste", "model": "resnet"}, r"unknown model 'resnet'.*did you mean"),
    ({"estimator": "ste", "dataset": "cifar"}, r"unknown dataset 'cifar'.*did you mean"),
])
def test_bad_config_is_a_clear_error(cfg, match):
    with pytest.raises(bench.BinbenchError, match=match):
        train({**TINY, **cfg})


def test_w1a32_and_fp_runs():
    a32 = train({**TINY, "estimator": "ste", "epochs": 1, "a_bits": 32})
    fp = train({**TINY, "estimator": "ste", "epochs": 1, "w_bits": 32, "a_bits": 32})
    assert a32.status == fp.status == "finished"
    assert fp.params["binary_weights"] == 0 and a32.params["binary_weights"] > 0


@needs_mnist
def test_trains_on_real_mnist_files():
    res = train({"estimator": "ste", "model": "mlp", "dataset": "mnist", "data_root": str(shared_data()),
                       "epochs": 1, "train_subset": 6000, "threads": 2, "model_args": {"hidden": [128, 128]}})
    assert res.top1 > 80.0

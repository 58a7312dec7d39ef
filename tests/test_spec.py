"""One resolution, one identity: bench.spec.resolve makes an immutable RunSpec once; its key is the run's identity."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import bench.spec
from bench import Estimator, register_estimator
from bench.errors import ConfigError
from bench.functional import sign_ste
from bench.spec import RunSpec, resolve
from bench.train import train

TINY = {"model": "mlp", "dataset": "digits", "model_args": {"hidden": [32]}, "threads": 1, "diagnostics": False,
        "train_subset": 300, "eval_batch_size": 360}


def test_spec_is_immutable_and_complete():
    spec = resolve({**TINY, "estimator": "biper", "epochs": 3})
    assert isinstance(spec, RunSpec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.key = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.config.lr = 1.0  # type: ignore[misc]
    # every value is concrete: nothing is left for the trainer to default
    unset = [k for k, v in spec.config.to_dict().items() if v is None]
    assert set(unset) <= {"data_root", "train_subset", "val_split", "stages", "eval_modes", "checkpoint_dir",
                          "limit_train_batches", "threads", "activation_estimator"}
    assert [s.name for s in spec.stages] == ["real", "binary"] and sum(s.epochs for s in spec.stages) == 3


def test_key_ignores_execution_and_follows_the_experiment():
    spec = resolve({**TINY, "estimator": "ste", "epochs": 2})
    moved = spec.with_execution(threads=2, device="cpu", data_root="/elsewhere", eval_batch_size=17)
    assert moved.key == spec.key and moved.config.threads == 2
    assert resolve({**TINY, "estimator": "ste", "epochs": 2, "lr": 0.05}).key != spec.key
    assert spec.with_values(lr=0.05).key == resolve({**TINY, "estimator": "ste", "epochs": 2, "lr": 0.05}).key
    assert resolve({**TINY, "estimator": "ste", "epochs": 2}, suite="a").key != spec.key  # a suite's own trial
    with pytest.raises(ConfigError, match="lr change what a run computes"):
        spec.with_execution(lr=0.5)


def test_train_takes_a_spec_and_never_resolves_again(monkeypatch, tmp_path):
    spec = resolve({**TINY, "estimator": "ste", "epochs": 1, "checkpoint_dir": str(tmp_path)})
    with pytest.raises(TypeError, match="RunSpec"):
        train({**TINY, "estimator": "ste"})  # type: ignore[arg-type]

    def refuse(*a, **k):
        raise AssertionError("train() resolved a configuration")

    monkeypatch.setattr(bench.spec, "resolve", refuse)
    res = train(spec)
    assert res.status == "finished"
    # the key is the resume fingerprint in the checkpoint folder
    saved = torch.load(tmp_path / "last.pt", weights_only=False)
    assert saved["key"] == spec.key


def test_recipe_activation_settings_stay_with_the_recipes_activation():
    own = resolve({"estimator": "recu", "recipe": "published"}).config
    other = resolve({"estimator": "recu", "recipe": "published", "activation_estimator": "clipped_ste"}).config
    assert own.activation_hparams.get("std_normalize") is True  # the published recipe's, for its own activation
    assert "std_normalize" not in other.activation_hparams  # not carried over to another activation estimator


@register_estimator("test_lazy_threshold")
class LazyThreshold(Estimator):
    """sign(x - b) with a per-feature threshold b created lazily (a plugin that ignores the shape it is given)."""

    kinds = ("activation",)

    def init_state(self, q, shape) -> None:
        q.b = nn.parameter.UninitializedParameter()

    def quantize(self, x, q):
        if isinstance(q.b, nn.parameter.UninitializedParameter):
            q.b.materialize(x.shape[1:])
            with torch.no_grad():
                q.b.zero_()
        return sign_ste(x - q.b)


def test_lazy_parameter_is_materialised_before_the_optimizer():
    seen = {}

    def grab(event, stage, model):
        if event == "start":
            seen["before"] = [p.detach().clone() for n, p in model.named_parameters() if n.endswith(".b")]
        else:
            seen["after"] = [p.detach().clone() for n, p in model.named_parameters() if n.endswith(".b")]

    res = train(resolve({**TINY, "estimator": "ste", "activation_estimator": "test_lazy_threshold", "epochs": 1,
                         "model_args": {"hidden": [32, 24]}}), stage_hooks=[grab])
    assert res.status == "finished" and res.params["estimator_state"] > 0
    assert len(seen["before"]) >= 1 and seen["before"][0].shape == (32,)  # the hidden layer's input width
    assert any(not torch.equal(a, b) for a, b in zip(seen["before"], seen["after"], strict=True))  # it trained


def test_one_boolean_vocabulary_for_config_keys_and_hyperparameters():
    """--set, suite files and estimator hyperparameters read true/false words alike (they had three lists)."""
    from bench.config import check_type
    from bench.errors import ConfigError
    from bench.estimator import BOOL_WORDS

    for word, value in BOOL_WORDS.items():
        for text in (word, word.upper()):
            assert check_type("diagnostics", text) is value
            spec = resolve({**TINY, "estimator": "dsq", "estimator_hparams": {"learnable_alpha": text}})
            assert spec.config.estimator_hparams["learnable_alpha"] is value
    with pytest.raises(ConfigError):
        check_type("diagnostics", "maybe")
    with pytest.raises(ConfigError):
        resolve({**TINY, "estimator": "dsq", "estimator_hparams": {"learnable_alpha": "maybe"}})

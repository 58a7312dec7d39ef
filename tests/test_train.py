"""The one training loop: reproducible, resumable, stages, divergence, clear config errors."""

from __future__ import annotations

import pytest
import torch

import bench
from bench import Estimator, register_estimator
from bench.errors import ConfigError
from bench.estimator import ESTIMATORS
from bench.functional import straight_through
from bench.spec import resolve
from bench.train import train

from .conftest import TINY, needs_mnist, shared_data


def _metrics(res):
    return [(h["train_loss"], h["test_top1"], h.get("diag/qe")) for h in res.history]


def test_same_seed_same_metrics_and_seed_matters():
    cfg = {**TINY, "estimator": "reste", "epochs": 3, "seed": 7}
    a, b = train(resolve(cfg)), train(resolve(cfg))
    assert _metrics(a) == _metrics(b)
    c = train(resolve({**cfg, "seed": 8}))
    assert _metrics(a) != _metrics(c)


def test_result_fields():
    res = train(resolve({**TINY, "estimator": "ste", "epochs": 2}))
    assert res.status == "finished" and len(res.history) == 2
    assert res.top5 is not None and 0 <= res.top1 <= 100 and res.best_top1 >= res.top1
    assert res.env["versions"]["torch"] == torch.__version__ and res.env["git_commit"]
    assert res.config["lr"] == 0.1 and res.config["scaling"] == "alpha"  # resolved from the common recipe
    assert {"train_loss", "train_top1", "test_top1", "epoch_seconds", "diag/qe", "diag/flip"} <= set(res.history[1])


def test_resume_equals_uninterrupted(tmp_path):
    cfg = {**TINY, "estimator": "vispa", "epochs": 4, "seed": 1, "estimator_hparams": {"samples": 2}}
    full = train(resolve({**cfg, "checkpoint_dir": str(tmp_path / "full")}))
    part = tmp_path / "part"
    stop = {"n": 0}

    def interrupt(record):
        stop["n"] += 1
        if stop["n"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(resolve({**cfg, "checkpoint_dir": str(part)}), callbacks=[interrupt])
    resumed = train(resolve({**cfg, "checkpoint_dir": str(part), "resume": True}))
    assert _metrics(resumed) == _metrics(full)
    assert len(resumed.history) == 4


def test_resume_rejects_other_config(tmp_path):
    train(resolve({**TINY, "estimator": "ste", "epochs": 1, "checkpoint_dir": str(tmp_path)}))
    with pytest.raises(ConfigError, match="different configuration"):
        train(resolve({**TINY, "estimator": "ste", "epochs": 1, "lr": 0.2, "checkpoint_dir": str(tmp_path),
                     "resume": True}))


@pytest.mark.parametrize("handoff", ["last", "best"])
def test_biper_stage1_weights_handed_to_stage2(tmp_path, handoff):
    seen = {}

    def hook(event, stage, model):
        seen[(event, stage)] = {k: v.clone() for k, v in model.state_dict().items()}

    res = train(resolve({**TINY, "estimator": "biper", "epochs": 4, "stage_handoff": handoff,
                       "checkpoint_dir": str(tmp_path)}), stage_hooks=[hook])
    assert [h["stage_name"] for h in res.history] == ["real", "real", "real", "binary"]
    end1, start2 = seen[("end", 0)], seen[("start", 1)]
    assert all(torch.equal(end1[k], start2[k]) for k in end1)
    if handoff == "best":
        best = torch.load(tmp_path / "best_stage0.pt", weights_only=True)["model"]
        assert all(torch.equal(best[k], start2[k]) for k in best)
    # stage 1 trained: the binary layer's latent weights moved before they were handed over
    assert not torch.equal(seen[("start", 0)]["4.weight"], end1["4.weight"])
    # the last (binary) stage trained one epoch: its best epoch is that one, counted from 1 within the stage
    assert res.history[-1]["stage"] == 1 and res.best_epoch == 1


# BiPer's official CIFAR-10 ResNet-18 W1A1 runs as edmav4/BiPer (commit 152f97d) states them, read from that
# repository and not from estimators/biper.py: {script: {line: (flag, value)}} of cifar10/run_stg1.sh and
# run_stg2.sh; the defaults of cifar10/utils/options.py (--optimizer sgd, --momentum 0.9); cifar10/main.py's
# warm-up (`if args.warm_up and epoch < 5: lr = args.lr * (epoch + 1) / 5`). Docs section 6 states the same run.
BIPER_SCRIPTS = {
    "cifar10/run_stg1.sh": {7: ("epochs", 600), 8: ("lr", 0.021), 9: ("b", 256), 11: ("lr_type", "cos"),
                            12: ("warm_up", True), 13: ("weight_decay", 0.0016), 14: ("tau", 0.037),
                            15: ("freq", 20.0)},
    "cifar10/run_stg2.sh": {6: ("epochs", 300), 7: ("lr", 0.0037), 8: ("b", 256), 10: ("lr_type", "cos"),
                            11: ("warm_up", True), 12: ("weight_decay", 0.00016), 13: ("tau", 0.0468),
                            14: ("load_ckpt_stage1", "./result/stage1/model_best.pth.tar")},
}
BIPER_OPTIONS = {"optimizer": "sgd", "momentum": 0.9}
BIPER_WARMUP_EPOCHS = 5


@pytest.mark.parametrize("model", ["resnet18", "resnet20"])  # resnet18: the scripts' own; resnet20: extrapolated
def test_biper_published_recipe_is_the_official_run(model):
    from bench.spec import resolve

    spec = resolve({"estimator": "biper", "recipe": "published", "model": model, "dataset": "cifar10"})
    cfg, plan = spec.config, [s.to_dict() for s in spec.stages]
    scripts = [dict(lines.values()) for lines in BIPER_SCRIPTS.values()]
    assert [p["name"] for p in plan] == ["real", "binary"]  # run_stg1.sh: sine weights, run_stg2.sh: sign(sine)
    for stage, official in zip(plan, scripts, strict=True):
        assert stage["epochs"] == official["epochs"]
        assert stage["lr"] == pytest.approx(official["lr"]) and stage["weight_decay"] == pytest.approx(
            official["weight_decay"])
        assert stage["estimator"]["tau"] == pytest.approx(official["tau"])
        assert (stage["lr_schedule"], official["lr_type"]) == ("cosine", "cos")
        assert official["warm_up"] and stage["warmup_epochs"] == BIPER_WARMUP_EPOCHS
        assert (stage["optimizer"], stage["momentum"]) == (BIPER_OPTIONS["optimizer"], BIPER_OPTIONS["momentum"])
        assert cfg.batch_size == official["b"]
    assert cfg.epochs == sum(s["epochs"] for s in scripts)
    assert cfg.estimator_hparams["w0"] == scripts[0]["freq"]  # stage 2 re-reads stage 1's freq (docs section 6)
    assert scripts[1]["load_ckpt_stage1"].endswith("model_best.pth.tar") and cfg.stage_handoff == "best"
    # docs section 1.2: BiPer (ReCU code) divides the activation by its per-sample std before the sign
    assert cfg.activation_estimator == "approx_sign" and cfg.activation_hparams["std_normalize"] is True


def _cited_lines(source: str) -> set[tuple[str, int]]:
    import re

    out = set()
    for path, spec in re.findall(r"(cifar10/run_stg[12]\.sh):([\d,-]+\d)", source):
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            out |= {(path, n) for n in range(int(lo), int(hi or lo) + 1)}
    return out


def test_biper_rules_cite_the_script_lines_that_set_their_values():
    """Each line a published rule cites in the official scripts sets one of the run's flags, and each flag the
    scripts set is cited by some rule: a stale line number or an unsourced official value fails here."""
    cited = set().union(*(_cited_lines(rule.source) for rule in ESTIMATORS.get("biper").published))
    official = {(path, n) for path, lines in BIPER_SCRIPTS.items() for n in lines}
    assert cited and cited <= official, f"cited lines that set nothing: {sorted(cited - official)}"
    assert official <= cited, f"official settings no rule cites: {sorted(official - cited)}"


@register_estimator("test_nan_after_1")
class NanAfterOneEpoch(Estimator):
    """Forward sign, backward identity; returns NaN from the second epoch on (a diverging run, 2024)."""

    def quantize(self, x, q):
        out = straight_through(torch.sign(x) + (x == 0).float(), x)
        return out * float("nan") if self.progress.epoch >= 1 else out


def test_diverging_run_stops_with_status(tmp_path):
    res = train(resolve({**TINY, "estimator": "test_nan_after_1", "epochs": 4, "checkpoint_dir": str(tmp_path)}))
    assert res.status == "diverged"
    assert len(res.history) == 2 and res.history[-1]["diverged"]
    assert "lower the learning rate" in res.message


def teardown_module(module):
    ESTIMATORS.unregister("test_nan_after_1")


@pytest.mark.parametrize(("cfg", "match"), [
    ({"estimator": "ste", "lrr": 0.1}, r"unknown config key 'lrr'.*did you mean: lr"),
    ({"estimator": "ste", "epochs": "many"}, r"'epochs' must be an integer"),
    ({"estimator": "ste", "optimizer": "rmsprop"}, r"'optimizer' must be one of sgd, adam"),
    ({"estimator": "ste", "estimator_hparams": {"t": 1}}, r"unknown hyperparameter 't' for estimator 'ste'"),
    ({"estimator": "biper", "epochs": 1}, r"trains in 2 stages.*--epochs >= 2"),
    ({"estimator": "ste", "activation_estimator": "biper"}, r"cannot binarize activations"),
    ({"estimator": "ste", "model": "resnet"}, r"unknown model 'resnet'.*did you mean"),
    ({"estimator": "ste", "dataset": "cifar"}, r"unknown dataset 'cifar'.*did you mean"),
])
def test_bad_config_is_a_clear_error(cfg, match):
    with pytest.raises(bench.BinbenchError, match=match):
        train(resolve({**TINY, **cfg}))


def test_w1a32_and_fp_runs():
    a32 = train(resolve({**TINY, "estimator": "ste", "epochs": 1, "a_bits": 32}))
    fp = train(resolve({**TINY, "estimator": "ste", "epochs": 1, "w_bits": 32, "a_bits": 32}))
    assert a32.status == fp.status == "finished"
    assert fp.params["binary_weights"] == 0 and a32.params["binary_weights"] > 0


@needs_mnist
def test_trains_on_real_mnist_files():
    res = train(resolve({"estimator": "ste", "model": "mlp", "dataset": "mnist", "data_root": str(shared_data()),
                       "epochs": 1, "train_subset": 6000, "threads": 1, "model_args": {"hidden": [128, 128]}}))
    assert res.top1 > 80.0


# -- checkpoint folders and files: issue 15 -------------------------------------------------------------------
def _interrupt_after(n):
    seen = {"n": 0}

    def cb(record):
        seen["n"] += 1
        if seen["n"] == n:
            raise KeyboardInterrupt

    return cb


def test_fresh_run_in_used_folder_never_resumes_as_finished(tmp_path):
    cfg = {**TINY, "estimator": "ste", "epochs": 3, "checkpoint_dir": str(tmp_path)}
    train(resolve(cfg))  # a finished run leaves final.pt
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(KeyboardInterrupt):
        train(resolve(cfg), callbacks=[_interrupt_after(1)])  # the same folder again, without --resume, killed early
    assert not (tmp_path / "final.pt").exists() and (tmp_path / "notes.txt").exists()
    res = train(resolve({**cfg, "resume": True}))
    assert res.status == "finished" and len(res.history) == 3


def test_resume_ignores_final_of_an_unfinished_plan(tmp_path):
    import shutil

    cfg = {**TINY, "estimator": "ste", "epochs": 3, "checkpoint_dir": str(tmp_path / "a")}
    train(resolve(cfg))
    with pytest.raises(KeyboardInterrupt):
        train(resolve({**cfg, "checkpoint_dir": str(tmp_path / "b")}), callbacks=[_interrupt_after(1)])
    shutil.copy(tmp_path / "a" / "final.pt", tmp_path / "b" / "final.pt")  # what an older binbench left behind
    res = train(resolve({**cfg, "checkpoint_dir": str(tmp_path / "b"), "resume": True}))
    assert res.status == "finished" and len(res.history) == 3


def _damage(path):
    import io

    blob = torch.load(path, weights_only=True)
    blob["model"][next(iter(blob["model"]))].view(-1)[0] += 1.0  # one weight changed, the checksum kept
    buf = io.BytesIO()
    torch.save(blob, buf)
    path.write_bytes(buf.getvalue())


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def _malicious(path):
    import pickle

    path.write_bytes(pickle.dumps({"model": _Payload()}))


def _torch_malicious(path):
    torch.save({"model": _Payload()}, path)


@pytest.mark.parametrize(("spoil", "needle"), [
    (_damage, "is damaged"),
    (lambda p: p.write_bytes(p.read_bytes()[:200]), "is damaged or truncated"),
    (lambda p: p.write_bytes(b"garbage" * 50), "is not a binbench checkpoint"),
    (_malicious, "is not a binbench checkpoint"),
    (_torch_malicious, "is not a binbench checkpoint"),
    (lambda p: torch.save([1, 2], p), "is not a binbench checkpoint"),
])
def test_bad_last_checkpoint_is_one_line_on_resume(tmp_path, monkeypatch, capsys, spoil, needle):
    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["run", "-e", "ste", "-d", "digits", "--epochs", "2", "--set", "model.hidden=[16]", "--set", "threads=1",
            "--checkpoint-dir", str(tmp_path / "ck"), "--json"]
    assert main(args) == 0
    spoil(tmp_path / "ck" / "last.pt")
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "weights_only" not in err and "rerun without --resume" in err
    assert not (tmp_path / "PWNED").exists()


def test_fresh_run_never_deletes_files_binbench_did_not_write(tmp_path):
    (tmp_path / "model.pt").write_text("the user's own model")
    with pytest.raises(ConfigError, match="already holds model.pt, not marked as binbench's"):
        train(resolve({**TINY, "estimator": "ste", "epochs": 1, "checkpoint_dir": str(tmp_path)}))
    assert (tmp_path / "model.pt").read_text() == "the user's own model"


def test_checkpoint_dir_that_is_a_file_fails_before_training(tmp_path):
    f = tmp_path / "ck"
    f.write_text("x")
    epochs = []
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        train(resolve({**TINY, "estimator": "ste", "epochs": 1, "checkpoint_dir": str(f)}), callbacks=[epochs.append])
    assert epochs == []

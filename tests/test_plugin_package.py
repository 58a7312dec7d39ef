"""Estimators from an installed package (entry points) work exactly like built-in ones.

``examples/plugin_package`` (binbench-example-estimators) holds three: sign_swish (a fixed surrogate), rsign
(ReActNet's sign(x - beta_c), a learnable threshold per input channel) and rbnn_sign (RBNN's scheduled
surrogate). It is installed into a temporary folder and put on PYTHONPATH; nothing in binbench names it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib.metadata import distributions

import pytest
import torch

from .conftest import REPO, Interpreter

# longer than the default timeout (pyproject): its module fixtures pip-install the example package and start an
# interpreter with it (a fixture's set-up counts against the first test that uses it)
pytestmark = pytest.mark.timeout(900)

#: what the example package promises: its estimators and the kinds each binarizes
PLUGIN_KINDS = {"sign_swish": ("weight", "activation"), "rsign": ("activation",),
                "rbnn_sign": ("weight", "activation"), "rsign_lazy": ("activation",)}


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target",
           str(target), str(REPO / "examples" / "plugin_package")]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return target


def _env(site):
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}


@pytest.fixture(scope="module")
def plugin_py(plugin_site, tmp_path_factory):
    """One interpreter with the package on its path for the module's commands and code (a new one for each spent
    seconds importing torch; the registry it loads once holds the package's estimators, models and datasets)."""
    with Interpreter(REPO, _env(plugin_site), tmp_path_factory.mktemp("plugin-py") / "output.log") as py:
        yield py


def _run(site, *args, **kwargs):
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True,
                          env=_env(site), **kwargs)


def _python(py: Interpreter, code: str) -> str:
    out = py.python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_plugins_listed_with_their_origin(plugin_site, plugin_py):
    (dist,) = list(distributions(path=[str(plugin_site)]))
    assert {ep.name for ep in dist.entry_points if ep.group == "binbench.estimators"} == set(PLUGIN_KINDS)
    out = plugin_py.cli("list", "estimators")
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}
    for name in PLUGIN_KINDS:
        assert name in rows, out.stdout
        assert f"entry point {name} ({dist.metadata['Name']} {dist.version})" in rows[name], rows[name]
    assert "builtin" in rows["ste"] and "entry point" not in rows["ste"]


def test_plugin_runs_and_probes_like_builtin(plugin_py):
    out = plugin_py.cli("run", "-e", "sign_swish", "--epochs", "3", "--json", "--set", "model.hidden=[64,64]",
               "--set", "threads=1", "--no-track")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["top1"] > 50.0
    code = ("import bench; f, g = bench.probe('sign_swish', [0.0, 1.0], beta=5.0); "
            "print(f.tolist(), round(g[0].item(), 4))")
    assert _python(plugin_py, code).strip() == "[1.0, 1.0] 5.0"


# rsign on a linear layer of 3 inputs (2 outputs) and a 1x1 conv of 2 input channels (4 outputs): the layer hands
# the quantizer its input channel count, the thresholds are set by hand and the backward pass is read off
RSIGN_CODE = """
import json, torch, bench
from bench.layers import BinarySpec
spec = BinarySpec(activation=bench.create_estimator("rsign"))
out = {}
for kind, layer, beta, x in [
        ("linear", spec.linear(3, 2), [0.5, -0.25, 0.0], [[0.75, 0.0, -2.0], [0.5, -0.5, 0.25]]),
        ("conv", spec.conv(2, 4, 1), [0.5, -0.5], [[[[0.0, 1.0]], [[-0.5, 0.0]]]])]:
    q = layer.input_quantizer
    names = [n for n, _ in layer.named_parameters()]
    shape = list(q.beta.shape)
    with torch.no_grad():
        q.beta.copy_(torch.tensor(beta))
    x = torch.tensor(x, requires_grad=True)
    i = torch.arange(x.numel()).reshape(x.shape)
    upstream = (i + 1.0) * (-1.0) ** i
    y = q(x)
    y.backward(upstream)
    out[kind] = {"params": names, "shape": shape, "y": y.tolist(), "dx": x.grad.tolist(), "dbeta": q.beta.grad.tolist()}
print(json.dumps(out))
"""


def test_rsign_thresholds_per_input_channel_and_their_gradient(plugin_py):
    res = json.loads(_python(plugin_py, RSIGN_CODE))
    # upstream gradients +1, -2, +3, -4, ... in x's memory order
    # linear, x - beta = [[0.25, 0.25, -2], [0, -0.25, 0.25]]; ApproxSign g = max(0, 2 - 2|u|) = [[1.5, 1.5, 0],
    # [2, 1.5, 1.5]]; upstream [[1, -2, 3], [-4, 5, -6]]
    lin = res["linear"]
    assert lin["shape"] == [3]  # in_features, not out_features
    assert "input_quantizer.beta" in lin["params"]  # a parameter of the layer: the optimizer trains it
    assert lin["y"] == [[1.0, 1.0, -1.0], [1.0, -1.0, 1.0]]  # sign(0) = +1 at x = beta
    assert lin["dx"] == [[1.5, -3.0, 0.0], [-8.0, 7.5, -9.0]]
    assert lin["dbeta"] == [-(1.5 - 8.0), -(-3.0 + 7.5), -(0.0 - 9.0)]  # -sum over the batch
    # conv (1, 2, 1, 2), x - beta = [[-0.5, 0.5], [0, 0.5]]; g = [[1, 1], [2, 1]]; upstream [[1, -2], [3, -4]]
    conv = res["conv"]
    assert conv["shape"] == [2]  # in_channels
    assert conv["y"] == [[[[-1.0, 1.0]], [[1.0, 1.0]]]]
    assert conv["dx"] == [[[[1.0, -2.0]], [[6.0, -4.0]]]]
    assert conv["dbeta"] == [-(1.0 - 2.0), -(6.0 - 4.0)]  # -sum over the batch and the spatial positions


def test_rsign_rejects_an_input_of_another_channel_count(plugin_py):
    code = ("import torch, bench\nfrom bench.layers import BinarySpec\n"
            "q = BinarySpec(activation=bench.create_estimator('rsign')).linear(3, 2).input_quantizer\n"
            "try:\n    q(torch.zeros(2, 4))\nexcept bench.ConfigError as e:\n    print('ConfigError', e)\n")
    out = _python(plugin_py, code)
    assert out.startswith("ConfigError") and "3 channel thresholds" in out and "(2, 4)" in out


def _rbnn_g(x, fraction, t_min=1e-2, t_max=10.0):
    # RBNN (Lin et al., NeurIPS 2020): t = 10^(log T_min + (log T_max - log T_min) e/E), k = max(1/t, 1),
    # g(x) = max(0, k (sqrt(2) t - t^2 |x|))
    t = 10 ** (math.log10(t_min) + (math.log10(t_max) - math.log10(t_min)) * fraction)
    k = max(1 / t, 1.0)
    return max(0.0, k * (math.sqrt(2) * t - t * t * abs(x)))


def test_rbnn_sign_surrogate_follows_its_schedule(plugin_py):
    xs = [-1.0, 0.0, 0.1, 0.2, 1.0]
    code = ("import json, bench\n"
            f"print(json.dumps({{p: bench.probe('rbnn_sign', {xs!r}, progress=p)[1].tolist() "
            "for p in (0.0, 0.5, 1.0)}))")
    grads = json.loads(_python(plugin_py, code))
    for p, g in grads.items():
        assert g == pytest.approx([_rbnn_g(x, float(p)) for x in xs], rel=1e-5, abs=1e-6), p
    assert grads["0.0"][1] == pytest.approx(math.sqrt(2)) and grads["1.0"][1] == pytest.approx(10 * math.sqrt(2))
    assert grads["1.0"][3] == 0.0  # outside |x| < sqrt(2)/T_max at the end


@pytest.mark.parametrize("weight", ["rbnn_sign", "ste"])
def test_w1a1_digits_mlp_with_rsign_activations(plugin_py, tmp_path, weight):
    """The issue's run: a weight estimator, RSign activations, digits at W1A1 for the dataset's default epochs."""
    hidden = [128, 96, 64]  # distinct widths: each layer's thresholds must match its own input width
    args = ["run", "-e", weight, "-m", "mlp", "-d", "digits", "--set", "activation_estimator=rsign", "--json",
            "--no-track", "--set", "threads=1", "--set", f"model.hidden={hidden}", "--checkpoint-dir", str(tmp_path)]
    if weight == "rbnn_sign":
        args += ["--set", "estimator.t_min=0.01", "--set", "estimator.t_max=10"]
    out = plugin_py.cli(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert res["status"] == "finished"
    assert res["config"]["activation_estimator"] == "rsign" and res["config"]["a_bits"] == 1
    assert res["top1"] >= 85.0, f"{weight} + rsign: {res['top1']:.1f}% on digits"
    if weight == "rbnn_sign":  # the trainer hands the estimator e/E every epoch
        epochs = len(res["history"])
        for rec in res["history"]:
            t = 10 ** (-2 + 3 * rec["epoch"] / epochs)
            assert rec["diag/rbnn_t"] == pytest.approx(t, rel=1e-6), rec["epoch"]
    state = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=False)["model"]
    betas = {k: v for k, v in state.items() if k.endswith("input_quantizer.beta")}
    # the first hidden linear has real inputs (binarize_first_last=False), the others binary ones
    assert [v.shape[0] for v in betas.values()] == hidden[:-1]
    for key, beta in betas.items():
        layer = key[: -len("input_quantizer.beta")]
        assert beta.shape[0] == state[layer + "weight"].shape[1]
        # initialised at 0: every threshold has moved, so every channel's threshold received gradients
        assert bool((beta != 0).all()), f"{key}: {int((beta == 0).sum())} of {beta.numel()} thresholds never moved"


def test_installed_plugins_pack_to_their_solo_runs(plugin_py):
    """Packed trials (issue 23) with estimators from the installed package, which has no code for packing: each
    member computes what its trial computes alone (tests/test_pack.py's reference loop, written from the issue), in
    float64 the same binary weights at every step and losses within 1e-9, over two epochs (RBNN's schedule moves
    between them). The plugins' weight estimators share a pack with a built-in one (two members of one plugin at
    other seeds and learning rates); every plugin activation estimator binarizes two members' inputs (another
    seed each), beside a built-in weight estimator."""
    code = f"""
import json, torch
from bench.estimator import get_estimator_class
from tests.test_pack import MLP, check_pack, default_dtype
plugins = {sorted(PLUGIN_KINDS)!r}
assert all(get_estimator_class(n).__module__.startswith("binbench_examples") for n in plugins)
weights = [n for n in plugins if "weight" in get_estimator_class(n).kinds]
acts = [n for n in plugins if "activation" in get_estimator_class(n).kinds]
configs = [{{**MLP, "estimator": weights[0], "seed": 0, "epochs": 2}},
           {{**MLP, "estimator": weights[0], "seed": 1, "epochs": 2, "lr": 0.05}},
           *[{{**MLP, "estimator": w, "seed": 2 + i, "epochs": 2}} for i, w in enumerate(weights[1:])],
           {{**MLP, "estimator": "ste", "seed": 9, "epochs": 2}}]
with default_dtype(torch.float64):
    check_pack(configs, 10, 1e-9)
    check_pack([{{**MLP, "estimator": "ste", "activation_estimator": a, "a_bits": 1, "seed": s, "epochs": 2}}
                for a in acts for s in (0, 1)], 5, 1e-9)
print(json.dumps({{"weights": weights, "activations": acts}}))
"""
    packed = json.loads(_python(plugin_py, code).strip().splitlines()[-1])
    assert packed == {"weights": [n for n in sorted(PLUGIN_KINDS) if "weight" in PLUGIN_KINDS[n]],
                      "activations": [n for n in sorted(PLUGIN_KINDS) if "activation" in PLUGIN_KINDS[n]]}


def _expected_registry_tests(name, kinds):
    ids = {f"test_forward_is_binary_and_gradient_finite[{name}-{k}]" for k in kinds}
    ids.add(f"test_sign_of_zero_is_plus_one[{name}]")
    if "activation" in kinds:
        ids.add(f"test_digits_w1a1_with_it_as_activation_estimator[{name}]")
    if "weight" in kinds:
        ids |= {f"test_one_digits_epoch_learns_above_chance[{name}]",
                f"test_recipes_resolve[common-{name}]", f"test_recipes_resolve[published-{name}]",
                f"test_published_recipe_starts_on_resnet20_cifar_format[{name}]"}
    return ids


@pytest.mark.slow  # a nested pytest run of the registry tests over the installed plugins
def test_registry_tests_cover_plugins(plugin_site, tmp_path):
    """The registry-parametrized tests pick every plugin estimator up without being edited."""
    report = tmp_path / "junit.xml"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                          str(REPO / "tests" / "test_estimators_registry.py"), "-k", " or ".join(PLUGIN_KINDS)],
                         capture_output=True, text=True, env=_env(plugin_site), cwd=REPO)
    assert out.returncode == 0, out.stdout[-3000:]
    cases = ET.parse(report).getroot().iter("testcase")
    ran = {c.get("name"): [child.tag for child in c] for c in cases}
    expected = set().union(*(_expected_registry_tests(n, k) for n, k in PLUGIN_KINDS.items()))
    assert set(ran) == expected
    assert all(outcome == [] for outcome in ran.values()), {n: o for n, o in ran.items() if o}  # none failed/skipped


@pytest.mark.slow  # three suite runs of a fresh process each (~2 min on 2 cores); the mechanism is tested fast below
def test_changed_plugin_code_is_trained_again_on_resume(plugin_site, tmp_path):
    """A suite resumed after a plugin's code changed trains that plugin's trials again (same version number: the
    source digest tells), and keeps the trials of unchanged code; every run names its estimators' origin."""
    import shutil
    import sqlite3

    import yaml

    site = tmp_path / "site"
    shutil.copytree(plugin_site, site)
    suite = tmp_path / "codechange.yaml"
    suite.write_text(yaml.safe_dump({"name": "codechange", "grid": {
        "estimators": ["sign_swish", "ste"], "models": ["mlp"], "datasets": ["digits"], "bits": ["W1A32"],
        "seeds": [0]}, "defaults": {"epochs": 1, "model_args": {"hidden": [32, 32]}, "threads": 1}}))
    res = tmp_path / "res"
    args = ["suite", "run", str(suite), "--results-dir", str(res), "--executor", "local"]

    def finished():
        with sqlite3.connect(res / "mlflow.db") as db:
            rows = db.execute("select r.run_uuid, t1.value, t2.value from runs r "
                              "join tags t1 on t1.run_uuid = r.run_uuid and t1.key = 'estimator' "
                              "join tags t2 on t2.run_uuid = r.run_uuid and t2.key = 'binbench.code' "
                              "where r.status = 'FINISHED'").fetchall()
            origin = dict(db.execute("select t.run_uuid, t.value from tags t "
                                     "where t.key = 'binbench.origin.weight'").fetchall())
        return rows, origin

    out = _run(site, *args, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first, origin = finished()
    assert sorted(r[1] for r in first) == ["sign_swish", "ste"]
    swish_run = next(r[0] for r in first if r[1] == "sign_swish")
    assert origin[swish_run].startswith("sign_swish: binbench-example-estimators 0.3.0 sha256:")
    # resumed with nothing changed: nothing trains
    out = _run(site, *args, "--resume", timeout=300)
    assert out.returncode == 0 and len(finished()[0]) == 2, out.stdout[-2000:]
    # the installed module edited in place (a user's fix, version unchanged)
    module = site / "binbench_examples" / "sign_swish.py"
    module.write_text(module.read_text() + "\n# a changed surrogate would go here\n")
    out = _run(site, *args, "--resume", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    after, _ = finished()
    assert sorted(r[1] for r in after) == ["sign_swish", "sign_swish", "ste"]
    swish_codes = {r[2] for r in after if r[1] == "sign_swish"}
    assert len(swish_codes) == 2  # the retrained run records the new code


def test_model_and_dataset_plugins_are_listed_and_trained(plugin_py):
    """Models and datasets register through their own entry-point groups, like estimators."""
    models = plugin_py.cli("list", "models")
    datasets = plugin_py.cli("list", "datasets")
    assert "tiny_bnn    entry point tiny_bnn (binbench-example-estimators" in models.stdout, models.stdout
    assert "stripes" in datasets.stdout and "4 classes" in datasets.stdout
    out = plugin_py.cli("run", "-m", "tiny_bnn", "-d", "stripes", "--epochs", "2", "--json", "--no-track")
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert res["config"]["model"] == "tiny_bnn" and res["top1"] > 60.0  # 4 classes: chance is 25%
    assert res["params"]["binary_layers"] == res["params"]["layers"] == 3  # every layer binary

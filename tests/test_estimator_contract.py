"""The estimator contract (issue 22): every public hook of ``bench.Estimator`` documented, the declarative metadata
in one place, one channel for the evaluation mode, and every built-in estimator's docstring with its equations in
LaTeX and links to its paper and code, readable as text in ``binbench show estimator``."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import warnings

import pytest
import torch
from torch import Tensor, nn

import bench
from bench.docmath import LatexError, equation, to_text
from bench.errors import ConfigError
from bench.estimator import ESTIMATORS, Estimator, EstimatorMetadata, get_estimator_class
from bench.functional import sign_ste
from bench.spec import resolve
from bench.train import train

from .conftest import REPO, TINY

BUILTINS = [n for n in bench.list_estimators() if ESTIMATORS.entry(n).source == "builtin"]
PAPER = re.compile(r"https://(arxiv\.org/abs/\d{4}\.\d{4,5}|openaccess\.thecvf\.com/\S+|openreview\.net/forum\?id=\S+"
                   r"|proceedings\.neurips\.cc/\S+)")
CODE = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+")


def _class_body() -> list[ast.stmt]:
    tree = ast.parse((REPO / "bench" / "estimator.py").read_text())
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Estimator").body


def _attribute_docs() -> dict[str, str | None]:
    """Each attribute assigned in the class body and the string literal right after it (its docstring), if any."""
    body, docs = _class_body(), {}
    for stmt, after in zip(body, [*body[1:], None], strict=True):
        target = stmt.target if isinstance(stmt, ast.AnnAssign) else stmt.targets[0] if isinstance(stmt, ast.Assign) \
            else None
        if isinstance(target, ast.Name):
            doc = after.value.value if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                                        and isinstance(after.value.value, str)) else None
            docs[target.id] = doc
    return docs


def _public_names() -> set[str]:
    return {n for n in vars(Estimator) if not n.startswith("_")} | set(_attribute_docs()) | {"__init__"}


def _doc_of(name: str) -> str | None:
    attr = inspect.getattr_static(Estimator, name)
    if isinstance(attr, (classmethod, staticmethod)):
        attr = attr.__func__
    if isinstance(attr, property):
        attr = attr.fget
    if callable(attr):
        return inspect.getdoc(attr)
    return _attribute_docs().get(name)


@pytest.mark.parametrize("name", sorted(_public_names()))
def test_every_public_hook_and_attribute_of_the_estimator_has_a_docstring(name):
    doc = _doc_of(name)
    assert doc and len(doc) > 30, f"Estimator.{name} has no docstring (or a stub)"


@pytest.mark.parametrize("name", ["quantize", "set_progress", "extra_loss", "stages", "begin_stage", "init_state",
                                  "init_latent_", "constrain_", "predict", "latent", "layer_diagnostics", "saturated"])
def test_every_hook_says_when_it_is_called_and_what_the_default_does(name):
    doc = inspect.getdoc(getattr(Estimator, name))
    assert "Called" in doc, f"{name}: when the loop calls it"
    params = [p for p in inspect.signature(getattr(Estimator, name)).parameters if p != "self"]
    if params:
        assert "Args:" in doc and all(f"{p}:" in doc for p in params), f"{name}: every argument described"
    if name != "quantize":
        assert "default" in doc.lower(), f"{name}: what the default does"


def test_the_metadata_section_holds_exactly_the_metadata_fields():
    """The attributes between the section's two markers are the fields of EstimatorMetadata: one place."""
    source = (REPO / "bench" / "estimator.py").read_text().splitlines()
    start = next(i for i, line in enumerate(source) if "== declarative metadata" in line) + 1
    end = next(i for i, line in enumerate(source) if "== hyperparameters" in line) + 1
    in_section = {name for stmt in _class_body() if start <= stmt.lineno <= end
                  for name in ([stmt.target.id] if isinstance(stmt, ast.AnnAssign) else [])}
    assert in_section == {f.name for f in dataclasses.fields(EstimatorMetadata)}


@pytest.mark.parametrize("name", bench.list_estimators())
def test_metadata_is_what_the_class_declares(name):
    cls = get_estimator_class(name)
    meta = cls.metadata()
    for f in dataclasses.fields(EstimatorMetadata):
        declared, got = getattr(cls, f.name), getattr(meta, f.name)
        if f.name == "native_activation_hparams":
            assert dict(got) == dict(declared)
        elif isinstance(declared, (list, tuple)):
            assert isinstance(got, tuple) and got == tuple(declared), f.name
        else:
            assert got == declared, f.name
    assert meta.name == name and meta.kinds == tuple(cls.kinds)
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.role = "control"  # type: ignore[misc]


# -- one channel for the evaluation mode ------------------------------------------------------------------------
class _TwoModes(Estimator):
    """Sign of x in mode "plain", sign of -x in mode "flipped" (evaluation only); records what it saw."""

    eval_modes = ("plain", "flipped")

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def quantize(self, x: Tensor, q) -> Tensor:
        if not q.training and q.kind == "weight":
            self.seen.append(("quantize", self.eval_mode))
            return sign_ste(-x if self.eval_mode == "flipped" else x)
        return sign_ste(x)

    def predict(self, model: nn.Module, x: Tensor) -> Tensor:
        self.seen.append(("predict", self.eval_mode))
        return model(x)


def test_evaluating_sets_the_mode_for_a_block_and_restores_it():
    est = _TwoModes()
    assert est.eval_mode == "plain"  # the headline mode unless set
    with est.evaluating("flipped") as e:
        assert e is est and est.eval_mode == "flipped"
    assert est.eval_mode == "plain"
    with pytest.raises(RuntimeError), est.evaluating("flipped"):
        raise RuntimeError
    assert est.eval_mode == "plain"  # restored after an error too
    with pytest.raises(ConfigError, match="no evaluation mode 'nope'"):
        est.eval_mode = "nope"


@pytest.fixture
def two_modes():
    bench.register_estimator("test_contract_two_modes")(_TwoModes)
    yield "test_contract_two_modes"
    ESTIMATORS.unregister("test_contract_two_modes")


def test_the_loop_evaluates_each_mode_through_the_one_channel(two_modes):
    """Each evaluation mode reaches quantize and predict as the same eval_mode, and the modes differ in what they
    compute (the flipped network is another network)."""
    models = []
    res = train(resolve({**TINY, "estimator": two_modes, "epochs": 1, "diagnostics": False, "threads": 1}),
                stage_hooks=[lambda when, i, model: models.append(model)])
    assert res.status == "finished" and set(res.eval_modes) == {"plain", "flipped"}
    est = next(m for m in models[-1].modules() if hasattr(m, "estimator")).estimator
    predicted = [mode for what, mode in est.seen if what == "predict"]
    assert predicted[:2] == ["plain", "flipped"]
    by_mode = {mode for what, mode in est.seen if what == "quantize"}
    assert by_mode == {"plain", "flipped"} and est.eval_mode == "plain"
    assert res.eval_modes["plain"] != res.eval_modes["flipped"]


def test_a_predict_of_the_earlier_contract_still_gets_its_mode():
    with pytest.warns(DeprecationWarning, match="predict"):
        class Old(_TwoModes):
            def predict(self, model, x, mode):
                self.seen.append(("old", mode))
                return model(x)

    est, model = Old(), nn.Identity()
    with est.evaluating("flipped"):
        est.predict(model, torch.ones(1))
    assert est.seen == [("old", "flipped")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")

        class New(_TwoModes):  # the current contract: no warning
            def predict(self, model, x):
                return model(x)


# -- built-in docstrings -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_docstring_has_latex_equations_and_links(name):
    cls = get_estimator_class(name)
    doc = inspect.getdoc(cls)
    blocks = re.findall(r"\.\. math::\n\n((?:[ ]{4}.*\n|\n)+)", doc + "\n")
    assert blocks and any("\\" in b for b in blocks), f"{name}: a `.. math::` block of LaTeX"
    assert "Forward" in doc and "Backward" in doc
    if cls.role == "control":
        assert "No paper or code" in doc, f"{name}: a control says why it links no paper"
        return
    assert PAPER.search(doc), f"{name}: an https link to its paper (arXiv, CVF, OpenReview, NeurIPS)"
    assert CODE.search(doc), f"{name}: a github.com link to its code"


@pytest.mark.parametrize("name", BUILTINS)
def test_show_renders_the_latex_as_text(name, capsys):
    from bench.cli import main

    rendered = to_text(inspect.getdoc(get_estimator_class(name)), strict=True)  # every command is known
    assert ".. math::" not in rendered and not re.search(r"\\[A-Za-z]", rendered)
    assert main(["show", "estimator", name]) == 0
    out = capsys.readouterr().out
    assert rendered.splitlines()[0] in out and "sign(" in out
    assert "\\frac" not in out and "\\operatorname" not in out


@pytest.mark.parametrize(("latex", "text"), [
    (r"\frac{\partial L}{\partial x} = \frac{\partial L}{\partial x_b}", "dL/dx = dL/dx_b"),
    (r"x_b = \operatorname{sign}(x)", "x_b = sign(x)"),
    (r"\frac{1}{1 - \alpha}", "1/(1 - alpha)"),
    (r"|x|^{(1-o)/o}", "|x|^((1-o)/o)"),
    (r"\mathbb{1}\{|x| \le t\}", "1{|x| <= t}"),
    (r"\sqrt{\operatorname{Var}(a) + 10^{-5}}", "sqrt(Var(a) + 10^-5)"),
    (r"\hat{w} = \frac{w - \mu_c}{\sigma_c}", "w_hat = (w - mu_c)/sigma_c"),
])
def test_latex_to_text(latex, text):
    assert equation(latex) == [text]


def test_cases_are_one_line_per_case_aligned():
    lines = equation(r"g(x) = \begin{cases} 1 & \text{if } |x| \le t \\ 0 & \text{otherwise} \end{cases}")
    assert lines == ["g(x) = { 1   if |x| <= t", "       { 0   otherwise"]


def test_unknown_latex_raises_when_strict_and_stays_raw_for_the_console():
    doc = "Forward:\n\n.. math::\n\n    y = \\weird{x}\n\nend"
    with pytest.raises(LatexError, match="weird"):
        to_text(doc, strict=True)
    assert "\\weird{x}" in to_text(doc)

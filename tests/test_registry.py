"""Registry API: wildcards, info, clear errors for duplicate/unknown names and hyperparameters."""

from __future__ import annotations

import pytest

import bench
from bench import Estimator, create_estimator, estimator_info, list_estimators, register_estimator
from bench.errors import BinbenchError, ConfigError, UnknownNameError
from bench.estimator import ESTIMATORS

BUILTINS = {"ste", "clipped_ste", "approx_sign", "dsq", "reste", "biper", "recu", "irnet", "vispa"}


def test_builtins_registered_and_wildcards():
    names = set(list_estimators())
    assert BUILTINS <= names
    assert list_estimators("re*") == ["recu", "reste"]
    assert set(list_estimators("*ste")) >= {"ste", "clipped_ste", "reste"}
    assert list_estimators("zzz*") == []


def test_unknown_name_suggests_closest():
    with pytest.raises(UnknownNameError, match=r"unknown estimator 'bipper'.*did you mean: biper"):
        create_estimator("bipper")


def test_unknown_hparam_is_clear():
    with pytest.raises(ConfigError, match=r"unknown hyperparameter 'w1' for estimator 'biper'.*did you mean: w0"):
        create_estimator("biper", w1=3)


def test_hparam_type_checked_and_coerced():
    assert create_estimator("biper", w0="30").w0 == 30.0
    with pytest.raises(ConfigError, match="must be a number"):
        create_estimator("biper", w0="fast")


def test_duplicate_name_is_an_error():
    with pytest.raises(BinbenchError, match="duplicate estimator name 'ste'"):

        @register_estimator("ste")
        class Other(Estimator):
            def quantize(self, x, q):
                return x


def test_estimator_info_has_doc_hparams_recipes_source():
    info = estimator_info("reste")
    assert "Backward" in info["doc"] and "ICCV 2023" in info["doc"]
    assert info["hparams"] == {"o_end": 3.0, "t": 1.5, "eps": 0.1}
    assert info["source"] == "builtin"
    from bench.recipes import recipe_table

    assert set(recipe_table("biper")) == {"common", "published"} and "recipes" not in info
    assert info["file"].endswith("reste.py")


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_docstring_states_forward_backward_and_paper(name):
    doc = estimator_info(name)["doc"]
    assert "Forward" in doc and ("Backward" in doc or "backward" in doc)
    assert any(y in doc for y in ("20", "19")), "the docstring cites the paper (venue and year)"
    for hp in estimator_info(name)["hparams"]:
        assert hp in doc, f"hyperparameter {hp} is documented"


def test_bench_exports():
    assert callable(bench.probe) and callable(bench.train.train)
    assert "mlp" in bench.list_models()
    assert "digits" in bench.list_datasets()


def test_unregister_roundtrip():
    @register_estimator("tmp_identity")
    class TmpIdentity(Estimator):
        """Forward x, backward 1 (2024)."""

        def quantize(self, x, q):
            return x

    try:
        assert "tmp_identity" in list_estimators("tmp_*")
        assert ESTIMATORS.entry("tmp_identity").source.startswith("module")
    finally:
        ESTIMATORS.unregister("tmp_identity")

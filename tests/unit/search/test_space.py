"""Search spaces: params.yaml ranges -> Optuna distributions, sampling, and plain names."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from mlplatform.config import parse_params
from mlplatform.errors import ConfigError
from mlplatform.search import space as search_space
from support.project import make_params

FAMILIES = {
    "xgboost": {
        "max_depth": {"low": 1, "high": 5},
        "learning_rate": {"low": 0.1, "high": 1.0, "log": True},
        "grow_policy": {"choices": ["depthwise", "lossguide"]},
        "n_estimators": {"low": 50, "high": 200, "step": 50},
        "subsample": {"low": 0.5, "high": 1.0, "step": 0.25},
        "max_bin": 128,
        "gamma": 0.5,
    },
    "logistic_regression": {
        "C": {"low": 0.01, "high": 10.0, "log": True},
        "max_iter": 500,
        "tol": 0.001,
    },
    "random_forest": {
        "criterion": "entropy",
        "max_features": {"choices": ["sqrt", 0.5, 1.0]},
        "min_samples_leaf": {"low": 1, "high": 20, "log": True},
    },
}


def tune_cfg(families=None):
    raw = make_params({"tune.families": families if families is not None else FAMILIES})
    return parse_params(raw).tune


@pytest.fixture(scope="module")
def spaces():
    return search_space.parse(tune_cfg())


def test_int_range_becomes_int_distribution(spaces):
    dist = spaces["xgboost"]["max_depth"]
    assert isinstance(dist, IntDistribution)
    assert (dist.low, dist.high, dist.step, dist.log) == (1, 5, 1, False)


def test_log_float_range_becomes_log_float_distribution(spaces):
    dist = spaces["xgboost"]["learning_rate"]
    assert isinstance(dist, FloatDistribution)
    assert (dist.low, dist.high, dist.log, dist.step) == (0.1, 1.0, True, None)
    assert spaces["logistic_regression"]["C"] == FloatDistribution(0.01, 10.0, log=True)


def test_int_log_range(spaces):
    assert spaces["random_forest"]["min_samples_leaf"] == IntDistribution(1, 20, log=True)


def test_choices_become_categorical(spaces):
    assert spaces["xgboost"]["grow_policy"] == CategoricalDistribution(["depthwise", "lossguide"])
    assert spaces["random_forest"]["max_features"].choices == ("sqrt", 0.5, 1.0)


def test_int_step_and_float_step(spaces):
    assert spaces["xgboost"]["n_estimators"] == IntDistribution(50, 200, step=50)
    assert spaces["xgboost"]["subsample"] == FloatDistribution(0.5, 1.0, step=0.25)


def test_fixed_values_pass_through(spaces):
    assert spaces["xgboost"]["max_bin"] == 128
    assert spaces["xgboost"]["gamma"] == 0.5
    assert spaces["logistic_regression"]["max_iter"] == 500
    assert spaces["random_forest"]["criterion"] == "entropy"


def test_mixed_int_and_float_bounds_are_float():
    spaces = search_space.parse(tune_cfg({"xgboost": {"gamma": {"low": 0, "high": 2.5}}}))
    assert spaces["xgboost"]["gamma"] == FloatDistribution(0.0, 2.5)


def test_explicit_type_int_overrides_inference():
    cfg = tune_cfg({"xgboost": {"max_depth": {"type": "int", "low": 2.0, "high": 6.0}}})
    assert search_space.parse(cfg)["xgboost"]["max_depth"] == IntDistribution(2, 6)


def test_unknown_hyperparameter_is_refused_when_params_load():
    """Checked by parse_params (before ingest runs), not when the search starts."""
    with pytest.raises(ConfigError) as info:
        tune_cfg({"random_forest": {"n_estimator": {"low": 10, "high": 20}}})
    message = str(info.value)
    assert message.startswith("params.yaml: tune.families.random_forest.n_estimator:")
    assert "unknown hyperparameter" in message
    assert "n_estimators" in message  # the known names are listed


def test_range_optuna_refuses_is_refused_when_params_load():
    # Optuna refuses a stepped log-scale float range.
    with pytest.raises(
        ConfigError, match=r"^params\.yaml: tune\.families\.xgboost\.learning_rate: "
    ):
        tune_cfg(
            {"xgboost": {"learning_rate": {"low": 0.1, "high": 1.0, "log": True, "step": 0.1}}}
        )


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "int", "choices": [2, 4]},
        {"type": "float", "choices": [0.1, 0.2]},
        {"type": "categorical", "low": 2, "high": 6},
    ],
)
def test_contradictory_type_is_a_config_error(spec):
    with pytest.raises(ConfigError, match=r"tune\.families\.xgboost\.max_depth"):
        search_space.parse(tune_cfg({"xgboost": {"max_depth": spec}}))


def _trial_for(family: str) -> optuna.Trial:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({search_space.FAMILY_PARAM: family})
    return study.ask()


@pytest.mark.parametrize("family", ["xgboost", "logistic_regression", "random_forest"])
def test_suggest_returns_family_and_plain_names(spaces, family):
    trial = _trial_for(family)
    chosen, values = search_space.suggest(trial, spaces)
    assert chosen == family
    assert set(values) == set(FAMILIES[family])
    searched = {k for k, v in FAMILIES[family].items() if isinstance(v, dict)}
    # Optuna's names are namespaced by family; fixed values are not Optuna params.
    assert set(trial.params) == {"family"} | {f"{family}.{k}" for k in searched}
    assert trial.params["family"] == family
    for name in searched:
        assert values[name] == trial.params[f"{family}.{name}"]
    for name in set(FAMILIES[family]) - searched:
        assert values[name] == FAMILIES[family][name]


def test_suggested_values_respect_ranges(spaces):
    for _ in range(5):
        _, values = search_space.suggest(_trial_for("xgboost"), spaces)
        assert isinstance(values["max_depth"], int) and 1 <= values["max_depth"] <= 5
        assert values["n_estimators"] in (50, 100, 150, 200)
        assert values["subsample"] in (0.5, 0.75, 1.0)
        assert 0.1 <= values["learning_rate"] <= 1.0
        assert values["grow_policy"] in ("depthwise", "lossguide")


def test_suggest_distributions_match_spaces(spaces):
    trial = _trial_for("xgboost")
    search_space.suggest(trial, spaces)
    frozen = trial.study._storage.get_trial(trial._trial_id)
    assert frozen.distributions["xgboost.max_depth"] == spaces["xgboost"]["max_depth"]
    assert frozen.distributions["xgboost.learning_rate"] == spaces["xgboost"]["learning_rate"]
    assert frozen.distributions["family"] == CategoricalDistribution(list(FAMILIES))


def test_plain_params_strips_namespace():
    params = {"family": "xgboost", "xgboost.max_depth": 3, "xgboost.learning_rate": 0.2}
    assert search_space.plain_params(params) == (
        "xgboost",
        {"max_depth": 3, "learning_rate": 0.2},
    )


def test_plain_params_fills_fixed_values(spaces):
    params = {"family": "xgboost", "xgboost.max_depth": 3, "xgboost.learning_rate": 0.2}
    family, values = search_space.plain_params(params, spaces)
    assert family == "xgboost"
    assert values == {"max_depth": 3, "learning_rate": 0.2, "max_bin": 128, "gamma": 0.5}


def test_plain_params_ignores_other_families(spaces):
    params = {"family": "logistic_regression", "logistic_regression.C": 1.5}
    family, values = search_space.plain_params(params, spaces)
    assert family == "logistic_regression"
    assert values == {"C": 1.5, "max_iter": 500, "tol": 0.001}

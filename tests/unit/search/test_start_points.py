"""Start points (``tune.start_points``) and a configuration's own ``class_weight``."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from mlplatform.config import parse_params
from mlplatform.errors import ConfigError
from mlplatform.modeling import families
from mlplatform.search import space as search_space
from mlplatform.search import tune
from mlplatform.search.storage import new_study
from support.project import make_params
from support.small_search import small_data

SPACE = {
    "logistic_regression": {"C": {"low": 0.01, "high": 10.0, "log": True}},
    "extra_trees": {
        "n_estimators": {"low": 20, "high": 60, "step": 20},
        "min_samples_leaf": {"low": 1, "high": 10},
        "class_weight": {"choices": ["balanced", "none"]},
    },
    "xgboost": {
        "n_estimators": 60,
        "max_depth": {"low": 2, "high": 5},
        "learning_rate": {"low": 0.03, "high": 0.3, "log": True},
    },
}
POINTS = {
    "extra_trees": {"n_estimators": 20, "class_weight": "none"},
    "xgboost": {"max_depth": 3, "learning_rate": 0.1},
    "logistic_regression": {"C": 1.0},
}


def params_with(points=None, families_=None, extra=None):
    over = {
        "tune.families": SPACE if families_ is None else families_,
        "tune.start_points": POINTS if points is None else points,
        "tune.n_trials": 6,
        "tune.n_jobs": 1,
        "tune.timeout_s": None,
        "tune.fidelity.min_rows": 50,
        **(extra or {}),
    }
    return parse_params(make_params(over))


def config_error(points) -> str:
    with pytest.raises(ConfigError) as info:
        params_with(points)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("points", "where", "what"),
    [
        ({"xgboost": {"max_depth": 9}}, "xgboost.max_depth", "outside"),
        ({"xgboost": {"max_depth": 2.5}}, "xgboost.max_depth", "outside"),
        ({"extra_trees": {"n_estimators": 30}}, "extra_trees.n_estimators", ""),
        ({"extra_trees": {"class_weight": "no"}}, "extra_trees.class_weight", "out"),
        ({"xgboost": {"n_estimators": 100}}, "xgboost.n_estimators", "fixed"),
        ({"xgboost": {"subsample": 0.8}}, "xgboost.subsample", "not searched"),
    ],
)
def test_a_start_point_its_space_cannot_draw_is_refused(points, where, what):
    message = config_error(points)
    assert message.startswith(f"params.yaml: tune.start_points.{where}: "), message
    assert what in message


@pytest.mark.parametrize("value", [1, True])
def test_a_start_point_equal_to_a_choice_of_another_type_is_refused(value):
    # 1 == 1.0 == True, but the trial would grow trees on 1 feature per split where the
    # study (and the train stage's refit) records 1.0, all of them.
    space = {"extra_trees": {"max_features": {"choices": ["sqrt", 0.5, 1.0]}}}
    with pytest.raises(ConfigError, match=r"tune\.start_points\.extra_trees\.max_features"):
        params_with({"extra_trees": {"max_features": value}}, space)
    ok = params_with({"extra_trees": {"max_features": 1.0}}, space)
    (point,) = search_space.start_params(ok.tune)
    assert type(point["extra_trees.max_features"]) is float


def test_a_class_weight_that_is_not_balanced_or_none_is_refused():
    space = {**SPACE, "xgboost": {**SPACE["xgboost"], "class_weight": {"choices": ["yes"]}}}
    with pytest.raises(ConfigError, match=r"tune\.families\.xgboost\.class_weight: 'yes'"):
        params_with({}, space)


def test_a_start_point_equal_to_a_fixed_value_is_accepted_and_not_queued():
    params = params_with({"xgboost": {"n_estimators": 60, "max_depth": 4}})
    assert search_space.start_params(params.tune) == [{"family": "xgboost", "xgboost.max_depth": 4}]


def test_start_points_of_a_family_not_searched_are_skipped():
    only_lr = {"logistic_regression": SPACE["logistic_regression"]}
    params = params_with(POINTS, only_lr)
    assert search_space.start_params(params.tune) == [
        {"family": "logistic_regression", "logistic_regression.C": 1.0}
    ]


def test_default_start_points_are_inside_the_default_space():
    from support.project import default_params

    params = parse_params(default_params())
    points = search_space.start_params(params.tune)
    assert [p["family"] for p in points] == list(params.tune.start_points)
    assert set(params.tune.start_points) == set(params.tune.families)


def test_a_new_study_gets_the_start_points_once(tmp_path):
    params = params_with()
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log"))
    )
    study = new_study(params, storage, "s")
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    queued = [t.system_attrs["fixed_params"]["family"] for t in waiting]
    assert queued == ["extra_trees", "xgboost", "logistic_regression"]
    again = new_study(params, storage, "s")  # a resumed search loads it: nothing queued twice
    assert len(again.get_trials()) == 3


def test_a_search_fits_the_start_points_first_then_samples():
    params = params_with()
    data = small_data()
    study = new_study(params)
    tune.run_search(study, params, data, params.tune.n_trials)
    trials = study.trials
    assert len(trials) == 6
    first = [search_space.plain_params(t.params) for t in trials[:3]]
    assert first[0] == ("extra_trees", {**first[0][1], "n_estimators": 20, "class_weight": "none"})
    assert first[1][0] == "xgboost"
    assert (first[1][1]["max_depth"], first[1][1]["learning_rate"]) == (3, 0.1)
    assert first[2] == ("logistic_regression", {"C": 1.0})
    assert all(t.user_attrs.get(search_space.START_POINT_ATTR) for t in trials[:3])
    assert not any(t.user_attrs.get(search_space.START_POINT_ATTR) for t in trials[3:])
    assert all(t.state != optuna.trial.TrialState.FAIL for t in trials)
    # Deterministic: the same params and data give the same trials.
    twin = new_study(params)
    tune.run_search(twin, params, data, params.tune.n_trials)
    assert [t.params for t in twin.trials] == [t.params for t in trials]
    assert [t.value for t in twin.trials] == [t.value for t in trials]


@pytest.mark.parametrize("family", ["xgboost", "random_forest", "extra_trees"])
def test_a_configuration_class_weight_overrides_tune_class_weight(family):
    y = np.array([0] * 90 + [1] * 10)
    build = {"y": y, "n_classes": 2, "seed": 0, "n_jobs": 1}
    weighted = families.make_estimator(family, {}, class_weight="balanced", **build)
    plain = families.make_estimator(
        family, {families.CLASS_WEIGHT: "none"}, class_weight="balanced", **build
    )
    forced = families.make_estimator(
        family, {families.CLASS_WEIGHT: "balanced"}, class_weight="none", **build
    )
    if family == "xgboost":
        assert weighted.get_params()["scale_pos_weight"] == pytest.approx(9.0)
        assert plain.get_params()["scale_pos_weight"] is None
        assert forced.get_params()["scale_pos_weight"] == pytest.approx(9.0)
    else:
        assert weighted.get_params()["class_weight"] == pytest.approx({0: 100 / 180, 1: 5.0})
        assert plain.get_params()["class_weight"] is None
        assert forced.get_params()["class_weight"] == pytest.approx({0: 100 / 180, 1: 5.0})

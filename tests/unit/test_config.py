"""params.yaml -> typed Params: unknown, missing and mistyped keys fail with the key path."""

from __future__ import annotations

import copy

import pytest
import yaml

from mlplatform.config import Params, load_params, parse_params
from mlplatform.errors import ConfigError
from support.project import ROOT

DEFAULT_PARAMS = ROOT / "params.yaml"
_DEFAULT_RAW = yaml.safe_load(DEFAULT_PARAMS.read_text())


def default_raw() -> dict:
    """A fresh deep copy of the parsed default params.yaml."""
    return copy.deepcopy(_DEFAULT_RAW)


def config_error(raw: dict) -> str:
    """Parse raw params that must fail; return the one-line message."""
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith("params.yaml: "), message
    return message


def set_key(raw: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[last] = value
    return raw


def del_key(raw: dict, dotted: str) -> dict:
    *parents, last = dotted.split(".")
    node = raw
    for key in parents:
        node = node[key]
    del node[last]
    return raw


# --------------------------------------------------------------------------------------
# The default file


def test_default_params_file_loads():
    params = load_params(DEFAULT_PARAMS)
    assert isinstance(params, Params)
    assert params.seed == 42
    assert params.data.source == "hmda"
    assert params.data.target == "deny"
    assert params.data.positive_class == "yes"
    assert params.data.split.train == pytest.approx(0.6)
    assert set(params.tune.families) == {
        "logistic_regression",
        "random_forest",
        "extra_trees",
        "xgboost",
    }
    assert params.tune.families["xgboost"]["max_depth"].kind == "int"
    assert params.tune.families["xgboost"]["learning_rate"].kind == "float"
    assert params.tune.families["random_forest"]["max_features"].kind == "categorical"


def test_parse_params_of_the_default_dict_matches_load_params():
    assert parse_params(default_raw()) == load_params(DEFAULT_PARAMS)


def test_params_are_frozen():
    params = parse_params(default_raw())
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError
        params.seed = 1


def test_section_hash_is_stable_and_section_specific():
    a = parse_params(default_raw())
    b = parse_params(default_raw())
    assert a.section_hash("data") == b.section_hash("data")
    changed = parse_params(set_key(default_raw(), "tune.n_trials", 5))
    assert changed.section_hash("data") == a.section_hash("data")
    assert changed.section_hash("tune") != a.section_hash("tune")
    assert changed.section_hash() != a.section_hash()


# --------------------------------------------------------------------------------------
# Unknown keys


@pytest.mark.parametrize(
    "dotted",
    [
        "sede",
        "data.sourcee",
        "data.split.trian",
        "tune.pruner.enabledd",
        "card.fairness.min_group",
        "tune.families.xgboost.max_depth.lowx",
    ],
)
def test_unknown_key_is_named_by_its_dotted_path(dotted):
    message = config_error(set_key(default_raw(), dotted, 1))
    assert f"{dotted} is not a known key" in message


def test_unknown_model_family_is_named():
    message = config_error(set_key(default_raw(), "tune.families.catboost", {}))
    assert "tune.families" in message
    assert "catboost" in message


def test_one_unknown_nested_key_reports_one_problem():
    raw = set_key(default_raw(), "tune.families.xgboost.max_depth.lowx", 1)
    message = config_error(raw)
    assert "more)" not in message


# --------------------------------------------------------------------------------------
# Missing required keys


@pytest.mark.parametrize("dotted", ["seed", "data", "data.target", "data.source", "tune"])
def test_missing_required_key_is_named(dotted):
    message = config_error(del_key(default_raw(), dotted))
    assert f"{dotted} is required but missing" in message


def test_optional_sections_fall_back_to_defaults():
    raw = default_raw()
    for section in ("features", "train", "explain", "card", "registry", "promotion", "score"):
        del raw[section]
    params = parse_params(raw)
    assert params.features.max_categories == 30
    assert params.score.on_error == "report"


# --------------------------------------------------------------------------------------
# Wrong types and values


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("tune.n_trials", "many"),
        ("seed", "forty-two"),
        ("data.rows", "lots"),
        ("data.rows", 0),
        ("tune.timeout_s", "soon"),
        ("features.max_categories", 1),
        ("score.on_error", "ignore"),
        ("data.column_types", {"chist": "integer"}),
        ("data.drop_columns", "afam"),
    ],
)
def test_wrong_type_or_value_names_the_key_path(dotted, value):
    message = config_error(set_key(default_raw(), dotted, value))
    assert f"{dotted}" in message
    assert "(and" not in message


def test_wrong_type_message_shows_the_bad_value():
    message = config_error(set_key(default_raw(), "tune.n_trials", "many"))
    assert "tune.n_trials:" in message
    assert "'many'" in message


def test_column_types_error_names_the_column():
    raw = set_key(default_raw(), "data.column_types", {"chist": "integer"})
    assert "data.column_types.chist" in config_error(raw)


def test_wrong_type_in_a_union_field_names_the_plain_key_path():
    message = config_error(set_key(default_raw(), "data.positive_class", [1]))
    assert "data.positive_class:" in message
    assert "positive_class.str" not in message


def test_distribution_with_low_above_high_is_rejected():
    raw = set_key(default_raw(), "tune.families.xgboost.max_depth", {"low": 5, "high": 2})
    message = config_error(raw)
    assert "tune.families.xgboost.max_depth" in message
    assert "greater than high" in message


def test_log_scale_distribution_needs_positive_low():
    raw = set_key(
        default_raw(), "tune.families.logistic_regression.C", {"low": 0, "high": 1, "log": True}
    )
    assert "log scale needs low > 0" in config_error(raw)


@pytest.mark.parametrize(("step", "what"), [(2.5, "needs a whole step"), (0, "must be positive")])
def test_an_int_range_with_a_step_optuna_cannot_draw_is_rejected(step, what):
    raw = set_key(
        default_raw(), "tune.families.xgboost.max_depth", {"low": 0, "high": 10, "step": step}
    )
    message = config_error(raw)
    assert "tune.families.xgboost.max_depth" in message and what in message


def test_empty_families_is_rejected():
    message = config_error(set_key(default_raw(), "tune.families", {}))
    assert "tune.families" in message


def test_top_level_must_be_a_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        parse_params(["seed", 1])


# --------------------------------------------------------------------------------------
# Split fractions


@pytest.mark.parametrize(
    "split",
    [
        {"train": 0.5, "validation": 0.2, "test": 0.2},
        {"train": 0.7, "validation": 0.2, "test": 0.2},
        {"train": 0.6, "validation": 0.3},  # test defaults to 0.2: sum 1.1
    ],
)
def test_split_fractions_must_sum_to_one(split):
    message = config_error(set_key(default_raw(), "data.split", split))
    assert "data.split" in message
    assert "must be 1.0" in message


@pytest.mark.parametrize("bad", [0, 1, -0.2, 1.2])
def test_split_fraction_out_of_range_is_rejected(bad):
    raw = set_key(default_raw(), "data.split", {"train": 0.6, "validation": 0.2, "test": bad})
    assert "data.split.test" in config_error(raw)


def test_split_fractions_summing_to_one_are_accepted():
    raw = set_key(default_raw(), "data.split", {"train": 0.7, "validation": 0.15, "test": 0.15})
    split = parse_params(raw).data.split
    assert (split.train, split.validation, split.test) == (0.7, 0.15, 0.15)


# --------------------------------------------------------------------------------------
# Files


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 42\ndata: [unclosed\n  target: deny\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert str(path) in message
    assert "not valid YAML" in message
    assert "\n" not in message


def test_missing_params_file_names_the_file(tmp_path):
    path = tmp_path / "nope" / "params.yaml"
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert str(path) in message
    assert "cannot read" in message
    assert "\n" not in message


def test_errors_from_a_file_name_that_file(tmp_path):
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(set_key(default_raw(), "data.sourcee", "x")))
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value) == f"{path}: data.sourcee is not a known key"


def test_empty_params_file_is_a_config_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("")
    with pytest.raises(ConfigError, match=str(path)):
        load_params(path)


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("promotion.primary_metric", "auc"),
        ("promotion.secondary_metrics", ["roc_auc", "recal"]),
        ("promotion.floors", {"average_precison": 0.3}),
    ],
)
def test_unknown_promotion_metric_is_named(dotted, value):
    message = config_error(set_key(default_raw(), dotted, value))
    assert dotted in message and "unknown metric" in message


def test_promotion_metric_names_are_what_evaluation_reports():
    import numpy as np

    from mlplatform.config import PROMOTION_METRICS
    from mlplatform.evaluation.metrics import evaluate

    rng = np.random.default_rng(0)
    reported = set()
    for k in (2, 3):
        y = np.arange(60) % k
        proba = rng.dirichlet(np.ones(k), size=60)
        reported |= set(evaluate(y, proba, list(range(k)), 0.5 if k == 2 else None))
    assert set(PROMOTION_METRICS) <= reported


# --------------------------------------------------------------------------------------
# Strict types: no silent coercion (issue 11)


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("tune.n_trials", True),
        ("tune.n_trials", "6"),
        ("seed", 4.0),
        ("data.sensitive_as_features", "yes"),
        ("data.sensitive_as_features", 1),
        ("promotion.require_card", "true"),
        ("tune.timeout_s", "1800"),
        ("data.source", 123),
    ],
)
def test_values_of_another_type_are_refused_not_coerced(dotted, value):
    message = config_error(set_key(default_raw(), dotted, value))
    assert message.startswith(f"params.yaml: {dotted}: "), message
    assert repr(value) in message


def test_ints_are_still_accepted_where_a_float_is_expected():
    raw = set_key(default_raw(), "tune.timeout_s", 1800)
    raw = set_key(raw, "promotion.reject_drop", 0)
    params = parse_params(raw)
    assert params.tune.timeout_s == 1800.0 and params.promotion.reject_drop == 0.0


# --------------------------------------------------------------------------------------
# Checked at load, before ingest runs


def test_unknown_tune_metric_is_refused_at_load():
    message = config_error(set_key(default_raw(), "tune.metric", "auc"))
    assert "tune.metric: unknown metric 'auc'" in message and "average_precision" in message


def test_tune_metrics_are_the_objectives_the_search_knows():
    from mlplatform.config import TUNE_METRICS
    from mlplatform.evaluation.metrics import OBJECTIVES

    assert tuple(OBJECTIVES) == TUNE_METRICS


def test_unknown_hyperparameter_is_refused_at_load_with_its_key_path():
    raw = set_key(default_raw(), "tune.families.xgboost.max_dept", {"low": 2, "high": 4})
    message = config_error(raw)
    assert message.startswith("params.yaml: tune.families.xgboost.max_dept: unknown hyperparameter")


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("file:./mlruns", "maintenance mode"),
        ("./mlruns", "maintenance mode"),
        ("mlruns", "maintenance mode"),
        ("sqlite://mlflow.db", "sqlite:///"),
        ("postgres://u@h/db", "postgresql://"),
        ("ftp://host/x", "unsupported scheme 'ftp'"),
        ("http://", "expected http://host"),
    ],
)
def test_tracking_uri_a_store_cannot_use_is_refused_at_load(uri, words):
    message = config_error(set_key(default_raw(), "mlflow.tracking_uri", uri))
    assert "mlflow.tracking_uri:" in message and words in message


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:///mlflow.db",
        "sqlite:////tmp/abs.db",
        "postgresql://user@127.0.0.1:5432/test",
        "postgresql+psycopg2://user@host/db",
        "mysql+pymysql://u:p@h/db",
        "http://127.0.0.1:5000",
        "https://mlflow.example.org",
        "databricks",
    ],
)
def test_tracking_uris_mlflow_can_use_pass(uri):
    assert parse_params(set_key(default_raw(), "mlflow.tracking_uri", uri)).mlflow.tracking_uri


def test_env_tracking_uri_is_checked_when_a_command_sets_up_tracking(monkeypatch):
    import mlplatform
    from mlplatform import tracking

    monkeypatch.setattr(mlplatform, "USER_TRACKING_URI", "file:/tmp/mlruns")
    with pytest.raises(ConfigError, match=r"^MLFLOW_TRACKING_URI: .*maintenance mode"):
        tracking.setup(parse_params(default_raw()))


# --------------------------------------------------------------------------------------
# data.column_types: a kind, or a mapping with a date format (backwards compatible)


def test_column_types_accept_a_kind_or_a_mapping_with_a_date_format():
    raw = set_key(
        default_raw(),
        "data.column_types",
        {"chist": "categorical", "when": {"kind": "datetime", "format": "%d.%m.%Y"}},
    )
    data = parse_params(raw).data
    assert (
        data.declared_kind("chist") == "categorical" and data.declared_date_format("chist") is None
    )
    assert data.declared_kind("when") == "datetime"
    assert data.declared_date_format("when") == "%d.%m.%Y"
    assert data.declared_kind("other") is None


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"kind": "numeric", "format": "%d.%m.%Y"}, "format applies to kind datetime only"),
        ({"kind": "datetime", "format": "dd.mm.yyyy"}, "no strftime directive"),
        ({"kind": "datetime", "fmt": "%d"}, "data.column_types.when.fmt is not a known key"),
        ({"kind": "date"}, "data.column_types.when.kind"),
    ],
)
def test_bad_column_type_mapping_names_the_column(entry, words):
    message = config_error(set_key(default_raw(), "data.column_types", {"when": entry}))
    assert "data.column_types.when" in message and words in message

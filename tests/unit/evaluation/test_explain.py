"""SHAP explanations: additivity, aggregation to source columns, time budget, row choice."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import shap
import xgboost as xgb
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from mlplatform import model_format
from mlplatform.config import ExplainConfig, FeaturesConfig
from mlplatform.data import columns
from mlplatform.evaluation import explain
from mlplatform.modeling import families, features

FAMILIES = ("xgboost", "random_forest", "extra_trees", "logistic_regression")
TASKS = ("binary", "multiclass")
SOURCE_COLUMNS = ["income", "debt", "age", "member", "color", "opened"]
COLORS = ["red", "green", "blue", "teal", "gold"]
N = 400
# XGBoost computes in float32; everything else in float64.
TOL = {"xgboost": 1e-4, "random_forest": 1e-8, "extra_trees": 1e-8, "logistic_regression": 1e-8}


def make_frame(n: int = N, seed: int = 0) -> pd.DataFrame:
    """Numeric columns with gaps, a yes/no column, a five-category column and a date."""
    rng = np.random.default_rng(seed)
    income = rng.normal(50, 15, n)
    income[rng.random(n) < 0.1] = np.nan
    debt = rng.gamma(2.0, 5.0, n)
    debt[rng.random(n) < 0.15] = np.nan
    age = rng.integers(18, 80, n).astype(float)  # never missing
    member = pd.Series(rng.choice(["yes", "no"], n), dtype=object)
    color = pd.Series(rng.choice(COLORS, n, p=[0.3, 0.25, 0.2, 0.15, 0.1]), dtype=object)
    opened = pd.Series(
        pd.Timestamp("2015-01-01") + pd.to_timedelta(rng.integers(0, 3000, n), unit="D")
    ).dt.strftime("%Y-%m-%d")
    return pd.DataFrame(
        {
            "income": income,
            "debt": debt,
            "age": age,
            "member": member,
            "color": color,
            "opened": opened,
        }
    )


def make_target(frame: pd.DataFrame, task: str, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    score = (
        -0.04 * np.nan_to_num(frame["income"].to_numpy(), nan=40.0)
        + 0.08 * np.nan_to_num(frame["debt"].to_numpy(), nan=20.0)
        + (frame["member"] == "no").to_numpy() * 0.8
        + frame["color"]
        .map({"red": 1.0, "green": -0.5, "blue": 0.0, "teal": 0.5, "gold": -1})
        .to_numpy()
        .astype(float)
        + rng.normal(0, 0.7, len(frame))
    )
    if task == "binary":
        return (score > np.quantile(score, 0.7)).astype(np.int64)
    return np.digitize(score, np.quantile(score, [0.33, 0.66])).astype(np.int64)


def _fit(family: str, x: np.ndarray, y: np.ndarray):
    if family == "logistic_regression":
        return LogisticRegression(max_iter=2000, C=0.5).fit(x, y)
    if family == "random_forest":
        return RandomForestClassifier(n_estimators=15, max_depth=5, random_state=0, n_jobs=1).fit(
            x, y
        )
    if family == "extra_trees":
        return ExtraTreesClassifier(n_estimators=15, max_depth=5, random_state=0, n_jobs=1).fit(
            x, y
        )
    return xgb.XGBClassifier(
        n_estimators=20, max_depth=3, learning_rate=0.3, n_jobs=1, random_state=0
    ).fit(x, y)


class Built:
    def __init__(self, family, task, model, estimator, frame, y):
        self.family, self.task, self.model = family, task, model
        self.estimator, self.frame, self.y = estimator, frame, y

    @property
    def n_outputs(self) -> int:
        return 1 if self.task == "binary" else 3

    @property
    def keep(self) -> list[int]:
        return [1] if self.task == "binary" else [0, 1, 2]


def build(tmp_path_factory, family: str, task: str) -> Built:
    frame = make_frame()
    y = make_target(frame, task)
    specs = [columns.make_spec(frame[c], columns.infer_kind(frame[c])) for c in frame.columns]
    canonical, _ = columns.coerce(frame, specs)
    pre = features.build_preprocessor(
        specs, FeaturesConfig(), scale=family == "logistic_regression"
    ).fit(canonical)
    x = np.asarray(pre.transform(canonical), dtype=np.float64)
    est = _fit(family, x, y)
    classes = ["no", "yes"] if task == "binary" else ["low", "mid", "high"]
    folder = tmp_path_factory.mktemp(f"{family}_{task}")
    model_format.write_folder(
        folder,
        preprocessor=pre,
        estimator=est,
        family=family,
        specs=specs,
        classes=classes,
        threshold=0.4 if task == "binary" else None,
        check_frame=frame,
    )
    return Built(family, task, model_format.load(folder), est, frame, y)


@pytest.fixture(scope="module", params=[(f, t) for f in FAMILIES for t in TASKS], ids=str)
def built(request, tmp_path_factory) -> Built:
    return build(tmp_path_factory, *request.param)


@pytest.fixture(scope="module")
def xgb_binary(tmp_path_factory) -> Built:
    return build(tmp_path_factory, "xgboost", "binary")


@pytest.fixture(scope="module")
def xgb_multi(tmp_path_factory) -> Built:
    return build(tmp_path_factory, "xgboost", "multiclass")


def _sample_and_background(b: Built, n: int = 80, n_bg: int = 40):
    frame = b.frame.assign(target=b.y)
    sample = explain.stratified_sample(frame, "target", n, seed=3)
    background = explain.stratified_sample(frame, "target", n_bg, seed=4)
    return sample.drop(columns="target"), background.drop(columns="target")


def _expected_raw(b: Built, x: np.ndarray) -> np.ndarray:
    """The model's raw output computed straight from the in-memory estimator."""
    if b.family in ("random_forest", "extra_trees"):
        return b.estimator.predict_proba(x)[:, b.keep]
    if b.family == "xgboost":
        margin = np.asarray(b.estimator.predict(x, output_margin=True), dtype=np.float64)
    else:
        margin = np.asarray(b.estimator.decision_function(x), dtype=np.float64)
    return margin[:, None] if margin.ndim == 1 else margin[:, b.keep]


# --------------------------------------------------------------------------------------
# The fast exact explainers, every family, binary and multiclass.


@pytest.fixture(scope="module")
def explained(built):
    sample, background = _sample_and_background(built)
    exp = explain.explain(built.model, sample, background, ExplainConfig(time_budget_s=300))
    return built, sample, exp


def test_shape_columns_and_outputs(explained):
    b, sample, exp = explained
    assert exp.values.shape == (len(sample), len(SOURCE_COLUMNS), b.n_outputs)
    # One column per raw feature, no encoded names (no "cat__color_red", no indicators).
    assert sorted(exp.columns) == sorted(SOURCE_COLUMNS)
    assert len(exp.columns) == len(set(exp.columns))
    assert exp.base.shape == (b.n_outputs,)
    assert exp.output.shape == (len(sample), b.n_outputs)
    assert exp.outputs == (["yes"] if b.task == "binary" else ["low", "mid", "high"])
    assert np.isfinite(exp.values).all()


def test_method_and_output_space(explained):
    b, _, exp = explained
    assert exp.method == ("linear" if b.family == "logistic_regression" else "tree")
    assert exp.space == families.get(b.family).shap_output
    forest = b.family in ("random_forest", "extra_trees")
    assert exp.space == ("probability" if forest else "log-odds")


def test_values_add_up_to_the_raw_output(explained):
    b, sample, exp = explained
    x, _ = b.model.transform(sample)
    expected = _expected_raw(b, x)
    tol = TOL[b.family]
    # The output the values are checked against is the model's own margin / probability.
    np.testing.assert_allclose(exp.output, expected, rtol=0, atol=tol)
    np.testing.assert_allclose(exp.values.sum(axis=1) + exp.base, expected, rtol=0, atol=tol)


def test_rows_unlike_the_training_data_are_explained_additively(built):
    """Unseen category, unknown yes/no token, gaps where training had none, a bad date."""
    odd = pd.DataFrame(
        {
            "income": [np.nan, 1e6, 40.0],
            "debt": [np.nan, 0.0, -5.0],
            "age": [np.nan, 30.0, 200.0],
            "member": [None, "maybe", "YES"],
            "color": ["purple", None, "red"],
            "opened": [None, "not a date", "2030-06-01"],
        }
    )
    _, background = _sample_and_background(built)
    exp = explain.explain(built.model, odd, background, ExplainConfig())
    assert exp.values.shape == (3, len(SOURCE_COLUMNS), built.n_outputs)
    x, _ = built.model.transform(odd)
    tol = TOL[built.family]
    np.testing.assert_allclose(exp.output, _expected_raw(built, x), rtol=0, atol=tol)
    np.testing.assert_allclose(exp.values.sum(axis=1) + exp.base, exp.output, rtol=0, atol=tol)


def test_raw_output_matches_the_estimator(built):
    sample, _ = _sample_and_background(built, n=30)
    x, _ = built.model.transform(sample)
    got = explain.raw_output(built.model, x, "tree")
    np.testing.assert_allclose(got, _expected_raw(built, x), rtol=0, atol=TOL[built.family])
    # Permutation always works on probabilities.
    proba = built.model.predict_matrix(x)[:, built.keep]
    np.testing.assert_allclose(explain.raw_output(built.model, x, "permutation"), proba)


def test_summarise(explained):
    b, sample, exp = explained
    summary = explain.summarise(exp, b.model, sample, top=3)
    assert summary["rows_explained"] == len(sample)
    assert summary["method"] == exp.method
    assert summary["output_space"] == exp.space
    assert summary["max_additivity_error"] < TOL[b.family]
    feats = summary["all_features"]
    assert sorted(f["feature"] for f in feats) == sorted(SOURCE_COLUMNS)
    importance = [f["mean_abs_shap"] for f in feats]
    assert importance == sorted(importance, reverse=True)
    expected = {
        c: float(np.abs(exp.values[:, j, :]).mean(axis=0).sum()) for j, c in enumerate(exp.columns)
    }
    for f in feats:
        assert f["mean_abs_shap"] == pytest.approx(expected[f["feature"]])
        assert f["for_class"] in exp.outputs
        assert isinstance(f["direction"], str) and f["direction"]
    assert summary["top_features"] == feats[:3]


# --------------------------------------------------------------------------------------
# Aggregation.


def test_aggregate_sums_columns_sharing_a_source():
    values = np.arange(2 * 5 * 2, dtype=float).reshape(2, 5, 2)
    agg, cols = explain.aggregate(values, ["a", "b", "a", "c", "b"])
    assert cols == ["a", "b", "c"]
    np.testing.assert_array_equal(agg[:, 0], values[:, 0] + values[:, 2])
    np.testing.assert_array_equal(agg[:, 1], values[:, 1] + values[:, 4])
    np.testing.assert_array_equal(agg[:, 2], values[:, 3])
    # Totals per row are unchanged.
    np.testing.assert_allclose(agg.sum(axis=1), values.sum(axis=1))


@pytest.mark.parametrize("which", ["xgb_binary", "xgb_multi"])
def test_aggregated_columns_equal_the_sum_of_their_encoded_columns(which, request):
    b: Built = request.getfixturevalue(which)
    sample, background = _sample_and_background(b)
    exp = explain.explain(b.model, sample, background, ExplainConfig())
    x, _ = b.model.transform(sample)
    # Unaggregated SHAP values, computed independently on the transformed matrix.
    raw = np.asarray(shap.TreeExplainer(b.estimator).shap_values(x), dtype=np.float64)
    raw = raw[:, :, None] if raw.ndim == 2 else raw
    sources = features.source_columns(b.model.preprocessor, b.model.specs)
    assert len(sources) == x.shape[1]
    # color: five one-hot columns; the numeric columns with gaps: value + missing indicator.
    assert sources.count("color") == len(COLORS)
    assert sources.count("income") == 2
    assert sources.count("debt") == 2
    assert sources.count("age") == 1
    assert sources.count("member") == 1
    assert sources.count("opened") == 4  # epoch days, month, day of week, hour
    idx = np.asarray(sources)
    for j, col in enumerate(exp.columns):
        expected = raw[:, idx == col, :].sum(axis=1)
        np.testing.assert_allclose(exp.values[:, j, :], expected, rtol=0, atol=1e-6, err_msg=col)
    # Several one-hot columns carry contributions (the sum is more than a relabelling).
    color = raw[:, idx == "color", 0]
    assert (np.abs(color).max(axis=0) > 1e-6).sum() >= 2


# --------------------------------------------------------------------------------------
# Permutation (model-agnostic fallback).


@pytest.mark.parametrize(
    ("family", "task"), [("xgboost", "binary"), ("random_forest", "multiclass")]
)
def test_permutation_is_additive_in_probability_space(family, task, tmp_path_factory):
    b = build(tmp_path_factory, family, task)
    sample, background = _sample_and_background(b, n=30, n_bg=20)
    exp = explain.explain(b.model, sample, background, ExplainConfig(), method="permutation")
    assert exp.method == "permutation"
    assert exp.space == "probability"
    assert exp.values.shape == (len(sample), len(SOURCE_COLUMNS), b.n_outputs)
    proba = b.model.predict_proba(sample)[:, b.keep]
    np.testing.assert_allclose(exp.output, proba, rtol=0, atol=1e-7)
    np.testing.assert_allclose(exp.values.sum(axis=1) + exp.base, exp.output, rtol=0, atol=1e-6)


def test_linear_family_falls_back_to_permutation_for_tree_method(tmp_path_factory):
    b = build(tmp_path_factory, "logistic_regression", "binary")
    sample, background = _sample_and_background(b, n=20, n_bg=20)
    exp = explain.explain(b.model, sample, background, ExplainConfig(), method="tree")
    assert exp.method == "permutation"
    assert exp.space == "probability"
    np.testing.assert_allclose(exp.values.sum(axis=1) + exp.base, exp.output, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------
# Time budget.


def test_tiny_time_budget_explains_the_first_batch_only(xgb_binary, caplog):
    b = xgb_binary
    sample, background = _sample_and_background(b, n=200)
    assert len(sample) == 200
    with caplog.at_level(logging.WARNING, logger="mlplatform.evaluation.explain"):
        exp = explain.explain(b.model, sample, background, ExplainConfig(time_budget_s=0.001))
    n = exp.values.shape[0]
    assert 50 <= n < 200  # at least the first batch of 50, fewer than sampled
    assert exp.output.shape == (n, 1)
    # The explained rows are the first n of the sample, still additive.
    x, _ = b.model.transform(sample.iloc[:n])
    np.testing.assert_allclose(exp.output, _expected_raw(b, x), rtol=0, atol=1e-4)
    np.testing.assert_allclose(exp.values.sum(axis=1) + exp.base, exp.output, rtol=0, atol=1e-4)
    assert f"explaining {n} of 200 sampled rows" in caplog.text


def test_generous_budget_explains_every_row(xgb_binary):
    sample, background = _sample_and_background(xgb_binary, n=200)
    exp = explain.explain(xgb_binary.model, sample, background, ExplainConfig(time_budget_s=300))
    assert exp.values.shape[0] == 200


# --------------------------------------------------------------------------------------
# stratified_sample


@pytest.mark.parametrize("n", [50, 123, 200])
def test_stratified_sample_keeps_class_balance(n):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=1000),
            "y": rng.choice(["a", "b", "c"], 1000, p=[0.7, 0.22, 0.08]),
        },
        index=rng.permutation(np.arange(5000, 6000)),
    )
    sample = explain.stratified_sample(frame, "y", n, seed=1)
    assert len(sample) == n
    assert sample.index.is_unique and sample.index.isin(frame.index).all()
    assert sample.index.is_monotonic_increasing
    share = frame["y"].value_counts(normalize=True)
    counts = sample["y"].value_counts()
    for cls, p in share.items():
        assert abs(counts.get(cls, 0) - p * n) <= 1, (cls, counts.get(cls, 0), p * n)
    pd.testing.assert_frame_equal(sample, explain.stratified_sample(frame, "y", n, seed=1))


def test_stratified_sample_returns_small_frames_whole():
    frame = pd.DataFrame({"x": range(10), "y": [0, 1] * 5})
    assert explain.stratified_sample(frame, "y", 10, seed=0) is frame
    assert explain.stratified_sample(frame, "y", 50, seed=0) is frame


def test_stratified_sample_with_a_class_too_rare_to_stratify():
    frame = pd.DataFrame({"x": range(100), "y": [0] * 99 + [1]})
    sample = explain.stratified_sample(frame, "y", 20, seed=0)
    assert len(sample) == 20
    assert sample.index.is_unique


# --------------------------------------------------------------------------------------
# chosen_rows

P = np.array([0.10, 0.95, 0.50, 0.80, 0.45, 0.99, 0.52])


def test_chosen_rows_highest_risk_and_borderline():
    chosen = explain.chosen_rows(P, threshold=0.5, n=2)
    # Highest probabilities first: 0.99 (row 5), 0.95 (row 1).
    assert chosen["highest_risk"] == [5, 1]
    # Nearest 0.5: row 2 (0.00 away), row 6 (0.02), then row 4 (0.05).
    assert chosen["borderline"] == [2, 6]


def test_borderline_rows_exclude_the_highest_risk_ones():
    chosen = explain.chosen_rows(P, threshold=0.9, n=2)
    assert chosen["highest_risk"] == [5, 1]
    # Nearest 0.9: row 1 (0.05), row 5 (0.09), row 3 (0.10), row 6 (0.38): 1 and 5 are
    # already highest-risk, so the borderline ones are 3 and 6.
    assert chosen["borderline"] == [3, 6]
    assert not set(chosen["borderline"]) & set(chosen["highest_risk"])


def test_chosen_rows_order_and_sizes():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=60)
    chosen = explain.chosen_rows(p, threshold=0.3, n=5)
    hr, bl = chosen["highest_risk"], chosen["borderline"]
    assert len(hr) == len(bl) == 5
    assert list(p[hr]) == sorted(p, reverse=True)[:5]
    assert all(p[hr][i] >= p[hr][i + 1] for i in range(4))
    assert not set(hr) & set(bl)
    dist = np.abs(p - 0.3)
    others = [i for i in range(60) if i not in hr and i not in bl]
    assert dist[bl].max() <= dist[others].min()
    assert list(dist[bl]) == sorted(dist[bl])
    assert all(isinstance(i, int) for i in hr + bl)


def test_chosen_rows_without_threshold_has_no_borderline():
    assert explain.chosen_rows(P, threshold=None, n=3) == {"highest_risk": [5, 1, 3]}
    assert explain.chosen_rows(P, threshold=0.5, n=0) == {"highest_risk": [], "borderline": []}

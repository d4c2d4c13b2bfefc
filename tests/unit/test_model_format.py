"""The logged model format: compiled preprocessing, save/load without pickle, input errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
import xgboost as xgb
from mlflow.exceptions import MlflowException
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from mlplatform import model_format
from mlplatform.config import FeaturesConfig
from mlplatform.data import columns
from mlplatform.modeling import families, features

CFG = FeaturesConfig(max_categories=4, min_frequency=0.05)
CLASSES = ["no", "yes"]
THRESHOLD = 0.3
N = 300


def make_frame(n: int = N, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    a[rng.random(n) < 0.1] = np.nan
    b = rng.integers(0, 50, n).astype(float)
    b[rng.random(n) < 0.05] = np.nan
    c = rng.normal(5, 2, n)  # never missing in training
    colors = rng.choice(
        ["red", "green", "blue", "teal", "pink", "gold"],
        size=n,
        p=[0.4, 0.25, 0.2, 0.1, 0.03, 0.02],
    )
    color = pd.Series(colors, dtype=object)
    color[rng.random(n) < 0.03] = None
    region = pd.Series(rng.choice(["north", "south", "east"], n), dtype=object)
    member = pd.Series(rng.choice(["yes", "no"], n), dtype=object)
    when = pd.Series(
        pd.date_range("2020-01-01", periods=n, freq="17h").strftime("%Y-%m-%dT%H:%M:%S")
    )
    return pd.DataFrame(
        {"a": a, "b": b, "c": c, "color": color, "region": region, "member": member, "when": when}
    )


def make_target(frame: pd.DataFrame, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    score = (
        np.nan_to_num(frame["a"].to_numpy(dtype=float))
        + (frame["color"] == "red").to_numpy() * 1.0
        + (frame["member"] == "yes").to_numpy() * 0.5
        + rng.normal(0, 1, len(frame))
    )
    return (score > 0.8).astype(np.int64)


def odd_rows() -> pd.DataFrame:
    """Rows the training data never showed: unseen, missing and infrequent values."""
    return pd.DataFrame(
        {
            "a": [np.nan, 0.5, np.nan, 1.0, -2.0, np.nan],
            "b": [np.nan, 10.0, 3.0, np.nan, 20.0, 49.0],
            "c": [np.nan, 4.0, np.nan, 6.0, 5.0, 1.0],  # missing although never in training
            "color": ["orange", None, "gold", "pink", "teal", "red"],
            "region": ["west", "north", None, "east", "south", "mars"],
            "member": ["Y", None, "yes", "no", "YES", "no"],  # "maybe" is invalid now
            "when": [None, "2021-06-01T10:00:00", "not a date", None, "2019-01-01T00:00:00", None],
        }
    )


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame()


@pytest.fixture(scope="module")
def specs(frame) -> list[columns.ColumnSpec]:
    return [columns.make_spec(frame[c], columns.infer_kind(frame[c])) for c in frame.columns]


@pytest.fixture(scope="module")
def canonical(frame, specs) -> pd.DataFrame:
    return columns.coerce(frame, specs)[0]


@pytest.fixture(scope="module")
def fitted(specs, canonical):
    """Fitted preprocessors, with and without scaling."""
    out = {}
    for scale in (False, True):
        out[scale] = features.build_preprocessor(specs, CFG, scale=scale).fit(canonical)
    return out


def test_specs_cover_every_kind(specs):
    kinds = {s.name: s.kind for s in specs}
    assert kinds == {
        "a": "numeric",
        "b": "numeric",
        "c": "numeric",
        "color": "categorical",
        "region": "categorical",
        "member": "boolean",
        "when": "datetime",
    }


def test_rare_categories_are_grouped(fitted):
    encoder = fitted[False].named_transformers_["cat"]
    infrequent = [None if i is None else sorted(i) for i in encoder.infrequent_categories_]
    assert infrequent == [["__missing__", "gold", "pink", "teal"], None]


@pytest.mark.parametrize("scale", [False, True])
def test_compiled_equals_transformer(fitted, specs, canonical, scale):
    pre = fitted[scale]
    compiled = model_format.CompiledPreprocessor(pre)
    expected = pre.transform(canonical)
    got = compiled.transform(canonical)
    assert got.shape == expected.shape
    assert compiled.n_out == expected.shape[1]
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("scale", [False, True])
def test_compiled_equals_transformer_on_unseen_missing_infrequent(fitted, specs, scale):
    pre = fitted[scale]
    odd, invalid = columns.coerce(odd_rows(), specs)
    assert set(invalid) == {"when"}  # "not a date"
    expected = pre.transform(odd)
    got = model_format.CompiledPreprocessor(pre).transform(odd)
    assert not np.isnan(expected).any()
    assert np.array_equal(got, expected)
    names = list(pre.get_feature_names_out())
    cat = expected[:, [i for i, n in enumerate(names) if n.startswith("cat__color_")]]
    infrequent = names.index("cat__color_infrequent_sklearn")
    # orange (unseen), missing, gold, pink, teal -> the infrequent column; red -> its own.
    assert expected[:5, infrequent].tolist() == [1.0] * 5
    assert cat.sum(axis=1).tolist() == [1.0] * 6
    region = expected[:, [i for i, n in enumerate(names) if n.startswith("cat__region_")]]
    # region has no infrequent group: west / missing / mars encode as all zeros.
    assert region.sum(axis=1).tolist() == [0.0, 1.0, 0.0, 1.0, 1.0, 0.0]


@pytest.mark.filterwarnings("ignore:Skipping features without any observed values")
def test_compiled_handles_all_missing_numeric_column(frame):
    data = frame.assign(empty=np.nan)
    specs = [columns.make_spec(data[c], columns.infer_kind(data[c])) for c in data.columns]
    canonical = columns.coerce(data, specs)[0]
    pre = features.build_preprocessor(specs, CFG, scale=True).fit(canonical)
    expected = pre.transform(canonical)
    got = model_format.CompiledPreprocessor(pre).transform(canonical)
    assert np.array_equal(got, expected)
    assert len(features.source_columns(pre, specs)) == expected.shape[1]


def _expected_source(name: str, raw_names: list[str]) -> str:
    block, rest = name.split("__", 1)
    if block == "num":
        rest = rest.removeprefix("missingindicator_")
        return rest.split("__")[0]  # datetime parts: when__month -> when
    return next(r for r in raw_names if rest.startswith(f"{r}_"))


@pytest.mark.parametrize("scale", [False, True])
def test_source_columns_map_outputs_to_raw_columns(fitted, specs, canonical, scale):
    pre = fitted[scale]
    sources = features.source_columns(pre, specs)
    names = list(pre.get_feature_names_out())
    assert len(sources) == pre.transform(canonical).shape[1] == len(names)
    raw_names = [s.name for s in specs]
    assert sources == [_expected_source(n, raw_names) for n in names]
    assert sources.count("color") == 4  # blue, green, red, infrequent
    assert sources.count("region") == 3
    assert sources.count("when") == 4
    assert sources.count("a") == 2  # value and missing indicator


# --------------------------------------------------------------------------------------
# Saved model.


def _fit(family: str, x: np.ndarray, y: np.ndarray):
    if family == "logistic_regression":
        return LogisticRegression(max_iter=500).fit(x, y)
    if family == "random_forest":
        return RandomForestClassifier(n_estimators=15, max_depth=5, random_state=0).fit(x, y)
    if family == "extra_trees":
        return ExtraTreesClassifier(n_estimators=15, max_depth=5, random_state=0).fit(x, y)
    return xgb.XGBClassifier(n_estimators=15, max_depth=3, n_jobs=1, random_state=0).fit(x, y)


@pytest.fixture(scope="module", params=list(families.FAMILY_NAMES))
def saved(request, tmp_path_factory, frame, specs, canonical):
    family = request.param
    pre = features.build_preprocessor(specs, CFG, scale=family == "logistic_regression")
    x = pre.fit_transform(canonical)
    y = make_target(frame)
    estimator = _fit(family, x, y)
    folder = tmp_path_factory.mktemp(family) / "m"
    meta = model_format.write_folder(
        folder,
        preprocessor=pre,
        estimator=estimator,
        family=family,
        specs=specs,
        classes=CLASSES,
        threshold=THRESHOLD,
        check_frame=frame,
    )
    return {
        "family": family,
        "pre": pre,
        "estimator": estimator,
        "folder": folder,
        "meta": meta,
        "model": model_format.load(folder),
    }


def test_model_json(saved, specs):
    on_disk = json.loads((saved["folder"] / "model.json").read_text())
    assert on_disk == saved["meta"]
    assert on_disk["compiled_preprocessing"] is True
    assert on_disk["family"] == saved["family"]
    assert on_disk["classes"] == CLASSES
    assert on_disk["threshold"] == THRESHOLD
    assert on_disk["format_version"] == model_format.FORMAT_VERSION
    assert [columns.ColumnSpec.from_dict(d) for d in on_disk["features"]] == specs
    # Exactly the types skops does not trust by default, all on the project's list.
    trusted = on_disk["trusted_types"]
    skops_files = sorted(saved["folder"].glob("*.skops"))
    untrusted = {t for f in skops_files for t in sio.get_untrusted_types(file=f)}
    assert trusted == sorted(untrusted)
    assert set(trusted) <= set(model_format.SKLEARN_TRUSTED)


def test_no_pickle_files(saved):
    files = {p.name for p in saved["folder"].rglob("*") if p.is_file()}
    estimator_file = "estimator.ubj" if saved["family"] == "xgboost" else "estimator.skops"
    assert files == {"model.json", "preprocessor.skops", estimator_file}
    assert not list(saved["folder"].rglob("*.pkl"))
    assert not list(saved["folder"].rglob("*.pickle"))


def test_loaded_model_uses_compiled_preprocessing(saved):
    model = saved["model"]
    assert isinstance(model.compiled, model_format.CompiledPreprocessor)
    assert model.family == saved["family"]
    assert model.input_names == ["a", "b", "c", "color", "region", "member", "when"]
    assert model.output_columns == ["prediction", "probability_no", "probability_yes"]


@pytest.mark.parametrize("rows", ["train", "odd"])
def test_predict_proba_equals_original_pipeline(saved, frame, specs, rows):
    data = frame if rows == "train" else odd_rows()
    canonical = columns.coerce(data, specs)[0]
    pipeline = Pipeline([("pre", saved["pre"]), ("model", saved["estimator"])])
    expected = pipeline.predict_proba(canonical)
    got = saved["model"].predict_proba(data)
    assert got.shape == (len(data), 2)
    assert np.array_equal(got, expected)


def test_prediction_column_respects_threshold(saved, frame):
    out = saved["model"].predict(frame)
    assert list(out.columns) == ["prediction", "probability_no", "probability_yes"]
    assert out.index.equals(frame.index)
    p_yes = out["probability_yes"].to_numpy()
    assert np.array_equal(out["prediction"].to_numpy(), np.where(p_yes >= THRESHOLD, "yes", "no"))
    # The threshold matters here: some rows are "yes" only because 0.3 <= p < 0.5.
    between = (p_yes >= THRESHOLD) & (p_yes < 0.5)
    assert between.any()
    assert (out["prediction"][between] == "yes").all()
    assert out["prediction"].dtype == object or pd.api.types.is_string_dtype(out["prediction"])


def test_predict_accepts_records(saved, frame):
    records = frame.head(3).replace({np.nan: None}).to_dict(orient="records")
    from_records = saved["model"].predict(records)
    from_frame = saved["model"].predict(frame.head(3))
    assert np.array_equal(
        from_records["probability_yes"].to_numpy(), from_frame["probability_yes"].to_numpy()
    )
    one = saved["model"].predict(records[0])
    assert len(one) == 1
    # One row vs a batch of three: BLAS may sum in another order, hence approx.
    assert one["probability_yes"].iloc[0] == pytest.approx(
        from_frame["probability_yes"].iloc[0], rel=1e-12
    )


def test_scoring_server_gets_the_same_rows_as_records(saved, frame, monkeypatch):
    """In the scoring server predict returns records; MLflow's JSON answer is unchanged."""
    import io

    from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT
    from mlflow.pyfunc.scoring_server import predictions_to_json

    assert _MLFLOW_IS_IN_SERVING_ENVIRONMENT.name == model_format._SERVING_ENV
    expected = saved["model"].predict(frame.head(7))
    assert not model_format.in_scoring_server()
    monkeypatch.setenv(model_format._SERVING_ENV, "true")
    records = saved["model"].predict(frame.head(7))
    assert isinstance(records, list)
    # The served answer carries one new request id per request (monitoring.served).
    ids = {r.pop("request_id") for r in records}
    assert len(ids) == 1 and len(ids.pop()) == 32
    assert records == expected.to_dict(orient="records")
    as_json = {}
    for name, out in (("records", records), ("frame", expected)):
        buf = io.StringIO()
        predictions_to_json(out, buf)
        as_json[name] = buf.getvalue()
    assert as_json["records"] == as_json["frame"]


def test_predict_missing_column(saved, frame):
    with pytest.raises(MlflowException) as info:
        saved["model"].predict(frame.drop(columns=["b"]).head(5))
    assert "missing column(s): b" in info.value.message


def test_predict_column_given_twice(saved, frame):
    twice = pd.concat([frame.head(3), frame.head(3)[["b"]]], axis=1)
    with pytest.raises(MlflowException) as info:
        saved["model"].predict(twice)
    assert "column(s) given more than once: b" in info.value.message


def test_predict_empty_frame(saved, frame):
    with pytest.raises(MlflowException, match="empty"):
        saved["model"].predict(frame.iloc[:0])


def test_predict_text_in_numeric_column(saved, frame):
    bad = frame.head(4).astype({"c": object})
    bad.loc[bad.index[2], "c"] = "twelve"
    with pytest.raises(MlflowException) as info:
        saved["model"].predict(bad)
    message = info.value.message
    assert "column 'c'" in message
    assert "'twelve'" in message
    assert "number" in message


def test_load_rejects_unknown_format_version(saved, tmp_path):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(saved["folder"], copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["format_version"] = 99
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(model_format.ModelFormatError, match="format_version 99"):
        model_format.load(copy)


# --------------------------------------------------------------------------------------
# Models registered by an earlier release keep loading.


def test_model_logged_by_release_0_1_0_still_loads_and_predicts_the_same():
    import json

    import mlflow
    import pandas as pd

    from support.project import ROOT

    folder = ROOT / "tests" / "fixtures" / "model_v0_1_0"
    expected = json.loads((ROOT / "tests" / "fixtures" / "model_v0_1_0_expected.json").read_text())
    assert "loader_module: mlplatform.model_format" in (folder / "MLmodel").read_text()
    rows = pd.DataFrame(expected["inputs"])
    for model in (model_format.load_pyfunc(folder), mlflow.pyfunc.load_model(str(folder))):
        out = model.predict(rows)
        assert out["prediction"].tolist() == [r["prediction"] for r in expected["expected"]]
        for cls in ("no", "yes"):
            col = f"probability_{cls}"
            assert out[col].tolist() == pytest.approx([r[col] for r in expected["expected"]])


def test_input_errors_stay_one_line_when_the_scoring_server_decorates_them(saved, frame):
    """MLflow's server sets e.message = "Failed to predict data '<frame dump>'. Error: ...";
    the client must read our line, not a dump of its request."""
    with pytest.raises(MlflowException) as info:
        saved["model"].predict(frame.drop(columns=["b"]).head(5))
    error = info.value
    error.message = f"Failed to predict data '{frame.head(5)}'. \nError: {error.message}"
    assert error.message == "missing column(s): b"
    assert json.loads(error.serialize_as_json())["message"] == "missing column(s): b"


def test_a_request_with_none_of_the_model_columns_names_them(saved, frame):
    with pytest.raises(MlflowException) as info:
        saved["model"].predict(pd.DataFrame())
    assert info.value.message.startswith("empty input: send at least one record with the columns")
    assert "a, b, c, color, region, ... (7 columns)" in info.value.message


def test_a_date_format_found_at_training_is_how_the_saved_model_reads_dates(tmp_path):
    """DD.MM.YYYY dates became categories; now the format is stored with the column."""
    rng = np.random.default_rng(5)
    when = pd.Series(pd.date_range("2020-01-01", periods=N, freq="3D").strftime("%d.%m.%Y"))
    data = pd.DataFrame({"a": rng.normal(size=N), "when": when})
    specs = [columns.make_spec(data[c], *columns.infer(data[c])) for c in data.columns]
    assert specs[1].date_format == "%d.%m.%Y"
    canonical = columns.coerce(data, specs)[0]
    pre = features.build_preprocessor(specs, CFG, scale=True).fit(canonical)
    y = (canonical["when__month"] > 6).astype(int).to_numpy()
    model_format.write_folder(
        tmp_path / "m",
        preprocessor=pre,
        estimator=LogisticRegression(max_iter=500).fit(pre.transform(canonical), y),
        family="logistic_regression",
        specs=specs,
        classes=CLASSES,
        threshold=THRESHOLD,
        check_frame=data,
    )
    model = model_format.load(tmp_path / "m")
    assert model.specs[1].date_format == "%d.%m.%Y"
    out = model.predict(pd.DataFrame({"a": [0.1, 0.1], "when": ["15.08.2021", "15.01.2021"]}))
    assert out["prediction"].tolist() == ["yes", "no"]
    with pytest.raises(MlflowException, match="column 'when': value '2021-08-15'"):
        model.predict(pd.DataFrame({"a": [0.1], "when": ["2021-08-15"]}))


def test_request_ids_in_the_input_are_used_per_row_and_are_not_features(saved, frame, monkeypatch):
    plain = saved["model"].predict(frame.head(3))
    assert "request_id" not in plain.columns  # in process, log off: the answer is unchanged
    given = frame.head(3).assign(request_id=["a-1", "a-2", None])
    out = saved["model"].predict(given)
    assert out["request_id"].tolist()[:2] == ["a-1", "a-2"] and len(out["request_id"][2]) == 32
    assert out.drop(columns="request_id").equals(plain)
    monkeypatch.setenv(model_format._SERVING_ENV, "true")
    records = saved["model"].predict(given)
    assert [r["request_id"] for r in records[:2]] == ["a-1", "a-2"]

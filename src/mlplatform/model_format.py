"""The logged model: one MLflow pyfunc model that predicts from raw records.

Layout of the model's data folder (``mlplatform_model/``)::

    model.json          column specs, classes, threshold, family, trusted skops types
    preprocessor.skops  the fitted sklearn ColumnTransformer (skops, trusted types listed)
    estimator.ubj       XGBoost's native format, or
    estimator.skops     a scikit-learn estimator (skops, trusted types listed)

No pickle or cloudpickle file is written or read: skops refuses any type not on the
explicit list in model.json, and the MLmodel file names this module as the loader (it must
be installed, as it is in the project's virtualenv), so the registry holds data, not code
(``model_trust`` checks a folder before anything in it is used).

Scoring goes raw records -> ``columns.coerce`` -> preprocessing -> estimator. The
preprocessing is compiled from the fitted transformer's public attributes into a few numpy
operations (imputation, indicators, scaling, one-hot lookups), checked at save time to give
exactly the transformer's output, with the transformer itself as the fallback.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplatform import model_trust
from mlplatform.data.columns import ColumnSpec, coerce, coerce_arrays
from mlplatform.errors import ModelError
from mlplatform.model_trust import (  # noqa: F401 (part of this module's interface)
    DATA_DIR,
    FORMAT_VERSION,
    LOADER_MODULE,
    SKLEARN_TRUSTED,
    ModelFormatError,
    check_mlmodel,
)
from mlplatform.modeling import families
from mlplatform.monitoring import served

PREDICTION = "prediction"
PROBA_PREFIX = "probability_"
# Set by MLflow's scoring server (mlflow.environment_variables._MLFLOW_IS_IN_SERVING_ENVIRONMENT).
_SERVING_ENV = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"


def probability_column(cls: Any) -> str:
    """The name of the answer column holding the probability of class ``cls``."""
    return f"{PROBA_PREFIX}{cls}"


def probabilities(out: pd.DataFrame, classes: list[Any]) -> np.ndarray:
    """The class probabilities of a ``predict`` answer (rows x classes, in class order)."""
    return out[[probability_column(c) for c in classes]].to_numpy(dtype=np.float64)


def _skops_dump(obj: Any, path: Path) -> list[str]:
    import skops.io as sio

    sio.dump(obj, path)
    untrusted = sio.get_untrusted_types(file=path)
    unexpected = sorted(set(untrusted) - set(SKLEARN_TRUSTED))
    if unexpected:
        raise ModelFormatError(f"{path.name}: types outside the trusted list: {unexpected}")
    return sorted(set(untrusted))


def _skops_load(path: Path, trusted: list[str]) -> Any:
    import skops.io as sio

    allowed = sorted(set(trusted) & set(SKLEARN_TRUSTED))
    return sio.load(path, trusted=allowed)


# --------------------------------------------------------------------------------------
# Compiled preprocessing.


class CompiledPreprocessor:
    """The fitted ColumnTransformer as numpy operations (same output, far less overhead)."""

    def __init__(self, transformer: Any) -> None:
        self.blocks: list[tuple[str, Any]] = []
        for name, step, cols in transformer.transformers_:
            if name == "remainder" or step == "drop":
                continue
            if name == "num":
                self.blocks.append(("num", self._numeric(step, list(cols))))
            elif name == "cat":
                self.blocks.append(("cat", self._categorical(step, list(cols))))
            else:
                raise ModelFormatError(f"cannot compile transformer block {name!r}")
        self.n_out = int(sum(b["width"] for _, b in self.blocks))

    @staticmethod
    def _numeric(pipe: Any, cols: list[str]) -> dict[str, Any]:
        imputer = pipe.named_steps["impute"]
        stats = np.asarray(imputer.statistics_, dtype=np.float64)
        keep = ~np.isnan(stats)
        indicator = imputer.indicator_.features_ if imputer.indicator_ is not None else []
        scaler = pipe.named_steps.get("scale")
        width = int(keep.sum()) + len(indicator)
        return {
            "cols": cols,
            "stats": stats,
            "keep": keep,
            "all_kept": bool(keep.all()),
            "indicator": np.asarray(indicator, dtype=np.int64),
            "mean": None if scaler is None else np.asarray(scaler.mean_, dtype=np.float64),
            "scale": None if scaler is None else np.asarray(scaler.scale_, dtype=np.float64),
            "width": width,
        }

    @staticmethod
    def _categorical(encoder: Any, cols: list[str]) -> dict[str, Any]:
        if encoder.drop_idx_ is not None:
            raise ModelFormatError("cannot compile a OneHotEncoder with drop")
        lookups, defaults, offset = [], [], 0
        for cats, infreq in zip(encoder.categories_, encoder.infrequent_categories_, strict=True):
            infrequent = set() if infreq is None else {str(c) for c in infreq}
            frequent = [str(c) for c in cats if str(c) not in infrequent]
            table = {c: offset + i for i, c in enumerate(frequent)}
            width = len(frequent)
            default = -1
            if infrequent:
                default = offset + width
                table.update(dict.fromkeys(infrequent, default))
                width += 1
            lookups.append(table)
            defaults.append(default)
            offset += width
        return {"cols": cols, "lookups": lookups, "defaults": defaults, "width": offset}

    def transform(self, canonical: Any) -> np.ndarray:
        """Canonical columns (a DataFrame or a dict of arrays) -> model matrix."""
        n = len(canonical[next(iter(canonical.keys()))]) if len(canonical.keys()) else 0
        parts = []
        for kind, b in self.blocks:
            if kind == "num":
                x = np.column_stack([np.asarray(canonical[c], dtype=np.float64) for c in b["cols"]])
                missing = np.isnan(x)
                if missing.any():
                    x = np.where(missing, b["stats"], x)
                if not b["all_kept"]:
                    x = x[:, b["keep"]]
                if len(b["indicator"]):
                    x = np.hstack([x, missing[:, b["indicator"]].astype(np.float64)])
                if b["mean"] is not None:
                    x = (x - b["mean"]) / b["scale"]
                parts.append(x)
            else:
                out = np.zeros((n, b["width"]), dtype=np.float64)
                rows = np.arange(n)
                for col, table, default in zip(b["cols"], b["lookups"], b["defaults"], strict=True):
                    values = np.asarray(canonical[col], dtype=object)
                    idx = np.fromiter((table.get(v, default) for v in values), np.int64, n)
                    hit = idx >= 0
                    out[rows[hit], idx[hit]] = 1.0
                parts.append(out)
        return parts[0] if len(parts) == 1 else np.hstack(parts)


# --------------------------------------------------------------------------------------
# The model.


class TabularModel:
    """Raw records in; predicted class and class probabilities out.

    Raises:
        ModelFormatError: (at load) the folder is not a model this version can load.
    """

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        meta_path = folder / "model.json"
        if not meta_path.is_file():
            raise ModelFormatError(f"{folder}: model.json not found")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise ModelFormatError(
                f"{meta_path}: format_version {self.meta.get('format_version')} is not "
                f"{FORMAT_VERSION}"
            )
        self.specs = [ColumnSpec.from_dict(d) for d in self.meta["features"]]
        self.classes = self.meta["classes"]
        self.threshold = self.meta.get("threshold")
        self.family = self.meta["family"]
        trusted = self.meta.get("trusted_types", [])
        self.preprocessor = _skops_load(folder / "preprocessor.skops", trusted)
        self.compiled: CompiledPreprocessor | None = None
        if self.meta.get("compiled_preprocessing", False):
            self.compiled = CompiledPreprocessor(self.preprocessor)
        if families.get(self.family).native_format:
            import xgboost as xgb

            self.booster = xgb.Booster()
            self.booster.load_model(str(folder / "estimator.ubj"))
            self.estimator = None
        else:
            self.booster = None
            self.estimator = _skops_load(folder / "estimator.skops", trusted)
            if hasattr(self.estimator, "n_jobs"):
                # One thread: deterministic sums and no pool start-up per request.
                self.estimator.set_params(n_jobs=1)
        self.set_threads(int(os.environ.get("MLPLATFORM_PREDICT_THREADS", "1")))
        self._proba_names = [probability_column(c) for c in self.classes]
        self._class_array = np.asarray(self.classes, dtype=object)
        self.output_columns = [PREDICTION, *self._proba_names]
        # The prediction log (monitoring.served): set at load by MLflow's loader hook.
        self.prediction_log: Any = None
        self.identity = served.identity(None)
        self._takes_ids = served.REQUEST_ID not in self.input_names

    def set_threads(self, n: int) -> None:
        if self.booster is not None:
            self.booster.set_param({"nthread": n})

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def transform(self, raw: pd.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Raw records -> model matrix, and per column the rows whose values were unreadable."""
        if self.compiled is not None:
            arrays, invalid = coerce_arrays(raw, self.specs)
            return self.compiled.transform(arrays), invalid
        canonical, invalid = coerce(raw, self.specs)
        return np.asarray(self.preprocessor.transform(canonical), dtype=np.float64), invalid

    def predict_matrix(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities for a preprocessed matrix (rows x classes)."""
        if self.booster is not None:
            raw = self.booster.inplace_predict(x)
            if raw.ndim == 1:
                # Same arithmetic (float32) as XGBClassifier.predict_proba.
                return np.vstack((1 - raw, raw)).T
            return raw
        return self.estimator.predict_proba(x)

    def predict_proba(self, raw: pd.DataFrame) -> np.ndarray:
        x, _ = self.transform(raw)
        return self.predict_matrix(x)

    def labels(self, proba: np.ndarray) -> np.ndarray:
        """Class indices: positive when p >= threshold for binary models, else the argmax."""
        if len(self.classes) == 2 and self.threshold is not None:
            return (proba[:, 1] >= self.threshold).astype(np.int64)
        return proba.argmax(axis=1)

    def to_frame(self, proba: np.ndarray, index: Any = None) -> pd.DataFrame:
        proba = np.asarray(proba, dtype=np.float64)
        out = {PREDICTION: self._class_array[self.labels(proba)]}
        for i, name in enumerate(self._proba_names):
            out[name] = proba[:, i]
        return pd.DataFrame(out, index=index, copy=False)

    def to_records(self, proba: np.ndarray, request_id: Any = None) -> list[dict[str, Any]]:
        """The rows of ``to_frame`` as dicts: ``to_frame(...).to_dict("records")``, cheaper;
        with ``request_id`` (one id, or one per row) each row also carries its id."""
        proba = np.asarray(proba, dtype=np.float64)
        labels = self._class_array[self.labels(proba)].tolist()
        names = self._proba_names
        rows = [
            {PREDICTION: label, **dict(zip(names, row, strict=True))}
            for label, row in zip(labels, proba.tolist(), strict=True)
        ]
        if request_id is not None:
            ids = [request_id] * len(rows) if isinstance(request_id, str) else request_id
            for row, rid in zip(rows, ids, strict=True):
                row[served.REQUEST_ID] = rid
        return rows

    def predict(
        self, model_input: Any, params: dict[str, Any] | None = None
    ) -> pd.DataFrame | list[dict[str, Any]]:
        """The pyfunc entry point (``mlflow.pyfunc.load_model(...).predict``): a DataFrame with
        the predicted class and one probability column per class; in the scoring server, the
        same rows as records (see ``in_scoring_server``). Either carries a ``request_id``
        column in the scoring server or with the prediction log on (``monitoring.served``)."""
        t0 = time.perf_counter()
        frame = _as_frame(model_input, self.input_names)
        ids = None
        if self._takes_ids:
            frame, ids = served.split_ids(frame)
        x, invalid = self.transform(frame)
        if invalid:
            col, mask = next(iter(invalid.items()))
            bad = frame[col].to_numpy()[mask][0]
            bad = bad.item() if isinstance(bad, np.generic) else bad  # 5, not np.int64(5)
            raise _invalid_input(
                f"column '{col}': value {bad!r} is not a valid {_kind_word(self.specs, col)}"
            )
        proba = self.predict_matrix(x)
        serving = in_scoring_server()
        rid = ids or (served.new_id() if serving or self.prediction_log is not None else None)
        if self.prediction_log is not None:
            labels = self._class_array[self.labels(proba)]
            served.record(self, frame, proba, labels, rid, (time.perf_counter() - t0) * 1000)
        if serving:
            # The scoring server turns a returned DataFrame straight into records for its JSON
            # answer; handing it the records gives the same JSON without building the frame.
            return self.to_records(proba, rid)
        out = self.to_frame(proba, index=frame.index)
        if rid is not None:
            out[served.REQUEST_ID] = rid
        return out


def in_scoring_server() -> bool:
    """True inside ``mlflow models serve`` and ``mlflow models predict``, which set this
    variable around their predict calls (MLflow also sets it while it checks an input example
    at logging time, and in the deprecated ``mlflow.models.validate_serving_input``, which
    therefore get records too). An in-process ``predict`` returns a DataFrame."""
    return os.environ.get(_SERVING_ENV, "").strip().lower() in ("true", "1")


def _kind_word(specs: list[ColumnSpec], col: str) -> str:
    kind = next(s.kind for s in specs if s.name == col)
    return {"numeric": "number", "datetime": "date/time (ISO 8601)"}.get(kind, kind)


def _invalid_input(message: str) -> Exception:
    """A 400 whose body is this one line.

    MLflow's scoring server prefixes any MlflowException from ``predict`` with a dump of the
    whole input frame (``e.message = f"Failed to predict data '{data}'..."``); this class
    keeps the message it was made with, so clients read our line and nothing else.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    class InvalidInput(MlflowException):
        @property
        def message(self) -> str:
            return self._one_line

        @message.setter
        def message(self, value: str) -> None:
            if not hasattr(self, "_one_line"):  # set once, by MlflowException.__init__
                self._one_line = " ".join(str(value).split())

    return InvalidInput(message, error_code=INVALID_PARAMETER_VALUE)


def _as_frame(model_input: Any, names: list[str]) -> pd.DataFrame:
    if isinstance(model_input, pd.DataFrame):
        frame = model_input
    elif isinstance(model_input, dict):
        frame = pd.DataFrame(model_input if _all_lists(model_input) else [model_input])
    elif isinstance(model_input, list):
        frame = pd.DataFrame(model_input)
    else:
        raise _invalid_input(f"expected records or a DataFrame, got {type(model_input).__name__}")
    if frame.empty:
        # MLflow drops columns the signature does not name, so a request with none of the
        # model's columns arrives as an empty frame too.
        shown = ", ".join(names[:5]) + (f", ... ({len(names)} columns)" if len(names) > 5 else "")
        raise _invalid_input(f"empty input: send at least one record with the columns {shown}")
    columns = frame.columns.tolist()  # not `in frame.columns`: that hashes a new Index
    present = set(columns)
    if len(present) != len(columns):
        twice = sorted({str(c) for c in columns if columns.count(c) > 1 and c in names})
        if twice:
            raise _invalid_input(f"column(s) given more than once: {', '.join(twice)}")
    missing = [c for c in names if c not in present]
    if missing:
        raise _invalid_input(f"missing column(s): {', '.join(missing)}")
    return frame


def _all_lists(d: dict) -> bool:
    return all(isinstance(v, list | tuple | np.ndarray) for v in d.values())


def _load_pyfunc(data_path: str) -> Any:
    """MLflow's loader hook: ``mlflow.pyfunc.load_model`` (and so ``mlflow models serve``)
    calls this with the model folder joined to the MLmodel's ``data`` entry. The folder
    around it must pass every check of ``model_trust`` first: nothing outside the artifact
    is followed, whatever the MLmodel file says. The model learns who it is from the folder
    and logs its predictions when the prediction log is on (``monitoring.served``). A
    deployment version (shadow or A/B of two registered versions) is loaded by
    ``serving.deployment``, which logs both arms itself."""
    folder = model_trust.data_folder(data_path)
    if (folder / model_trust.DEPLOYMENT_FILE).is_file():
        from mlplatform.serving import deployment

        return deployment.load(folder)
    model = TabularModel(folder)
    model.identity = served.identity(served.model_dir_of(Path(folder)))
    model.prediction_log = served.log_at_load()
    return model


def load(model_dir: Path | str) -> Any:
    """Load an MLflow model directory (or its data folder) without going through pyfunc.

    Raises:
        ModelFormatError: not a model this package wrote.
    """
    model_dir = Path(model_dir)
    if (model_dir / "MLmodel").is_file():
        model_dir = model_dir / model_trust.verify_folder(model_dir)["data"]
    if (model_dir / model_trust.DEPLOYMENT_FILE).is_file():
        from mlplatform.serving import deployment

        return deployment.load(model_dir)  # both versions it composes, each checked
    return TabularModel(model_dir)


def load_pyfunc(uri_or_path: str | Path) -> Any:
    """``mlflow.pyfunc.load_model``, but only for our own models (checked before loading).

    Args:
        uri_or_path: a local model folder or any MLflow model URI (models:/, runs:/...).

    Raises:
        ModelFormatError: the model is not one of ours (named by its URI and version).
        ModelError: the URI cannot be resolved or downloaded.
    """
    label = model_trust.describe(str(uri_or_path))
    with model_trust.fetched(uri_or_path, label) as folder:
        model_trust.verify_folder(folder, label)
        # Everything is read into memory at load time, so a download can go afterwards.
        loaded = _load_checked(folder, label)
    # The pipeline's own predictions (evaluate, promote, score) are not served traffic:
    # batch scoring records its rows itself, with their file row numbers.
    loaded._model_impl.prediction_log = None
    return loaded


def _load_checked(folder: Path, name: str | Path) -> Any:
    """Load a folder verify_folder accepted; a failure is one ModelError naming the model."""
    import mlflow

    try:
        return mlflow.pyfunc.load_model(str(folder))
    except ModelError as exc:
        # Raised by our loader inside MLflow, naming the temporary folder: name the model.
        raise type(exc)(f"{name}: {str(exc).partition(': ')[2] or exc}") from None
    except Exception as exc:  # skops untrusted types, a corrupt model.json, ...
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelError(f"{name}: cannot load model ({reason})") from None


def write_folder(
    folder: Path,
    *,
    preprocessor: Any,
    estimator: Any,
    family: str,
    specs: list[ColumnSpec],
    classes: list[Any],
    threshold: float | None,
    extra: dict[str, Any] | None = None,
    check_frame: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Write the model's data folder; verify the compiled preprocessing on ``check_frame``.

    Returns:
        The model.json content.
    """
    folder.mkdir(parents=True, exist_ok=True)
    trusted = _skops_dump(preprocessor, folder / "preprocessor.skops")
    if families.get(family).native_format:
        estimator.get_booster().save_model(str(folder / "estimator.ubj"))
    else:
        trusted += _skops_dump(estimator, folder / "estimator.skops")
    compiled_ok = False
    if check_frame is not None:
        compiled_ok = _compiled_matches(preprocessor, specs, check_frame)
    meta = {
        "format_version": FORMAT_VERSION,
        "family": family,
        "classes": classes,
        "threshold": threshold,
        "features": [s.to_dict() for s in specs],
        "trusted_types": sorted(set(trusted)),
        "compiled_preprocessing": compiled_ok,
        **(extra or {}),
    }
    (folder / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def _compiled_matches(preprocessor: Any, specs: list[ColumnSpec], frame: pd.DataFrame) -> bool:
    try:
        compiled = CompiledPreprocessor(preprocessor)
    except ModelFormatError:
        return False
    canonical, _ = coerce(frame, specs)
    expected = np.asarray(preprocessor.transform(canonical), dtype=np.float64)
    got = compiled.transform(canonical)
    return got.shape == expected.shape and np.array_equal(got, expected, equal_nan=True)

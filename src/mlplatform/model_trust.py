"""The trust boundary of the registry: a model version is data, never code.

A registered version names the module that loads it (the MLmodel file's ``loader_module``),
and ``mlflow models serve`` imports whatever that is, or unpickles a ``python_model``. So
before anything in a model folder is used, ``verify_folder`` checks that it is one of ours
and carries data only:

- the MLmodel's python_function flavor names ``mlplatform.model_format`` as its loader, with
  no ``code`` paths, no ``python_model`` and no cloudpickle;
- its ``data`` path is relative and stays inside the model folder (no ``..``, no absolute
  path, no symbolic link anywhere in the folder);
- no file anywhere is a pickle (by name, or by a pickle header), and the data folder holds
  exactly the files ``model_format`` writes;
- model.json is a format this version reads, its family is known, and every skops file
  asks only for types on ``SKLEARN_TRUSTED`` (read from the file's schema, nothing loaded).

The gate (``registry.promote``, through ``model_format.load_pyfunc``), ``mlplatform verify``
and the loader MLflow calls (``model_format._load_pyfunc``) all run these checks; only the
gate sets the ``champion`` alias. Refusals name the model URI (and version), not the
temporary folder it was downloaded to.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlplatform.errors import ModelError

FORMAT_VERSION = 1
DATA_DIR = "mlplatform_model"
LOADER_MODULE = "mlplatform.model_format"
# Everything model_format writes into the data folder (one estimator file or the other).
DATA_FILES = frozenset({"model.json", "preprocessor.skops", "estimator.ubj", "estimator.skops"})
# A deployment version (serving/deployment.py): its data folder holds this JSON file alone.
DEPLOYMENT_FILE = "deployment.json"
DEPLOYMENT_FAMILY = "deployment"
PICKLE_SUFFIXES = frozenset(
    {".pkl", ".pickle", ".joblib", ".dill", ".cloudpickle", ".pt", ".pth", ".ckpt", ".sav"}
)
# Types skops may build when loading; nothing else is accepted.
SKLEARN_TRUSTED = [
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.compose._column_transformer._RemainderColsList",
    "sklearn.pipeline.Pipeline",
    "sklearn.impute._base.SimpleImputer",
    "sklearn.impute._base.MissingIndicator",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._encoders.OneHotEncoder",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._tree.Tree",
    "sklearn.utils._bunch.Bunch",
    "numpy.dtype",
    "numpy.ndarray",
    "builtins.slice",
    "builtins.object",
    "builtins.type",
]


class ModelFormatError(ModelError):
    """The model folder is not one this version can load (or may not be loaded at all)."""


def _refuse(label: str, why: str) -> ModelFormatError:
    return ModelFormatError(f"{label}: refused: {why}")


def read_mlmodel(model_dir: Path, label: str) -> dict[str, Any]:
    import yaml

    mlmodel = Path(model_dir) / "MLmodel"
    if not mlmodel.is_file():
        raise ModelFormatError(f"{label}: no MLmodel file (not an MLflow model folder)")
    try:
        return yaml.safe_load(mlmodel.read_text()) or {}
    except yaml.YAMLError:
        raise ModelFormatError(f"{label}: the MLmodel file is not valid YAML") from None


def check_mlmodel(model_dir: Path | str, label: str | None = None) -> dict[str, Any]:
    """The python_function flavor of a model folder, if it names our loader and data only.

    Raises:
        ModelFormatError: naming the model (label) and what is wrong.
    """
    model_dir = Path(model_dir)
    label = label or str(model_dir)
    pyfunc = (read_mlmodel(model_dir, label).get("flavors") or {}).get("python_function") or {}
    loader = pyfunc.get("loader_module")
    if loader != LOADER_MODULE:
        raise _refuse(
            label,
            f"not an mlplatform model (loader {loader!r}, not {LOADER_MODULE!r}); serving or "
            "loading it could run arbitrary code",
        )
    if pyfunc.get("code") or "python_model" in pyfunc or "cloudpickle_version" in pyfunc:
        raise _refuse(label, "the MLmodel file names code or a pickled python_model")
    data = pyfunc.get("data")
    if not isinstance(data, str) or not data:
        raise _refuse(label, "the MLmodel file names no data folder")
    relative = Path(data)
    if relative.is_absolute() or ".." in relative.parts:
        raise _refuse(label, f"data path {data!r} points outside the model folder")
    root = model_dir.resolve()
    if not (model_dir / relative).resolve().is_relative_to(root):
        raise _refuse(label, f"data path {data!r} resolves outside the model folder")
    return pyfunc


def _is_pickle(path: Path) -> bool:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    with open(path, "rb") as fh:
        head = fh.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5  # pickle protocol 2-5


def check_files(model_dir: Path, data_dir: Path, label: str) -> int:
    """Every entry a regular file or folder inside the model folder; no pickles.

    Returns:
        The number of files.
    """
    root = model_dir.resolve()
    count = 0
    for path in sorted(model_dir.rglob("*")):
        where = path.relative_to(model_dir)
        if path.is_symlink():
            raise _refuse(label, f"{where} is a symbolic link (a model folder holds files only)")
        if not path.resolve().is_relative_to(root):
            raise _refuse(label, f"{where} resolves outside the model folder")
        if path.is_dir():
            continue
        if not path.is_file():
            raise _refuse(label, f"{where} is not a regular file")
        if _is_pickle(path):
            raise _refuse(label, f"{where} is a pickle (mlplatform models hold no pickles)")
        count += 1
    present = {p.name for p in data_dir.iterdir()}
    allowed = {DEPLOYMENT_FILE} if DEPLOYMENT_FILE in present else DATA_FILES
    unexpected = sorted(present - allowed)
    if unexpected:
        raise _refuse(label, f"unexpected file(s) in the data folder: {', '.join(unexpected)}")
    return count


def check_model_json(data_dir: Path, label: str) -> dict[str, Any]:
    """model.json readable, of our format, and every skops file within the trusted types."""
    import skops.io as sio

    from mlplatform.modeling import families

    meta_path = data_dir / "model.json"
    if not meta_path.is_file():
        raise ModelFormatError(f"{label}: model.json not found in the data folder")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFormatError(f"{label}: model.json is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise ModelFormatError(
            f"{label}: model.json format_version {version} is not {FORMAT_VERSION}"
        )
    try:
        family = families.get(meta.get("family"))
    except ValueError as exc:
        raise ModelFormatError(f"{label}: {exc}") from None
    declared = meta.get("trusted_types", [])
    if not set(declared) <= set(SKLEARN_TRUSTED):
        extra = sorted(set(declared) - set(SKLEARN_TRUSTED))
        raise _refuse(label, f"model.json trusts types outside the list: {', '.join(extra)}")
    needed = ["preprocessor.skops", "estimator.ubj" if family.native_format else "estimator.skops"]
    for name in needed:
        if not (data_dir / name).is_file():
            raise ModelFormatError(f"{label}: {name} missing from the data folder")
    for skops_file in sorted(data_dir.glob("*.skops")):
        try:
            asked = sio.get_untrusted_types(file=skops_file)
        except Exception as exc:  # not a skops file at all
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise ModelFormatError(
                f"{label}: {skops_file.name} is not a skops file ({reason})"
            ) from None
        outside = sorted(set(asked) - set(SKLEARN_TRUSTED))
        if outside:
            raise _refuse(label, f"{skops_file.name} asks for untrusted types: {outside}")
    return meta


def check_deployment_json(data_dir: Path, label: str) -> dict[str, Any]:
    """A deployment spec: JSON naming two registered versions (checked in full at load)."""
    try:
        spec = json.loads((data_dir / DEPLOYMENT_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFormatError(f"{label}: {DEPLOYMENT_FILE} is not valid JSON") from None
    if not isinstance(spec, dict) or spec.get("kind") != "deployment":
        raise ModelFormatError(f"{label}: {DEPLOYMENT_FILE} is not a deployment spec")
    if spec.get("format_version") != FORMAT_VERSION:
        raise ModelFormatError(
            f"{label}: {DEPLOYMENT_FILE} format_version {spec.get('format_version')} is not "
            f"{FORMAT_VERSION}"
        )
    return spec


def verify_folder(model_dir: Path | str, label: str | None = None) -> dict[str, Any]:
    """Every check of the module docstring, on a local model folder.

    Returns:
        What was checked (family, file count, data folder), for a verdict line.

    Raises:
        ModelFormatError: the first check that fails, naming the model.
    """
    model_dir = Path(model_dir)
    label = label or str(model_dir)
    pyfunc = check_mlmodel(model_dir, label)
    data_dir = model_dir / pyfunc["data"]
    if not data_dir.is_dir():
        raise ModelFormatError(f"{label}: data folder {pyfunc['data']!r} not found")
    files = check_files(model_dir, data_dir, label)
    if (data_dir / DEPLOYMENT_FILE).is_file():
        check_deployment_json(data_dir, label)
        return {"family": DEPLOYMENT_FAMILY, "files": files, "data": pyfunc["data"]}
    meta = check_model_json(data_dir, label)
    return {"family": meta["family"], "files": files, "data": pyfunc["data"]}


def data_folder(data_path: str | Path) -> Path:
    """The data folder MLflow hands our loader, once the folder around it passes the checks.

    MLflow joins the model folder with the MLmodel's ``data`` entry and passes the result,
    so the model folder is the nearest parent holding an MLmodel file, and the data folder
    must be exactly what that file names, inside it.

    Raises:
        ModelFormatError: the path climbs out (``..``), no MLmodel file is around it, or
            the model folder fails ``verify_folder``.
    """
    path = Path(data_path)
    if ".." in path.parts:
        raise _refuse(str(path), "data path climbs out of the model folder ('..')")
    root = next((p for p in path.parents if (p / "MLmodel").is_file()), None)
    if root is None:
        raise _refuse(str(path), "no MLmodel file around the data folder")
    label = _label_from_mlmodel(root)
    pyfunc = verify_folder(root, label)
    if (root / pyfunc["data"]).resolve() != path.resolve():
        raise _refuse(label, f"{path} is not the data folder its MLmodel names")
    return path


def _label_from_mlmodel(root: Path) -> str:
    try:
        conf = read_mlmodel(root, str(root))
    except ModelFormatError:
        return str(root)
    model_id = conf.get("model_id") or conf.get("model_uuid")
    run = conf.get("run_id")
    if model_id or run:
        return f"model {model_id or '?'} (run {run or '?'})"
    return str(root)


_ALIAS = re.compile(r"models:/([^/@]+)@([\w-]+)/?")


def describe(uri: str) -> str:
    """How messages name a model: its URI, and the version an alias points at."""
    match = _ALIAS.fullmatch(uri)
    if match:
        with contextlib.suppress(Exception):
            from mlflow import MlflowClient

            version = MlflowClient().get_model_version_by_alias(*match.groups()).version
            return f"{uri} (version {version})"
    return uri


@contextlib.contextmanager
def fetched(uri_or_path: str | Path, label: str | None = None) -> Iterator[Path]:
    """A local model folder: the path itself, or a download removed afterwards.

    Raises:
        ModelError: the URI cannot be resolved or downloaded.
    """
    import mlflow

    local = Path(str(uri_or_path))
    if local.is_dir():
        yield local
        return
    label = label or str(uri_or_path)
    with tempfile.TemporaryDirectory() as tmp, quiet_downloads():
        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=str(uri_or_path), dst_path=tmp)
        except Exception as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise ModelError(f"{label}: cannot fetch model ({reason})") from None
        yield Path(path)


@contextlib.contextmanager
def quiet_downloads() -> Iterator[None]:
    """MLflow draws a download progress bar on stderr; a one-line command should not."""
    import os

    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before

"""The registry is not a code channel: hostile model versions, built for real, are refused
by `mlplatform verify`, by the promotion gate and by the loader MLflow itself calls."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from mlplatform import model_format, model_trust
from mlplatform.config import PromotionConfig
from mlplatform.data.dataset import DatasetSchema
from mlplatform.errors import ModelError
from mlplatform.evaluation.measure import measure
from mlplatform.registry import gates
from support.mlflow_store import new_client
from support.project import BIN, ROOT, cli_env

LEGACY = ROOT / "tests" / "fixtures" / "model_v0_1_0"
EXPECTED = json.loads((ROOT / "tests" / "fixtures" / "model_v0_1_0_expected.json").read_text())
ROWS = pd.DataFrame(EXPECTED["inputs"])

EVIL_LOADER = """
import pathlib, os
pathlib.Path(os.environ["EVIL_MARKER"]).write_text("code ran")

def _load_pyfunc(path):
    raise RuntimeError("never a model")
"""


class Hostile(mlflow.pyfunc.PythonModel):
    """A python_model: MLflow cloudpickles it and unpickles it when it is loaded."""

    def predict(self, context, model_input: list[str]) -> list[str]:
        return model_input


def edit_mlmodel(folder: Path, **pyfunc) -> None:
    conf = yaml.safe_load((folder / "MLmodel").read_text())
    conf["flavors"]["python_function"].update(pyfunc)
    (folder / "MLmodel").write_text(yaml.safe_dump(conf))


def good_copy(where: Path) -> Path:
    return Path(shutil.copytree(LEGACY, where))


@pytest.fixture
def marker(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "ran.txt"
    monkeypatch.setenv("EVIL_MARKER", str(path))
    return path


def evil_loader_model(tmp_path: Path) -> Path:
    code = tmp_path / "code_src"
    code.mkdir()
    (code / "evil_loader.py").write_text(EVIL_LOADER)
    out = tmp_path / "evil_loader_model"
    mlflow.pyfunc.save_model(
        str(out),
        loader_module="evil_loader",
        data_path=str(LEGACY / "data" / "mlplatform_model"),
        code_paths=[str(code / "evil_loader.py")],
        pip_requirements=["mlplatform"],
    )
    return out


def pickled_model(tmp_path: Path) -> Path:
    out = tmp_path / "pickled_model"
    mlflow.pyfunc.save_model(str(out), python_model=Hostile(), pip_requirements=["mlplatform"])
    return out


def escaping_model(tmp_path: Path, absolute: bool = False) -> Path:
    """A genuine mlplatform MLmodel whose data path leaves the model folder."""
    outside = good_copy(tmp_path / "elsewhere")
    folder = good_copy(tmp_path / "escaping")
    shutil.rmtree(folder / "data")
    target = outside / "data" / "mlplatform_model"
    data = str(target) if absolute else os.path.relpath(target, folder)
    edit_mlmodel(folder, data=data)
    return folder


# --------------------------------------------------------------------------------------
# Local folders


def test_the_threat_is_real_mlflow_runs_a_custom_loader(tmp_path, marker):
    """Loaded with plain MLflow, the hostile version runs its code: hence the checks."""
    folder = evil_loader_model(tmp_path)
    code = (
        f"import mlflow\ntry:\n    mlflow.pyfunc.load_model({str(folder)!r})\n"
        "except Exception:\n    pass"
    )
    subprocess.run([sys.executable, "-c", code], env=os.environ.copy(), check=True, timeout=120)
    assert marker.read_text() == "code ran"


def test_custom_loader_is_refused_without_running_it(tmp_path, marker):
    folder = evil_loader_model(tmp_path)
    with pytest.raises(model_trust.ModelFormatError, match="loader 'evil_loader'"):
        model_trust.verify_folder(folder)
    with pytest.raises(model_trust.ModelFormatError, match="refused"):
        model_format.load_pyfunc(folder)
    assert not marker.exists()


def test_pickled_python_model_is_refused(tmp_path):
    folder = pickled_model(tmp_path)
    assert (folder / "python_model.pkl").is_file()
    with pytest.raises(model_trust.ModelFormatError, match="refused"):
        model_format.load_pyfunc(folder)


@pytest.mark.parametrize("absolute", [False, True], ids=["dotdot", "absolute"])
def test_data_path_outside_the_model_folder_is_refused(tmp_path, absolute):
    folder = escaping_model(tmp_path, absolute)
    with pytest.raises(model_trust.ModelFormatError, match="outside the model folder"):
        model_trust.verify_folder(folder)
    with pytest.raises(model_trust.ModelFormatError, match="outside the model folder"):
        model_format.load_pyfunc(folder)


def test_our_loader_refuses_an_escaping_data_path_when_mlflow_calls_it(tmp_path):
    """`mlflow models serve` calls model_format._load_pyfunc itself: before the fix a
    version with `data: ../../elsewhere/...` loaded and scored."""
    folder = escaping_model(tmp_path)
    with pytest.raises(model_trust.ModelFormatError, match=r"climbs out of the model folder"):
        mlflow.pyfunc.load_model(str(folder))


@pytest.mark.parametrize(
    "spoil",
    ["symlink", "pickle_name", "pickle_bytes", "extra_data_file", "untrusted_types"],
)
def test_files_that_are_not_plain_model_data_are_refused(tmp_path, spoil):
    folder = good_copy(tmp_path / "m")
    data = folder / "data" / "mlplatform_model"
    if spoil == "symlink":
        (data / "model.json").rename(tmp_path / "model.json")
        (data / "model.json").symlink_to(tmp_path / "model.json")
        words = "symbolic link"
    elif spoil == "pickle_name":
        (folder / "extra.pkl").write_bytes(b"not even a pickle")
        words = "extra.pkl is a pickle"
    elif spoil == "pickle_bytes":
        import pickle

        (folder / "notes.txt").write_bytes(pickle.dumps({"x": 1}))
        words = "notes.txt is a pickle"
    elif spoil == "extra_data_file":
        (data / "helper.py").write_text("print('hi')\n")
        words = "unexpected file"
    else:
        meta = json.loads((data / "model.json").read_text())
        meta["trusted_types"] = [*meta["trusted_types"], "builtins.eval"]
        (data / "model.json").write_text(json.dumps(meta))
        words = "builtins.eval"
    with pytest.raises(model_trust.ModelFormatError, match=words):
        model_trust.verify_folder(folder)
    with pytest.raises(model_trust.ModelFormatError):
        mlflow.pyfunc.load_model(str(folder))  # the loader MLflow calls checks the same


def test_models_of_release_0_1_0_still_verify_and_load():
    assert model_trust.verify_folder(LEGACY)["family"] == "xgboost"
    out = mlflow.pyfunc.load_model(str(LEGACY)).predict(ROWS)
    assert out["prediction"].tolist() == [r["prediction"] for r in EXPECTED["expected"]]


# --------------------------------------------------------------------------------------
# Versions in a real sqlite registry: verify (the CLI), the gate, the loader


@pytest.fixture
def registry(tmp_path, monkeypatch, marker):
    """A sqlite registry holding one genuine and four hostile versions of model 'm'."""
    client = new_client(tmp_path)
    uri = client._tracking_client.tracking_uri
    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client.create_registered_model("m")
    sources = {
        "genuine": good_copy(tmp_path / "genuine"),
        "evil_loader": evil_loader_model(tmp_path),
        "pickled": pickled_model(tmp_path),
        "dotdot": escaping_model(tmp_path / "a"),
        "absolute": escaping_model(tmp_path / "b", absolute=True),
    }
    exp = client.create_experiment("hostile", artifact_location=(tmp_path / "art").as_uri())
    versions = {}
    for name, folder in sources.items():
        run = client.create_run(exp)
        client.log_artifacts(run.info.run_id, str(folder), "model")
        mv = client.create_model_version("m", f"runs:/{run.info.run_id}/model", run.info.run_id)
        versions[name] = str(mv.version)
    client.set_registered_model_alias("m", "champion", versions["genuine"])
    yield {"uri": uri, "versions": versions, "cwd": tmp_path}
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)  # later tests in this process must not see this registry


def run_verify(registry, model_uri: str) -> subprocess.CompletedProcess:
    env = cli_env(
        {"MLFLOW_TRACKING_URI": registry["uri"], "EVIL_MARKER": os.environ["EVIL_MARKER"]}
    )
    return subprocess.run(
        [str(BIN / "mlplatform"), "verify", model_uri],
        cwd=registry["cwd"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_verify_accepts_the_genuine_version_by_alias_and_names_it(registry):
    result = run_verify(registry, "models:/m@champion")
    assert result.returncode == 0, result.stderr
    version = registry["versions"]["genuine"]
    assert result.stdout.strip().startswith(f"verified: models:/m@champion (version {version}):")
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("hostile", "words"),
    [
        ("evil_loader", "loader 'evil_loader'"),
        ("pickled", "loader 'mlflow.pyfunc.model'"),
        ("dotdot", "outside the model folder"),
        ("absolute", "outside the model folder"),
    ],
)
def test_verify_refuses_hostile_versions_in_one_line_naming_uri_and_version(
    registry, marker, hostile, words
):
    version = registry["versions"][hostile]
    result = run_verify(registry, f"models:/m/{version}")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: models:/m/{version}: refused: ") and words in lines[0]
    assert "/tmp" not in lines[0].split("refused")[0]  # no deleted download folder
    assert not marker.exists()


def test_the_gate_rejects_hostile_versions(registry, marker):
    schema = DatasetSchema.from_dict(
        {
            "target": "deny",
            "classes": ["no", "yes"],
            "positive_class": "yes",
            "features": json.loads((LEGACY / "data/mlplatform_model/model.json").read_text())[
                "features"
            ],
            "sensitive_features": [],
            "slice_columns": [],
            "time_column": None,
            "source": "test",
        }
    )
    test = ROWS.assign(deny=[r["prediction"] for r in EXPECTED["expected"]])
    cfg = PromotionConfig(require_card=False, require_explanations=False)
    for name, version in registry["versions"].items():
        figures, _ = measure(f"models:/m/{version}", version, schema, test)
        verdict = gates.decide(figures, None, cfg)
        if name == "genuine":
            assert verdict.decision == "approve", figures.error
            continue
        assert verdict.decision == "reject", name
        assert "refused" in figures.error and f"models:/m/{version}" in figures.error
    assert not marker.exists()


def test_loading_a_hostile_version_by_uri_names_the_uri_not_a_temp_folder(registry):
    version = registry["versions"]["dotdot"]
    with pytest.raises(ModelError) as info:
        model_format.load_pyfunc(f"models:/m/{version}")
    assert str(info.value).startswith(f"models:/m/{version}: refused:")

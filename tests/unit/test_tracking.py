"""MLflow plumbing: dvc.lock hashes, lineage tags, params hashes."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import yaml

from mlplatform import io, tracking
from mlplatform.config import Paths, parse_params
from mlplatform.io import file_md5
from support.project import make_params


def write_lock(root: Path) -> None:
    lock = {
        "schema": "2.0",
        "stages": {
            "ingest": {
                "cmd": "mlplatform ingest",
                "deps": [{"path": "params.yaml", "md5": "p" * 32, "size": 10}],
                "outs": [{"path": "data/raw", "md5": "a" * 32 + ".dir", "nfiles": 2}],
            },
            "prepare": {
                "cmd": "mlplatform prepare",
                "deps": [{"path": "data/raw", "md5": "a" * 32 + ".dir"}],
                "outs": [
                    {"path": "data/prepared", "md5": "b" * 32 + ".dir", "nfiles": 4},
                    {"path": "reports/data_summary.json", "md5": "c" * 32},
                ],
            },
            "empty": {"cmd": "true"},
        },
    }
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))


def test_dvc_lock_hashes(tmp_path):
    write_lock(tmp_path)
    found = tracking.dvc_lock_hashes(
        tmp_path,
        [tmp_path / "data" / "prepared", Path("reports/data_summary.json"), "data/raw", "nope"],
    )
    assert found == {
        "data/prepared": "b" * 32 + ".dir",
        "reports/data_summary.json": "c" * 32,
        "data/raw": "a" * 32 + ".dir",
    }


def test_dvc_lock_hashes_without_lock_or_with_bad_yaml(tmp_path):
    assert tracking.dvc_lock_hashes(tmp_path, ["data/prepared"]) == {}
    (tmp_path / "dvc.lock").write_text("stages: [unclosed\n")
    assert tracking.dvc_lock_hashes(tmp_path, ["data/prepared"]) == {}


# --------------------------------------------------------------------------------------
# lineage


def test_lineage_tags(tmp_path):
    params = parse_params(make_params({"seed": 1234}))
    paths = Paths(tmp_path)
    paths.prepared.mkdir(parents=True)
    train, valid = paths.split("train"), paths.split("validation")
    train.write_bytes(b"train bytes")
    valid.write_bytes(b"validation bytes, different")
    write_lock(tmp_path)
    tags = tracking.lineage(
        params, paths, {"train": train, "validation": valid, "absent": tmp_path / "nope.parquet"}
    )
    assert tags["mlplatform.data.train.md5"] == file_md5(train)
    assert tags["mlplatform.data.validation.md5"] == file_md5(valid)
    assert tags["mlplatform.data.train.md5"] != tags["mlplatform.data.validation.md5"]
    assert "mlplatform.data.absent.md5" not in tags
    assert tags["mlplatform.params_hash"] == params.section_hash()
    assert len(tags["mlplatform.params_hash"]) == 16
    assert tags["mlplatform.seed"] == "1234"
    assert tags["mlplatform.data_source"] == params.data.source
    assert tags["lib.mlflow"] == metadata.version("mlflow")
    assert tags["lib.optuna"] == metadata.version("optuna")
    assert tags["dvc.lock.data/prepared"] == "b" * 32 + ".dir"
    assert all(isinstance(v, str) for v in tags.values())


def test_params_hash_changes_with_params():
    a = parse_params(make_params({"seed": 1}))
    b = parse_params(make_params({"seed": 2}))
    assert a.section_hash() != b.section_hash()
    assert a.section_hash("tune") == b.section_hash("tune")
    assert io.digest({"x": 1, "y": 2}) == io.digest({"y": 2, "x": 1})

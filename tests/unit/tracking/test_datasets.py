"""Dataset inputs: the prepared splits a run read, with DVC's file hash as the digest."""

from __future__ import annotations

import pandas as pd
import pytest

from mlplatform.config import Paths, parse_params
from mlplatform.io import file_md5, write_parquet
from mlplatform.tracking import datasets
from support.mlflow_store import new_client
from support.project import make_params


@pytest.fixture
def prepared(tmp_path):
    paths = Paths(tmp_path)
    for i, split in enumerate(("train", "validation", "test")):
        write_parquet(paths.split(split), pd.DataFrame({"x": [1.0 + i, 2.0], "y": ["a", "b"]}))
    return paths


def test_splits_are_logged_as_dataset_inputs_with_context_and_md5(tmp_path, prepared):
    params = parse_params(make_params())
    client = new_client(tmp_path)
    run = client.create_run(client.create_experiment("e"))
    datasets.log_splits(client, run.info.run_id, params, prepared, ("train", "validation"))
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
    got = {
        i.dataset.name: (i.dataset.digest, {t.key: t.value for t in i.tags}["mlflow.data.context"])
        for i in inputs
    }
    assert got == {
        "hmda-train": (file_md5(prepared.split("train")), "training"),
        "hmda-validation": (file_md5(prepared.split("validation")), "validation"),
    }
    assert (
        "train.parquet" in inputs[0].dataset.source or "train.parquet" in inputs[1].dataset.source
    )


def test_a_data_change_changes_the_digest(tmp_path, prepared):
    params = parse_params(make_params())
    before = datasets.split_inputs(params, prepared, ("test",))[0].dataset.digest
    write_parquet(prepared.split("test"), pd.DataFrame({"x": [9.0], "y": ["z"]}))
    after = datasets.split_inputs(params, prepared, ("test",))[0].dataset.digest
    assert before != after

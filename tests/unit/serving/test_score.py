"""Batch scoring: every row read is written or reported, once, under its own row number."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlplatform.config import parse_params
from mlplatform.errors import DataValidationError, MlplatformError
from mlplatform.serving import score
from support.mlflow_store import new_client
from support.project import make_params

N_ROWS = 30_000


def id_frame(n: int = N_ROWS, seed: int = 0) -> pd.DataFrame:
    """Rows with an id and values wide enough that a CSV spans many small read blocks."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "application_id": np.arange(n) + 5_000_000,
            "a": rng.normal(size=n).round(9),
            "note": rng.choice(["short", "a somewhat longer note", "x" * 40], n),
            "b": rng.normal(size=n).round(9),
        }
    )


def chunk_ids(path: Path, chunk_rows: int) -> tuple[np.ndarray, list[int], score.Source]:
    source = score.read_chunks(path, chunk_rows, ["application_id", "a"])
    ids, sizes = [], []
    for batch in source.batches:
        ids.append(batch.column(0).to_numpy(zero_copy_only=False))
        sizes.append(batch.num_rows)
    return np.concatenate(ids), sizes, source


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("csv") / "ids.csv"
    id_frame().to_csv(path, index=False)
    return path


@pytest.mark.parametrize("chunk_rows", [1, 7, 999, 1000, 4096, 100_000])
def test_csv_chunks_spanning_read_blocks_lose_no_rows(csv_file, chunk_rows, monkeypatch):
    """Before the fix only the first read block's part of a chunk was kept."""
    monkeypatch.setattr(score, "CSV_BLOCK_SIZE", 1 << 15)  # 32 KiB: ~45 blocks
    assert os.path.getsize(csv_file) > 40 * score.CSV_BLOCK_SIZE
    ids, sizes, source = chunk_ids(csv_file, chunk_rows)
    expected = np.arange(N_ROWS) + 5_000_000
    np.testing.assert_array_equal(ids.astype(np.int64), expected)  # each id once, in order
    assert all(s == chunk_rows for s in sizes[:-1]) and 0 < sizes[-1] <= chunk_rows
    assert source.rows_read == N_ROWS


@pytest.mark.parametrize("chunk_rows", [1000, 100_000])
def test_csv_of_several_real_read_blocks_loses_no_rows(tmp_path, chunk_rows):
    """The default 4 MiB block: a 13 MiB file, read with the chunk sizes of the issue."""
    path = tmp_path / "big.csv"
    id_frame(300_000).to_csv(path, index=False)
    assert os.path.getsize(path) > 3 * score.CSV_BLOCK_SIZE
    ids, _, _ = chunk_ids(path, chunk_rows)
    np.testing.assert_array_equal(ids.astype(np.int64), np.arange(300_000) + 5_000_000)


def test_parquet_chunks_and_the_declared_row_count(tmp_path):
    path = tmp_path / "ids.parquet"
    id_frame(10_000).to_parquet(path, row_group_size=3_000)
    ids, sizes, source = chunk_ids(path, 4_000)
    np.testing.assert_array_equal(ids, np.arange(10_000) + 5_000_000)
    assert sizes == [4_000, 4_000, 2_000] and source.declared_rows == 10_000


def test_semicolon_delimited_csv_is_read_with_its_delimiter(tmp_path):
    path = tmp_path / "semi.csv"
    id_frame(500).to_csv(path, index=False, sep=";")
    ids, _, _ = chunk_ids(path, 100)
    np.testing.assert_array_equal(ids.astype(np.int64), np.arange(500) + 5_000_000)


def test_accounting_that_does_not_add_up_fails():
    source = score.Source(Path("in.csv"), iter(()), rows_read=10)
    score.check_accounting(source, 10, 8, 2)
    with pytest.raises(MlplatformError, match=r"rows do not add up.*nothing was written"):
        score.check_accounting(source, 10, 8, 1)
    with pytest.raises(MlplatformError, match="reader produced 10 rows, 9 scored"):
        score.check_accounting(source, 9, 9, 0)
    declared = score.Source(Path("in.parquet"), iter(()), declared_rows=12, rows_read=10)
    with pytest.raises(MlplatformError, match="declares 12 rows"):
        score.check_accounting(declared, 10, 10, 0)


# --------------------------------------------------------------------------------------
# Output paths and chunk sizes refused before any work


@pytest.mark.parametrize("chunk_rows", [0, -5])
def test_chunk_rows_must_be_positive(tmp_path, chunk_rows):
    with pytest.raises(
        DataValidationError, match=f"positive number of rows \\(got {chunk_rows}\\)"
    ):
        score.check_paths(tmp_path / "in.csv", tmp_path / "out.parquet", chunk_rows)


@pytest.mark.parametrize("name", ["out.json", "out.txt", "out"])
def test_unknown_output_types_are_refused(tmp_path, name):
    with pytest.raises(DataValidationError, match="unsupported output type"):
        score.check_paths(tmp_path / "in.csv", tmp_path / name, 100)


def test_output_that_is_a_folder_or_the_input_is_refused(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("a\n1\n")
    folder = tmp_path / "out.parquet"
    folder.mkdir()
    with pytest.raises(DataValidationError, match="is a folder"):
        score.check_paths(src, folder, 100)
    with pytest.raises(DataValidationError, match="is the input file"):
        score.check_paths(src, tmp_path / "." / "in.csv", 100)
    os.link(src, tmp_path / "same.csv")  # another name, the same inode
    with pytest.raises(DataValidationError, match="is the input file"):
        score.check_paths(src, tmp_path / "same.csv", 100)
    assert score.check_paths(src, tmp_path / "new.CSV", 100) == "csv"


# --------------------------------------------------------------------------------------
# The whole command on a real (small) logged model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A logged mlplatform model over columns a (numeric) and note (categorical)."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    from mlplatform import model_format
    from mlplatform.config import FeaturesConfig
    from mlplatform.data import columns
    from mlplatform.modeling import features

    frame = id_frame(400)
    specs = [columns.make_spec(frame[c], columns.infer_kind(frame[c])) for c in ("a", "note")]
    pre = features.build_preprocessor(specs, FeaturesConfig(), scale=True)
    x = pre.fit_transform(columns.coerce(frame, specs)[0])
    y = (frame["a"] > 0).astype(int).to_numpy()
    root = tmp_path_factory.mktemp("model")
    data = root / model_format.DATA_DIR
    model_format.write_folder(
        data,
        preprocessor=pre,
        estimator=LogisticRegression().fit(x, y),
        family="logistic_regression",
        specs=specs,
        classes=[0, 1],
        threshold=0.5,
        check_frame=frame,
    )
    out = root / "model"
    mlflow.pyfunc.save_model(
        str(out),
        loader_module=model_format.LOADER_MODULE,
        data_path=str(data),
        pip_requirements=["mlplatform"],  # inferring them starts a subprocess: slow
    )
    return out


@pytest.fixture
def params(tmp_path):
    new_client(tmp_path)  # a migrated sqlite store, copied
    raw = make_params({"mlflow.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    return parse_params(raw)


@pytest.mark.parametrize("chunk_rows", [1000, 100_000, 333])
def test_every_id_comes_back_once_with_its_row_number(
    csv_file, model_dir, params, tmp_path, chunk_rows, monkeypatch
):
    monkeypatch.setattr(score, "CSV_BLOCK_SIZE", 1 << 15)
    frame = id_frame()
    bad = [3, 1_500, 17_777, N_ROWS - 1]  # across blocks and chunks
    text = frame.astype({"a": object})
    text.loc[bad, "a"] = "not a number"
    src = tmp_path / "with_bad.csv"
    text.to_csv(src, index=False)
    out = tmp_path / "scored.parquet"
    summary = score.run_score(
        params,
        src,
        out,
        model_uri=str(model_dir),
        chunk_rows=chunk_rows,
        keep=["application_id"],
        progress=False,
    )
    assert (summary.rows_in, summary.rows_scored, summary.rows_failed) == (N_ROWS, N_ROWS - 4, 4)
    scored = pd.read_parquet(out)
    expected_rows = np.setdiff1d(np.arange(N_ROWS), bad)
    np.testing.assert_array_equal(scored["row"], expected_rows)
    ids = scored["application_id"].astype(np.int64)
    np.testing.assert_array_equal(ids, expected_rows + 5_000_000)  # the id of that row
    errors = pd.read_csv(tmp_path / "scored.parquet.errors.csv")
    assert errors["row"].tolist() == bad


def test_fail_fast_names_the_true_first_bad_row(model_dir, params, tmp_path, monkeypatch):
    monkeypatch.setattr(score, "CSV_BLOCK_SIZE", 1 << 15)
    text = id_frame().astype({"a": object})
    text.loc[[12_345, 20_000], "a"] = "oops"
    src = tmp_path / "bad.csv"
    text.to_csv(src, index=False)
    out = tmp_path / "never.parquet"
    with pytest.raises(DataValidationError, match=r"row 12345, column 'a'"):
        score.run_score(
            params,
            src,
            out,
            model_uri=str(model_dir),
            chunk_rows=1000,
            on_error="fail",
            progress=False,
        )
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_rows_lost_between_reading_and_writing_fail_the_run(
    csv_file, model_dir, params, tmp_path, monkeypatch
):
    """The invariant is checked on every run: here a chunker that drops rows is caught."""
    real = score._rechunk

    def lossy(source, batches, chunk_rows):
        for i, batch in enumerate(real(source, batches, chunk_rows)):
            yield batch.slice(0, batch.num_rows - 1) if i == 2 else batch

    monkeypatch.setattr(score, "_rechunk", lossy)
    out = tmp_path / "never.parquet"
    with pytest.raises(MlplatformError, match="rows do not add up"):
        score.run_score(
            params, csv_file, out, model_uri=str(model_dir), chunk_rows=1000, progress=False
        )
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_csv_cells_read_as_missing_are_those_pandas_reads_as_missing_at_ingest(tmp_path):
    from pandas._libs.parsers import STR_NA_VALUES

    spellings = sorted(STR_NA_VALUES - {""})
    path = tmp_path / "na.csv"
    pd.DataFrame({"application_id": range(len(spellings)), "a": spellings}).to_csv(
        path, index=False
    )
    assert pd.read_csv(path)["a"].isna().all()  # what ingest (pandas) makes of them
    source = score.read_chunks(path, 100, ["application_id", "a"])
    (batch,) = list(source.batches)
    assert batch.column(1).null_count == len(spellings), batch.column(1)

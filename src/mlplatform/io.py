"""Atomic file output and content hashes.

Every output is written to a temporary path next to its destination and renamed into place,
so a failed or killed stage never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd


@contextlib.contextmanager
def atomic_path(dest: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in dest's folder; rename it onto dest if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix or ".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(dest: Path | str) -> Iterator[Path]:
    """Yield a temporary folder; swap it in for dest if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(dest: Path | str, payload: Any) -> None:
    """Write stable, human-readable JSON (sorted keys, trailing newline) atomically."""
    text = json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n"
    with atomic_path(dest, ".json") as tmp:
        tmp.write_text(text)


def read_json(path: Path | str) -> Any:
    """Read a JSON file another stage wrote.

    Raises:
        MlplatformError: it does not exist (that stage has not run here yet) or is not JSON.
    """
    from mlplatform.errors import MlplatformError

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MlplatformError(
            f"{path}: not found; run the stages before this one first (dvc repro, or "
            "mlplatform pipeline)"
        ) from None
    except json.JSONDecodeError as exc:
        raise MlplatformError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def write_text(dest: Path | str, text: str) -> None:
    """Write text atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def write_parquet(dest: Path | str, frame: pd.DataFrame) -> None:
    """Write a frame as Parquet, byte-for-byte reproducible for the same frame."""
    with atomic_path(dest, ".parquet") as tmp:
        frame.to_parquet(tmp, index=False, engine="pyarrow", compression="snappy")


def digest(payload: Any) -> str:
    """A short, stable hash of JSON-able data (keys sorted; other objects by ``str``)."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_md5(path: Path | str, chunk: int = 1 << 20) -> str:
    """MD5 of a file's bytes: the same hash DVC 3 records in dvc.lock for a file output."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, pd.Timestamp):
        return obj.isoformat()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

"""``mlplatform monitor``: a window (the prediction log, or files) against the reference.

The thin layer around the pure cores: which model version is monitored (the champion by
default), its reference (logged on the version's training run by the ``reference`` stage;
``models/reference.json`` when the run has none), the window's rows, scores and labels, and
where the result goes: ``reports/monitoring/monitor.{json,html}`` (written atomically) and an
MLflow run in the project's experiment, tagged with the model name, version and run it
monitored (the version gets a tag naming that run).

A window from the log is the version's logged rows (by name and version; rows logged
without a registered name are matched by the version's model id) between ``since`` and
``until``, or the last ``last`` of them; labels are the feedback joined so far. A window
from a file is its rows; its target column, when present, gives labels, and its
``probability_<positive class>`` column, when present, the scores (else the model scores it).
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.config import Params, Paths
from mlplatform.errors import DataValidationError, MlplatformError
from mlplatform.io import write_json
from mlplatform.monitoring.drift import compare
from mlplatform.monitoring.reference import load_reference
from mlplatform.monitoring.reference_stage import ARTIFACT
from mlplatform.monitoring.report import write_report

log = logging.getLogger(__name__)

PROBA_PREFIX = "probability_"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass
class Window:
    """The rows of one window, their scores and labels, and what the window is."""

    frame: pd.DataFrame
    scores: np.ndarray | None
    labels: np.ndarray | None
    info: dict[str, Any]


def parse_duration(text: str) -> timedelta:
    """``30m``, ``12h``, ``7d``, ``2w`` -> a timedelta.

    Raises:
        DataValidationError: not a number followed by s, m, h, d or w.
    """
    m = _DURATION.match(str(text))
    if not m:
        raise DataValidationError(f"--window: {text!r} is not a duration (e.g. 30m, 12h, 7d)")
    return timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})


def labels_of(values: pd.Series, positive: str | None) -> np.ndarray | None:
    """0/1 labels (NaN where unknown) from label text; None when no row has one."""
    if positive is None or values.isna().all():
        return None
    known = values.notna()
    text = values.astype(str).str.strip()
    as_number = pd.to_numeric(text, errors="coerce")
    whole = as_number.where(as_number % 1 == 0)  # 1.0 -> "1", as feedback stores labels
    text = text.where(whole.isna(), whole.astype("Int64").astype(str))
    y = np.where(known, (text == str(positive)).astype(np.float64), np.nan)
    return y.astype(np.float64)


def scores_of(frame: pd.DataFrame, ref: dict[str, Any]) -> np.ndarray | None:
    """The positive-class probability column of a window, if it has one."""
    column = f"{PROBA_PREFIX}{ref.get('positive_class')}"
    if ref.get("positive_class") is None or column not in frame.columns:
        return None
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)


def from_log(
    url: str, who: dict[str, Any], ref: dict[str, Any], *, since=None, until=None, last=None,
    source=None,
) -> Window:  # fmt: skip
    """The monitored version's rows in the log (see the module docstring)."""
    from mlplatform.monitoring.prediction_log import read_window

    frame = read_window(
        url, who["name"], who["version"], since=since, until=until, last_n=last, source=source
    )
    if frame.empty and who.get("model_ids"):
        every = read_window(url, since=since, until=until, source=source)
        frame = every[every["model_id"].isin(who["model_ids"]) & every["model_name"].isna()]
        frame = frame.tail(last) if last else frame
        frame = frame.reset_index(drop=True)
    if frame.empty:
        raise DataValidationError(
            f"prediction log: no rows of {who['name']} version {who['version']} in the window "
            f"(since {since or 'the start'}, until {until or 'now'}); was the log on where "
            "it was served (MLPLATFORM_PREDICTION_LOG)?"
        )
    info = {
        "source": "prediction log" + (f" ({source})" if source else ""),
        "label": f"{frame['timestamp'].min():%Y-%m-%d %H:%M} – {frame['timestamp'].max():%H:%M}",
        "start": frame["timestamp"].min().isoformat(),
        "end": frame["timestamp"].max().isoformat(),
    }
    return Window(
        frame, scores_of(frame, ref), labels_of(frame["label"], ref.get("positive_class")), info
    )


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or Parquet window file as pandas reads it.

    Raises:
        DataValidationError: missing, unreadable or of another type.
    """
    if not path.is_file():
        raise DataValidationError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix == ".csv":
            from mlplatform.data.ingest import sniff_delimiter

            return pd.read_csv(path, sep=sniff_delimiter(path))
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataValidationError(f"{path}: cannot read file ({reason})") from None
    raise DataValidationError(f"{path}: unsupported file type '{suffix}' (use .csv or .parquet)")


def from_file(path: Path, ref: dict[str, Any], scorer: Any) -> Window:
    """A window file's rows; scored by ``scorer`` unless it carries the scores."""
    frame = read_table(path)
    scores = scores_of(frame, ref)
    if scores is None and scorer is not None and ref.get("positive_class") is not None:
        missing = [c for c in scorer.input_names if c not in frame.columns]
        if missing:
            raise DataValidationError(f"{path}: missing column(s) {', '.join(missing)}")
        x, _ = scorer.transform(frame[scorer.input_names])
        scores = scorer.predict_matrix(x)[:, 1]
    target = ref.get("target")
    labels = labels_of(frame[target], ref.get("positive_class")) if target in frame else None
    info = {"source": str(path), "label": path.stem}
    return Window(frame, scores, labels, info)


def resolve_model(params: Params, model_uri: str | None) -> dict[str, Any]:
    """Name, version, training run and model ids of the monitored version."""
    from mlplatform import tracking
    from mlplatform.serving.score import resolve

    uri, name, version = resolve(params, model_uri)
    if name is None or version is None:
        raise DataValidationError(
            f"--model-uri {model_uri}: monitor needs a registered version "
            "(models:/NAME/N or models:/NAME@ALIAS)"
        )
    client, _ = tracking.setup(params)
    mv = client.get_model_version(name, str(version))
    ids = [i for i in (getattr(mv, "model_id", None), mv.run_id) if i]
    return {
        "uri": uri,
        "name": name,
        "version": str(version),
        "run_id": mv.run_id,
        "model_ids": ids,
    }


def reference_for(who: dict[str, Any], paths: Paths, path: Path | None) -> dict[str, Any]:
    """The version's reference: a given file, else its run's artifact, else the local one.

    Raises:
        MlplatformError: none can be found.
    """
    if path is not None:
        return load_reference(path)
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=who["run_id"], artifact_path=ARTIFACT, dst_path=tmp
            )
        except Exception:
            local = None
        if local:
            return load_reference(local)
    if paths.reference.is_file():
        ref = load_reference(paths.reference)
        if ref.get("train_run_id") != who["run_id"]:
            log.warning(
                "version %s has no monitoring reference on its run; using %s (built for run %s)",
                who["version"], paths.reference, ref.get("train_run_id"),
            )  # fmt: skip
        return ref
    raise MlplatformError(
        f"{who['name']} version {who['version']}: no monitoring reference (neither on its run "
        f"nor {paths.reference}); run `dvc repro` (the reference stage) or pass --reference"
    )


def run_monitor(
    params: Params,
    paths: Paths,
    *,
    current: list[Path] | None = None,
    since: str | None = None,
    until: str | None = None,
    window: str | None = None,
    last: int | None = None,
    source: str | None = None,
    model_uri: str | None = None,
    reference: Path | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Compare the window(s) with the reference, write JSON + HTML, log an MLflow run.

    Returns:
        The latest window's result, with ``outputs`` (the files and the MLflow run id).
    """
    from mlplatform import tracking
    from mlplatform.monitoring import prediction_log

    if source not in (None, "serve", "score"):
        raise DataValidationError(f"--source: {source!r} is neither serve nor score")
    who = resolve_model(params, model_uri)
    ref = reference_for(who, paths, reference)
    cfg, seed = params.monitoring, params.seed
    windows: list[Window] = []
    if current:
        from mlplatform.serving.score import load_scorer

        scorer = load_scorer(who["uri"])
        windows = [from_file(Path(p), ref, scorer) for p in current]
    else:
        url = prediction_log.resolve_url(
            params.prediction_log, tracking.tracking_uri(params), reading=True
        )
        if since is None and window is not None:
            since = (datetime.now(UTC) - parse_duration(window)).isoformat()
        windows = [from_log(url, who, ref, since=since, until=until, last=last, source=source)]
    results = [compare(ref, w.frame, w.scores, w.labels, cfg, seed, window=w.info) for w in windows]
    latest = results[-1]
    latest["model"] = {k: who[k] for k in ("name", "version", "run_id")}
    if len(results) > 1:
        latest["history"] = [
            {"window": r["window"], "verdict": r["verdict"],
             "retraining_recommended": r["retraining_recommended"]}
            for r in results
        ]  # fmt: skip
    out_dir = out_dir or paths.monitoring
    json_path, html_path = out_dir / "monitor.json", out_dir / "monitor.html"
    title = f"Monitoring: {who['name']} version {who['version']}"
    write_report(html_path, results, title=title)
    latest["outputs"] = {"json": str(json_path), "html": str(html_path)}
    latest["outputs"]["mlflow_run_id"] = log_run(params, who, latest, json_path, html_path)
    write_json(json_path, latest)
    return latest


def log_run(params: Params, who: dict, result: dict, json_path: Path, html_path: Path) -> str:
    """An MLflow run holding the result and the report, linked to the monitored version."""
    from mlflow.entities import Metric, RunTag

    from mlplatform import tracking

    client, exp_id = tracking.setup(params)
    tags = {
        "mlplatform.stage": "monitor",
        "mlplatform.monitored_model": who["name"],
        "mlplatform.monitored_version": who["version"],
        "mlplatform.monitored_run_id": who["run_id"],
        "mlplatform.verdict": result["verdict"],
        "mlplatform.retraining_recommended": str(result["retraining_recommended"]).lower(),
        "mlplatform.window": str(result["window"].get("source")),
    }
    run = client.create_run(exp_id, run_name=f"monitor-{who['name']}-v{who['version']}")
    run_id = run.info.run_id
    now = int(datetime.now(UTC).timestamp() * 1000)
    metrics = {
        "window_rows": result["window"]["n_rows"],
        "drifted_features": len(result["summary"]["drifted"]),
        "warning_features": len(result["summary"]["warning"]),
    }
    for source in ("measured", "estimated"):
        fig = ((result.get("performance") or {}).get(source) or {}).get(
            params.monitoring.primary_metric
        )
        if fig and fig.get("value") is not None:
            metrics[f"{source}_{params.monitoring.primary_metric}"] = fig["value"]
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "monitor.json"
        write_json(staged, {**result, "outputs": {**result["outputs"], "mlflow_run_id": run_id}})
        client.log_artifact(run_id, str(staged), "monitoring")
    client.log_artifact(run_id, str(html_path), "monitoring")
    client.set_terminated(run_id)
    client.set_model_version_tag(who["name"], who["version"], "mlplatform.monitor.last_run", run_id)
    client.set_model_version_tag(
        who["name"], who["version"], "mlplatform.monitor.last_verdict", result["verdict"]
    )
    return run_id

"""A deployment version: one registered version that composes the champion and a challenger.

Its artifact is an MLflow model folder like any of ours (loader ``mlplatform.model_format``,
no pickle, the champion's input signature) whose data folder holds one small JSON file,
``deployment.json``: the mode (shadow or ab), the registered model, the champion's and the
challenger's versions, the A/B split and key. ``model_format``'s loader sees that file and
hands over to ``load`` here, which loads both registered versions (each checked like any
model) and serves them through the unchanged ``mlflow models serve -m models:/NAME@shadow``.

Shadow: the answer is the champion's. The challenger scores the same rows on one background
thread; the request never waits for it. At most ``MAX_PENDING`` challenger calls are queued
or running: a request arriving while they are is not shadowed (its rows are logged with no
challenger answer, counted as failures). A challenger call slower than
``challenger_timeout_ms`` or one that raises is logged the same way. Both answers go to the
prediction log: the champion's with ``arm="champion"``, the challenger's with
``arm="shadow"``, each with its own version.

A/B: each row is answered by the arm its key picks (``serving.ab.assign_arm``: a stable hash
of the key column, or of the request id), at the configured challenger share; every answer
row carries ``arm`` and ``model_version``, and the log records both arms with their key.

``MLPLATFORM_SHADOW_FAULT`` (``raise`` or ``sleep:<ms>``, read at load) makes a shadow
deployment's challenger fail that way: a drill to check that the answers do not change.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplatform import model_trust
from mlplatform.errors import ModelError
from mlplatform.model_trust import ModelFormatError
from mlplatform.monitoring import prediction_log
from mlplatform.monitoring.served import REQUEST_ID  # the column the answer and feedback share
from mlplatform.serving import ab

log = logging.getLogger(__name__)

SPEC_FILE = model_trust.DEPLOYMENT_FILE
MODES = ("shadow", "ab")
ARM = "arm"
MODEL_VERSION = "model_version"
SHADOW_ARM = "shadow"
MAX_PENDING = 2  # challenger calls queued or running at once in a shadow deployment
FAULT_ENV = "MLPLATFORM_SHADOW_FAULT"


@dataclass(frozen=True)
class DeploymentSpec:
    """What ``deployment.json`` holds."""

    mode: str
    model_name: str
    champion_version: str
    challenger_version: str
    challenger_share: float = 0.5
    key_column: str | None = None
    salt: str = "mlplatform-ab"
    challenger_timeout_ms: float = 50.0
    kind: str = "deployment"
    format_version: int = 1

    @property
    def champion_uri(self) -> str:
        return f"models:/{self.model_name}/{self.champion_version}"

    @property
    def challenger_uri(self) -> str:
        return f"models:/{self.model_name}/{self.challenger_version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "champion_uri": self.champion_uri,
            "challenger_uri": self.challenger_uri,
        }

    @classmethod
    def from_dict(cls, raw: Any, label: str = SPEC_FILE) -> DeploymentSpec:
        """Read and check a spec.

        Raises:
            ModelFormatError: a field is missing or invalid (one line naming it).
        """
        if not isinstance(raw, dict):
            raise ModelFormatError(f"{label}: expected a JSON object")
        for key in ("mode", "model_name", "champion_version", "challenger_version"):
            if not raw.get(key):
                raise ModelFormatError(f"{label}: '{key}' missing")
        if raw["mode"] not in MODES:
            raise ModelFormatError(f"{label}: mode {raw['mode']!r} is not shadow or ab")
        if str(raw["champion_version"]) == str(raw["challenger_version"]):
            raise ModelFormatError(f"{label}: champion and challenger are the same version")
        share = raw.get("challenger_share", 0.5)
        if not isinstance(share, int | float) or not 0 < share < 1:
            raise ModelFormatError(f"{label}: challenger_share {share!r} is not in (0, 1)")
        timeout = raw.get("challenger_timeout_ms", 50.0)
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise ModelFormatError(f"{label}: challenger_timeout_ms {timeout!r} is not > 0")
        return cls(
            mode=raw["mode"],
            model_name=str(raw["model_name"]),
            champion_version=str(raw["champion_version"]),
            challenger_version=str(raw["challenger_version"]),
            challenger_share=float(share),
            key_column=raw.get("key_column") or None,
            salt=str(raw.get("salt") or "mlplatform-ab"),
            challenger_timeout_ms=float(timeout),
        )


def write_folder(folder: Path, spec: DeploymentSpec) -> Path:
    """The data folder of a deployment version: ``deployment.json`` alone."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SPEC_FILE
    path.write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def read_spec(folder: Path) -> DeploymentSpec:
    path = Path(folder) / SPEC_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise ModelFormatError(f"{path}: not a readable JSON file") from None
    return DeploymentSpec.from_dict(raw, str(path))


def _parse_fault(text: str | None) -> tuple[str, float] | None:
    if not text or text.strip().lower() in ("", "off", "0", "none"):
        return None
    word, _, ms = text.strip().partition(":")
    if word == "raise":
        return ("raise", 0.0)
    if word == "sleep":
        try:
            return ("sleep", float(ms) / 1000)
        except ValueError:
            pass
    raise ModelError(f"{FAULT_ENV}: {text!r} is not 'raise' or 'sleep:<ms>'")


def raw_model(pyfunc_model: Any) -> Any:
    """The object our loader returned inside MLflow's PyFuncModel (a TabularModel)."""
    return pyfunc_model._model_impl  # MLflow's get_raw_model() only asks the object itself


def load_inner(uri: str) -> Any:
    """One registered version as the raw model object (checked like any model of ours).

    Raises:
        ModelFormatError: it is not one of ours, or it is itself a deployment version.
    """
    import mlflow

    label = model_trust.describe(uri)
    with model_trust.fetched(uri, label) as folder:
        checked = model_trust.verify_folder(folder, label)
        if checked["family"] == model_trust.DEPLOYMENT_FAMILY:
            raise ModelFormatError(f"{label}: a deployment cannot compose another deployment")
        model = raw_model(mlflow.pyfunc.load_model(str(folder)))
    model.prediction_log = None  # the deployment records both arms itself
    return model


class DeploymentModel:
    """The pyfunc object of a deployment version (see the module docstring)."""

    def __init__(self, spec: DeploymentSpec, champion: Any, challenger: Any) -> None:
        self.spec = spec
        self.champion, self.challenger = champion, challenger
        self.classes = list(champion.classes)
        self.input_names = list(champion.input_names)
        self._proba_names = [f"probability_{c}" for c in self.classes]
        self.prediction_log = prediction_log.get_log()  # at load: a bad value stops here
        self.fault = _parse_fault(os.environ.get(FAULT_ENV)) if spec.mode == "shadow" else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow-challenger")
        self._pending = threading.BoundedSemaphore(MAX_PENDING)
        self._lock = threading.Lock()
        self.counts = {"shadowed": 0, "failed": 0, "late": 0, "busy": 0}

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _rows(answer: Any) -> list[dict[str, Any]]:
        return answer if isinstance(answer, list) else answer.to_dict("records")

    def _arrays(self, rows: list[dict[str, Any]]) -> tuple[list[Any], np.ndarray]:
        names = self._proba_names
        return [r["prediction"] for r in rows], np.array(
            [[r[c] for c in names] for r in rows], dtype=np.float64
        ).reshape(len(rows), len(names))

    def _record(self, frame, rows, *, version, arm, rids, keys=None, ms=None, idx=None) -> None:
        if self.prediction_log is None:
            return
        preds, proba = (None, None) if rows is None else self._arrays(rows)
        idx = _rows_in_request(rids, np.arange(len(rids))) if idx is None else idx
        self.prediction_log.record(
            frame,
            preds,
            proba,
            classes=self.classes,
            model_name=self.spec.model_name,
            model_version=version,
            arm=arm,
            source="serve",
            request_id=rids,
            rows=idx,
            keys=keys,
            latency_ms=ms,
        )

    def request_ids(self, frame: pd.DataFrame) -> list[str]:
        """The request_id column per row where given, else one new id for the request."""
        new = uuid.uuid4().hex
        if REQUEST_ID not in frame.columns:
            return [new] * len(frame)
        return [new if v is None or v != v else str(v) for v in frame[REQUEST_ID].tolist()]

    @staticmethod
    def _out(rows: list[dict[str, Any]], as_records: bool, index: Any) -> Any:
        return rows if as_records else pd.DataFrame.from_records(rows, index=index)

    # -- predict ---------------------------------------------------------------------------

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        """The champion's answer (shadow) or each row's arm's answer (ab), plus request_id
        (and arm, model_version in ab); records in the scoring server, else a DataFrame."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        features = frame[[c for c in frame.columns if c != REQUEST_ID]]
        rids = self.request_ids(frame)
        if self.spec.mode == "shadow":
            return self._shadow(frame, features, rids)
        return self._ab(frame, features, rids)

    def _shadow(self, frame: pd.DataFrame, features: pd.DataFrame, rids: list[str]) -> Any:
        if self._pending.acquire(blocking=False):
            try:
                self._pool.submit(self._score_challenger, features, rids)
            except RuntimeError:  # the pool is shut down (interpreter exit)
                self._pending.release()
        else:
            with self._lock:
                self.counts["busy"] += 1
            self._record(
                features, None, version=self.spec.challenger_version, arm=SHADOW_ARM, rids=rids
            )
        start = time.perf_counter()
        answer = self.champion.predict(features)
        ms = (time.perf_counter() - start) * 1000
        rows = self._rows(answer)
        self._record(
            features, rows, version=self.spec.champion_version, arm=ab.CHAMPION, rids=rids, ms=ms
        )
        for row, rid in zip(rows, rids, strict=True):
            row[REQUEST_ID] = rid
        return self._out(rows, isinstance(answer, list), frame.index)

    def _score_challenger(self, features: pd.DataFrame, rids: list[str]) -> None:
        """On the shadow thread: never raises, never touches the answer."""
        start = time.perf_counter()
        rows, outcome = None, "shadowed"
        try:
            if self.fault is not None:
                kind, seconds = self.fault
                if kind == "raise":
                    raise RuntimeError("shadow fault drill (MLPLATFORM_SHADOW_FAULT=raise)")
                time.sleep(seconds)
            rows = self._rows(self.challenger.predict(features))
            ms = (time.perf_counter() - start) * 1000
            if ms > self.spec.challenger_timeout_ms:
                rows, outcome = None, "late"
        except Exception as exc:
            outcome = "failed"
            log.warning(
                "shadow challenger v%s failed: %s",
                self.spec.challenger_version,
                str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
            )
        finally:
            self._pending.release()
        ms = (time.perf_counter() - start) * 1000
        with self._lock:
            self.counts[outcome] += 1
        try:
            self._record(
                features,
                rows,
                version=self.spec.challenger_version,
                arm=SHADOW_ARM,
                rids=rids,
                ms=ms,
            )
        except Exception:  # the log never raises, but the shadow thread must not die
            log.exception("shadow: cannot record the challenger's answer")

    def arms(self, frame: pd.DataFrame, rids: list[str]) -> np.ndarray:
        """The arm of each row: by the key column if configured, else by the request id."""
        key = self.spec.key_column
        keys = frame[key].tolist() if key and key in frame.columns else rids
        return ab.assign_arms(keys, self.spec.challenger_share, self.spec.salt), keys

    def _ab(self, frame: pd.DataFrame, features: pd.DataFrame, rids: list[str]) -> Any:
        arms, keys = self.arms(frame, rids)
        out: list[dict[str, Any] | None] = [None] * len(frame)
        as_records = True
        for arm, model, version in (
            (ab.CHAMPION, self.champion, self.spec.champion_version),
            (ab.CHALLENGER, self.challenger, self.spec.challenger_version),
        ):
            pos = np.flatnonzero(arms == arm)
            if not len(pos):
                continue
            part = features.iloc[pos]
            start = time.perf_counter()
            answer = model.predict(part)
            ms = (time.perf_counter() - start) * 1000
            as_records = isinstance(answer, list)
            rows = self._rows(answer)
            self._record(
                part,
                rows,
                version=version,
                arm=arm,
                ms=ms,
                rids=[rids[i] for i in pos],
                keys=[keys[i] for i in pos],
                idx=_rows_in_request(rids, pos),
            )
            for i, row in zip(pos, rows, strict=True):
                row.update({ARM: arm, MODEL_VERSION: version, REQUEST_ID: rids[i]})
                out[i] = row
        return self._out(out, as_records, frame.index)


def _rows_in_request(rids: list[str], pos: np.ndarray) -> list[int]:
    """Each row's position within its request (the log's ``row``): the position in the
    frame when the request has one id, else 0 for rows that brought their own id."""
    one_id = len(set(rids)) == 1
    return [int(i) if one_id else 0 for i in pos]


def load(folder: Path) -> DeploymentModel:
    """``model_format``'s loader hands a deployment's checked data folder here.

    Raises:
        ModelFormatError: the spec is invalid, or either version is not one of ours.
    """
    spec = read_spec(folder)
    champion = load_inner(spec.champion_uri)
    challenger = load_inner(spec.challenger_uri)
    if list(champion.input_names) != list(challenger.input_names):
        raise ModelFormatError(
            f"deployment of {spec.model_name}: v{spec.challenger_version} takes other input "
            f"columns than v{spec.champion_version}"
        )
    log.info(
        "%s deployment: champion v%s, challenger v%s",
        spec.mode,
        spec.champion_version,
        spec.challenger_version,
    )
    return DeploymentModel(spec, champion, challenger)

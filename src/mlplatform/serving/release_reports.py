"""``mlplatform shadow`` and ``mlplatform ab``: the figures of a deployment, from the log.

Shadow: the champion's (``arm=champion``) and the challenger's (``arm=shadow``) rows of the
prediction log, paired by request id and row, since the shadow deployment was made; or a
file scored offline by both versions (``--current FILE``). A/B: the rows each arm answered
(they carry the A/B key), with the labels the feedback table has joined so far.

Each writes ``reports/<shadow|ab>.json`` and ``.html`` (temporary file, then rename), logs
both onto the two versions' training runs, tags the challenger's version with the headline
figures and appends an audit record, so ``mlplatform lineage`` shows what a decision used.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from mlplatform import locks, tracking
from mlplatform.config import Params, Paths
from mlplatform.errors import DataValidationError, RegistryError
from mlplatform.io import digest, write_json, write_text
from mlplatform.monitoring import prediction_log
from mlplatform.registry import versions
from mlplatform.registry.events import CardStore, record_event
from mlplatform.serving import ab, release, shadow_stats
from mlplatform.serving.deployment import SHADOW_ARM, load_inner

log = logging.getLogger(__name__)

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("mlplatform.serving", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
SHADOW_TAGS = ("agreement", "positive_rate_shift", "compared_rows", "challenger_failure_rate")


def _log_url(params: Params) -> str:
    settings = getattr(params, "prediction_log", None)  # the monitoring section, if mounted
    url = prediction_log.resolve_url(settings, tracking.tracking_uri(params), reading=True)
    assert url is not None  # reading=True never returns None
    return url


def _positive(paths: Paths, classes: list[str]) -> str:
    from mlplatform.data.dataset import load_schema

    try:
        return str(load_schema(paths).positive_class)
    except Exception:  # no prepared data here: the last class (1 of 0/1)
        return sorted(classes)[-1]


def _since(mv: Any) -> pd.Timestamp:
    return pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC")


def _deployment(client: Any, name: str, mode: str) -> tuple[str, Any, Any]:
    found = release.deployed(client, name, mode)
    if found is None:
        raise RegistryError(
            f"registered model '{name}' has no '{mode}' alias: run `mlplatform deploy {mode} "
            f"--challenger VERSION` first (or give --current FILE and --challenger)"
        )
    version, mv = found
    return version, mv, release.spec_of(mv)


# --------------------------------------------------------------------------------------
# Shadow


def shadow_pairs(frame: pd.DataFrame, champion: str, challenger: str) -> pd.DataFrame:
    """The champion's logged rows with the challenger's answer to the same row beside them
    (``*_b`` columns; NaN where the challenger gave none). Pure."""
    a = frame[(frame["arm"] == ab.CHAMPION) & (frame["model_version"] == str(champion))]
    b = frame[(frame["arm"] == SHADOW_ARM) & (frame["model_version"] == str(challenger))]
    b = b.drop_duplicates(["request_id", "row"], keep="last")
    keep = ["request_id", "row", "prediction", "latency_ms"]
    keep += [c for c in b.columns if c.startswith(prediction_log.PROBA_PREFIX)]
    return a.merge(b[keep], on=["request_id", "row"], how="left", suffixes=("", "_b"))


def _outputs_from_pairs(pairs: pd.DataFrame, positive: str, versions_: tuple[str, str]):
    col = f"{prediction_log.PROBA_PREFIX}{positive}"
    if col not in pairs.columns:
        raise DataValidationError(f"prediction log: no {col} column (positive class {positive})")
    pred_b = pairs["prediction_b"].where(pairs["prediction_b"].notna(), None)
    champion = shadow_stats.ModelOutputs(
        pairs[col].to_numpy(float),
        pairs["prediction"].to_numpy(object),
        _per_row_latency(pairs, "latency_ms"),
        versions_[0],
    )
    challenger = shadow_stats.ModelOutputs(
        pairs[f"{col}_b"].to_numpy(float),
        pred_b.to_numpy(object),
        _per_row_latency(pairs, "latency_ms_b"),
        versions_[1],
    )
    labels = pairs["label"].where(pairs["label"].notna(), None).to_numpy(object)
    return champion, challenger, labels


def _per_row_latency(pairs: pd.DataFrame, col: str) -> list[float] | None:
    # The log holds the latency of the whole request: one figure per request.
    lat = pairs.drop_duplicates("request_id")[col].dropna()
    return lat.tolist() or None


def _offline(paths: Paths, name: str, champion: str, challenger: str, current: Path):
    from mlplatform.data.dataset import load_schema

    if not current.is_file():
        raise DataValidationError(f"{current}: file not found")
    frame = pd.read_parquet(current) if current.suffix == ".parquet" else pd.read_csv(current)
    outputs, positive = [], None
    for version in (champion, challenger):
        model = load_inner(f"models:/{name}/{version}")
        positive = positive if positive is not None else model.classes[-1]
        missing = [c for c in model.input_names if c not in frame.columns]
        if missing:
            raise DataValidationError(f"{current}: missing column(s) {', '.join(missing[:5])}")
        start = time.perf_counter()
        out = model.predict(frame[model.input_names])
        ms = (time.perf_counter() - start) * 1000 / max(len(frame), 1)
        outputs.append(
            shadow_stats.ModelOutputs(
                out[f"probability_{positive}"].to_numpy(float),
                out["prediction"].to_numpy(object),
                [ms] * len(frame),
                version,
            )
        )
    labels = None
    try:
        target = load_schema(paths).target
    except Exception:
        target = None
    if target and target in frame.columns:
        labels = frame[target].where(frame[target].notna(), None).to_numpy(object)
    return outputs[0], outputs[1], labels, positive


def shadow(
    params: Params, paths: Paths, *, current: Path | None = None, challenger: str | None = None
) -> dict[str, Any]:
    """The shadow report (see the module docstring); returns it.

    Raises:
        RegistryError: no shadow deployment (and no --current), or a bad version.
        DataValidationError: the file or the log lacks what the report needs.
    """
    name = params.registry.model_name
    client, _ = tracking.setup(params)
    cfg = params.release.shadow
    if current is not None:
        champion = versions.alias_version(client, name, versions.CHAMPION)
        if challenger is None:
            found = release.deployed(client, name, "shadow")
            challenger = None if found is None else release.spec_of(found[1]).challenger_version
        if champion is None or challenger is None:
            raise RegistryError("shadow --current: needs a champion and --challenger VERSION")
        versions.get_version(client, name, challenger)
        a, b, labels, positive = _offline(paths, name, champion, challenger, Path(current))
        index = None
        source = {"kind": "offline", "file": str(current)}
    else:
        dep_version, mv, spec = _deployment(client, name, "shadow")
        champion, challenger = spec.champion_version, spec.challenger_version
        frame = prediction_log.read_window(
            _log_url(params), model_name=name, since=_since(mv), source="serve"
        )
        pairs = shadow_pairs(frame, champion, challenger)
        classes = [
            c[len(prediction_log.PROBA_PREFIX) :]
            for c in frame.columns
            if c.startswith(prediction_log.PROBA_PREFIX)
        ]
        positive = _positive(paths, classes)
        a, b, labels = _outputs_from_pairs(pairs, str(positive), (champion, challenger))
        index = (pairs["request_id"].astype(str) + ":" + pairs["row"].astype(str)).to_numpy()
        source = {"kind": "log", "deployment_version": dep_version, "since": str(_since(mv))}
    report = shadow_stats.shadow_report(
        a,
        b,
        positive_class=positive if current is not None else str(positive),
        labels=labels,
        index=index,
        top_k=cfg.top_k,
        n_boot=cfg.bootstrap_samples,
        confidence=cfg.confidence,
        seed=params.seed,
    )
    report["source"] = source
    report["rules"] = [
        vars(r) for r in shadow_stats.shadow_rules(report, cfg, params.promotion.primary_metric)
    ]
    report = json.loads(json.dumps(report, default=_json_default))
    _publish(params, paths, client, "shadow", report, str(champion), str(challenger))
    return report


def shadow_figures(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a shadow report (what the gate and the tags use)."""
    return {
        "agreement": report["agreement"],
        "positive_rate_shift": report["positive_rate"]["shift"],
        "compared_rows": report["rows"]["compared"],
        "challenger_failure_rate": report["rows"]["challenger_failure_rate"],
    }


# --------------------------------------------------------------------------------------
# A/B


def ab_rows(frame: pd.DataFrame, champion: str, challenger: str) -> pd.DataFrame:
    """The logged rows of an A/B test: each arm's own version, with its key. Pure."""
    arm_version = {ab.CHAMPION: str(champion), ab.CHALLENGER: str(challenger)}
    mine = frame["arm"].map(arm_version) == frame["model_version"]
    return frame[mine & frame["key"].notna()]


def ab_test(params: Params, paths: Paths) -> dict[str, Any]:
    """The A/B report: per-arm outcome, difference, test, rows still needed; returns it.

    Raises:
        RegistryError: no A/B deployment.
    """
    name = params.registry.model_name
    client, _ = tracking.setup(params)
    cfg = params.release.ab
    dep_version, mv, spec = _deployment(client, name, "ab")
    frame = prediction_log.read_window(
        _log_url(params), model_name=name, since=_since(mv), source="serve"
    )
    rows = ab_rows(frame, spec.champion_version, spec.challenger_version)
    classes = [
        c[len(prediction_log.PROBA_PREFIX) :]
        for c in frame.columns
        if c.startswith(prediction_log.PROBA_PREFIX)
    ]
    positive = _positive(paths, classes)
    labels = rows["label"].where(rows["label"].notna(), None).to_numpy(object)
    prob_col = f"{prediction_log.PROBA_PREFIX}{positive}"
    # (per_row_values cannot take zero rows: nothing served yet is nothing to compare)
    values = (
        np.array([], dtype=float)
        if rows.empty
        else ab.per_row_values(
            cfg.primary_metric,
            labels=labels,
            predicted=rows["prediction"].to_numpy(object),
            probability=rows[prob_col].to_numpy(float) if prob_col in rows else None,
            positive_class=str(positive),
        )
    )
    result = ab.compare_arms(rows["arm"].to_numpy(object), values, cfg).to_dict()
    served = rows["arm"].value_counts().to_dict()
    report = {
        **result,
        "winner": {"challenger_better": "challenger", "champion_better": "champion"}.get(
            result["decision"]
        ),
        "served": {arm: int(served.get(arm, 0)) for arm in (ab.CHAMPION, ab.CHALLENGER)},
        "champion_version": spec.champion_version,
        "challenger_version": spec.challenger_version,
        "challenger_share": spec.challenger_share,
        "key_column": spec.key_column or "request_id",
        "source": {"kind": "log", "deployment_version": dep_version, "since": str(_since(mv))},
    }
    report = json.loads(json.dumps(report, default=_json_default))
    _publish(params, paths, client, "ab", report, spec.champion_version, spec.challenger_version)
    return report


# --------------------------------------------------------------------------------------
# Publishing


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def _figures(kind: str, report: dict[str, Any]) -> dict[str, Any]:
    if kind == "shadow":
        return shadow_figures(report)
    keys = ("decision", "difference", "p_value", "collected", "rows_needed", "metric")
    return {k: report.get(k) for k in keys}


def render_html(kind: str, report: dict[str, Any]) -> str:
    """The report as one self-contained page (no scripts, no external links)."""
    return _env.get_template("release_report.html.j2").render(
        kind=kind,
        figures=_figures(kind, report),
        report=report,
        pretty=json.dumps(report, indent=2, sort_keys=True),
    )


def _publish(
    params: Params,
    paths: Paths,
    client: Any,
    kind: str,
    report: dict[str, Any],
    champion: str,
    challenger: str,
) -> None:
    name = params.registry.model_name
    report["report_hash"] = digest(report)
    json_path, html_path = paths.reports / f"{kind}.json", paths.reports / f"{kind}.html"
    write_json(json_path, report)
    write_text(html_path, render_html(kind, report))
    stem = f"{kind}_v{champion}_v{challenger}"
    for version in dict.fromkeys((champion, challenger)):
        run_id = versions.get_version(client, name, version).run_id
        client.log_dict(run_id, report, f"release/{stem}.json")
        client.log_artifact(run_id, str(html_path), f"release/{stem}")
    figures = _figures(kind, report)
    tags = {f"{kind}.{k}": v for k, v in figures.items()}
    tags[f"{kind}.report_hash"] = report["report_hash"]
    tags[f"{kind}.champion"] = champion
    with locks.registry_lock(tracking.registry_uri(params), name, paths.state):
        record_event(
            params,
            paths,
            client,
            CardStore(client),
            {
                "action": kind,
                "model_name": name,
                "version": challenger,
                "decision": str(figures.get("decision", "reported")),
                "reason": f"{kind} report against champion v{champion}: "
                + ", ".join(f"{k}={v}" for k, v in figures.items()),
                "actor": tracking.user(params),
                "champion_before": champion,
                "champion_after": champion,
                "figures": figures,
            },
            touched=set(),
            tags=lambda r: (challenger, {**tags, f"{kind}.at": r["when"]}),
        )
    log.info("%s report of v%s against v%s -> %s", kind, challenger, champion, json_path)

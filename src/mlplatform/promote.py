"""Register, promote, review, roll back: the commands that move a model through the registry.

``promote`` measures the candidate and the current champion now, on the current test split
(so the comparison is fair), asks ``gates.decide`` and applies the verdict under the
registry lock. Every step leaves a record (see ``registry``).
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplatform import card, gates, model_format, registry, tracking
from mlplatform.config import Params, Paths
from mlplatform.errors import RegistryError
from mlplatform.io import read_json, write_json
from mlplatform.metrics import evaluate as evaluate_metrics
from mlplatform.prepare import DatasetSchema, load_schema, load_split

log = logging.getLogger(__name__)


def _client(params: Params):
    client, _ = tracking.setup(params)
    return client


def _lock(params: Params, paths: Paths):
    return registry.lock(tracking.registry_uri(params), params.registry.model_name, paths.state)


# --------------------------------------------------------------------------------------
# register


def register(params: Params, paths: Paths) -> dict[str, Any]:
    """Make the trained model a new version (once per training run) with lineage, test
    metrics and the model card as its description."""
    client = _client(params)
    name = params.registry.model_name
    trained = read_json(paths.train_report)
    evaluation = read_json(paths.metrics)
    with _lock(params, paths):  # two registers of one run must not make two versions
        version = _register_version(client, name, trained, evaluation)
    refresh_description(params, paths, client, version, local=True)
    payload = {
        "model_name": name,
        "version": version,
        "run_id": trained["run_id"],
        "model_uri": f"models:/{name}/{version}",
    }
    write_json(paths.registration, payload)
    return payload


def _register_version(client: Any, name: str, trained: dict, evaluation: dict) -> str:
    registry.ensure_registered_model(client, name)
    version = registry.find_version_for_run(client, name, trained["run_id"])
    if version is None:
        run = client.get_run(trained["run_id"])
        lineage = {
            k: v
            for k, v in run.data.tags.items()
            if k.startswith(("mlplatform.", "dvc.lock.", "lib.", "mlflow.source.git"))
            and k != "mlplatform.stage"
        }
        tags = {
            **lineage,
            "mlplatform.train_run_id": trained["run_id"],
            "mlplatform.family": trained["family"],
            "mlplatform.threshold": str(trained["threshold"]),
            **{
                f"test.{k}": f"{v:.6g}"
                for k, v in evaluation["test"].items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            },
        }
        mv = client.create_model_version(
            name, source=trained["model_uri"], run_id=trained["run_id"], tags=tags
        )
        version = str(mv.version)
        log.info("registered %s version %s", name, version)
    return version


def refresh_description(
    params: Params, paths: Paths, client: Any, version: str, local: bool = False
) -> None:
    """Re-render a version's card with its approvals so far.

    The card goes into the version's description and, whole, onto its training run as
    ``model_card/model_card_v<version>.{md,html}``. The card stage's own files in reports/
    are left alone (they are that stage's DVC outputs).

    ``local``: the version is the one this project just trained, so the card context (and
    the plots for the HTML page) come from reports/; otherwise from the card.json stored on
    the version's training run (Markdown only).
    """
    name = params.registry.model_name
    approvals = registry.approvals_for(registry.history(client, name), version)
    if local and paths.card_json.exists():
        ctx = read_json(paths.card_json)
    else:
        mv = registry.get_version(client, name, version)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                import mlflow

                local_path = mlflow.artifacts.download_artifacts(
                    run_id=mv.run_id, artifact_path="model_card/card.json", dst_path=tmp
                )
                ctx = json.loads(Path(local_path).read_text())
        except Exception:  # a version registered by other means has no card
            return
    ctx["model"]["version"] = version
    ctx["approvals"] = approvals
    client.update_model_version(name, version, description=card.render_description(ctx))
    run_id = ctx["model"]["run_id"]
    with tempfile.TemporaryDirectory() as tmp:
        md = Path(tmp) / f"model_card_v{version}.md"
        no_images = dict.fromkeys(card.image_files(paths))
        md.write_text(card.render_markdown(ctx, no_images))
        client.log_artifact(run_id, str(md), "model_card")
        if local:
            page = Path(tmp) / f"model_card_v{version}.html"
            page.write_text(card.render_html(ctx, card.embedded_images(paths)))
            client.log_artifact(run_id, str(page), "model_card")


# --------------------------------------------------------------------------------------
# Measuring a model now, on the current test split.


def _version_has_artifact(client: Any, run_id: str, path: str) -> bool:
    try:
        parent = str(Path(path).parent)
        return any(a.path == path for a in client.list_artifacts(run_id, parent))
    except Exception:
        return False


def measure(
    uri: str,
    version: str,
    schema: DatasetSchema,
    test: pd.DataFrame,
    client: Any,
    run_id: str | None,
) -> tuple[gates.Figures, Any]:
    """Load a model by URI and score it on the test split; failures become figures."""

    fig = gates.Figures(version=version)
    if run_id:
        fig.has_card = _version_has_artifact(client, run_id, "model_card/model_card.html")
        fig.has_explanations = _version_has_artifact(client, run_id, "explain/summary.json")
        fig.fairness = _fairness_of(run_id)
    try:
        model = model_format.load_pyfunc(uri)  # refuses anything but our own format
        out = model.predict(test[schema.feature_names])
        cols = [model_format.probability_column(c) for c in schema.classes]
        proba = out[cols].to_numpy(dtype=np.float64)
        lookup = {str(c): i for i, c in enumerate(schema.classes)}
        pred = out[model_format.PREDICTION].astype(str).map(lookup).to_numpy()
        if np.isnan(pred.astype(float)).any():
            raise ValueError("predicted classes outside the training classes")
    except Exception as exc:
        fig.loaded = False
        fig.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        return fig, None
    y = schema.encode_target(test[schema.target]).to_numpy()
    report = evaluate_metrics(y, proba, schema.classes, None, pred=pred.astype(np.int64))
    fig.metrics = {
        k: float(v)
        for k, v in report.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    fig.prediction_distribution = {
        str(c): float(np.mean(pred == i)) for i, c in enumerate(schema.classes)
    }
    return fig, model


def _fairness_of(run_id: str) -> dict[str, str]:
    import mlflow

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="model_card/card.json", dst_path=tmp
            )
            ctx = json.loads(Path(path).read_text())
        return {k: v["status"] for k, v in ctx.get("fairness", {}).items()}
    except Exception:
        return {}


def latencies(models: list[Any], rows: pd.DataFrame, repeats: int) -> list[float]:
    """Median single-row predict latency (ms) of each model, measured interleaved."""
    times: list[list[float]] = [[] for _ in models]
    records = [rows.iloc[[i % len(rows)]] for i in range(repeats)]
    for model in models:  # warm-up
        model.predict(records[0])
    for rec in records:
        for k, model in enumerate(models):
            t0 = time.perf_counter()
            model.predict(rec)
            times[k].append((time.perf_counter() - t0) * 1000)
    return [statistics.median(t) for t in times]


# --------------------------------------------------------------------------------------
# promote


def _actor(params: Params, actor: str | None) -> str:
    return actor or tracking.user(params)


def promote(
    params: Params,
    paths: Paths,
    *,
    version: str | None = None,
    dry_run: bool = False,
    actor: str | None = None,
) -> dict[str, Any]:
    """Decide on the candidate and apply the decision (unless dry-run or mode says not to)."""
    cfg = params.promotion
    name = params.registry.model_name
    mirror = params.registry.mirror_stages
    client = _client(params)
    version = str(version or read_json(paths.registration)["version"])
    dry_run = dry_run or cfg.mode == "dry_run"
    schema = load_schema(paths)
    test = load_split(paths, "test")
    who = _actor(params, actor)
    if cfg.mode == "disabled":
        payload = {
            "decision": "skipped",
            "reason": "promotion.mode is disabled",
            "candidate_version": version,
            "model_name": name,
        }
        write_json(paths.promotion, payload)
        return payload
    with _lock(params, paths):
        mv = registry.get_version(client, name, version)
        before = registry.aliases(client, name)
        champion = before.get(registry.CHAMPION)
        if champion == version:
            payload = {
                "decision": "noop",
                "reason": f"version {version} is already champion",
                "candidate_version": version,
                "champion_version": champion,
                "model_name": name,
                "dry_run": dry_run,
            }
            write_json(paths.promotion, payload)
            return payload
        cand, cand_model = measure(
            f"models:/{name}/{version}", version, schema, test, client, mv.run_id
        )
        champ = None
        if champion is not None:
            champ_mv = registry.get_version(client, name, champion)
            champ, champ_model = measure(
                f"models:/{name}/{champion}", champion, schema, test, client, champ_mv.run_id
            )
            if cand_model is not None and champ_model is not None:
                sample = test[schema.feature_names].head(200)
                cand.latency_ms, champ.latency_ms = latencies(
                    [cand_model, champ_model], sample, cfg.latency_repeats
                )
        verdict = gates.decide(cand, champ, cfg)
        record = {
            "action": "promote",
            "model_name": name,
            "version": version,
            "decision": verdict.decision,
            "reason": verdict.reason,
            "rules": verdict.to_dict()["rules"],
            "actor": who,
            "champion_before": champion,
            "candidate": _figures_dict(cand),
            "champion": None if champ is None else _figures_dict(champ),
            "dry_run": dry_run,
        }
        after = dict(before)
        if not dry_run:
            after = _apply(client, name, version, verdict.decision, before, mirror)
            record["champion_after"] = after.get(registry.CHAMPION)
            record = registry.append(client, name, record)
            registry.tag_version(
                client,
                name,
                version,
                {
                    "promotion.decision": verdict.decision,
                    "promotion.reason": verdict.reason,
                    "promotion.actor": who,
                    "promotion.at": record["when"],
                    "promotion.seq": str(record["seq"]),
                    "promotion.rules": {r.name: r.outcome for r in verdict.rules},
                    # A review is only valid against the champion it was compared with.
                    "promotion.champion_at_decision": champion or "none",
                },
            )
            for v in {version, champion} - {None}:
                refresh_description(
                    params, paths, client, v, local=_is_local(paths, client, name, v)
                )
        else:
            record["champion_after"] = champion
    payload = {
        **{k: v for k, v in record.items() if k not in ("action",)},
        "candidate_version": version,
        "champion_version": record["champion_after"],
        "aliases_before": before,
        "aliases_after": after,
    }
    write_json(paths.promotion, payload)
    log.info(
        "promotion of %s v%s: %s (%s)%s",
        name,
        version,
        verdict.decision,
        verdict.reason,
        " [dry run: registry unchanged]" if dry_run else "",
    )
    return payload


def _is_local(paths: Paths, client: Any, name: str, version: str) -> bool:
    """Was this version trained in this project (so reports/ hold its card)?"""
    if not paths.train_report.exists():
        return False
    run_id = read_json(paths.train_report)["run_id"]
    return registry.get_version(client, name, version).run_id == run_id


def _figures_dict(f: gates.Figures) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(f)


def _apply(
    client: Any, name: str, version: str, decision: str, before: dict[str, str], mirror: bool
) -> dict[str, str]:
    champion = before.get(registry.CHAMPION)
    if decision == "approve":
        if champion is not None:
            registry.set_alias(client, name, registry.PREVIOUS, champion, mirror)
            registry.archive_stage(client, name, champion, mirror)
        registry.set_alias(client, name, registry.CHAMPION, version, mirror)
        # A challenger waiting for review was compared with the old champion: that
        # comparison no longer holds (it must be promoted again against the new one).
        if before.get(registry.CHALLENGER) is not None:
            registry.set_alias(client, name, registry.CHALLENGER, None, mirror)
    elif decision == "review":
        registry.set_alias(client, name, registry.CHALLENGER, version, mirror)
    return registry.aliases(client, name)


# --------------------------------------------------------------------------------------
# review, rollback, history


def review(
    params: Params, paths: Paths, *, version: str, approve: bool, reviewer: str, reason: str
) -> dict[str, Any]:
    """Complete a manual review: approve (the version becomes champion) or reject it."""
    if not reason.strip():
        raise RegistryError("review: give a --reason")
    name = params.registry.model_name
    mirror = params.registry.mirror_stages
    client = _client(params)
    with _lock(params, paths):
        mv = registry.get_version(client, name, version)
        before = registry.aliases(client, name)
        pending = (
            before.get(registry.CHALLENGER) == str(version)
            or mv.tags.get("promotion.decision") == "review"
        )
        if not pending:
            raise RegistryError(
                f"registered model '{name}' version {version} is not waiting for review "
                f"(challenger is {before.get(registry.CHALLENGER) or 'unset'})"
            )
        compared_with = mv.tags.get("promotion.champion_at_decision")
        champion_now = before.get(registry.CHAMPION) or "none"
        if approve and compared_with is not None and compared_with != champion_now:
            raise RegistryError(
                f"registered model '{name}' version {version} was compared with champion "
                f"{compared_with}, but the champion is now {champion_now}; run "
                f"`mlplatform promote --version {version}` again before reviewing it"
            )
        decision = "approve" if approve else "reject"
        if approve:
            after = _apply(client, name, str(version), "approve", before, mirror)
        else:
            if before.get(registry.CHALLENGER) == str(version):
                registry.set_alias(client, name, registry.CHALLENGER, None, mirror)
            registry.archive_stage(client, name, str(version), mirror)
            after = registry.aliases(client, name)
        record = registry.append(
            client,
            name,
            {
                "action": "review",
                "model_name": name,
                "version": str(version),
                "decision": decision,
                "reason": reason,
                "actor": reviewer,
                "champion_before": before.get(registry.CHAMPION),
                "champion_after": after.get(registry.CHAMPION),
            },
        )
        registry.tag_version(
            client,
            name,
            str(version),
            {
                "promotion.decision": decision,
                "promotion.reason": reason,
                "promotion.actor": reviewer,
                "promotion.at": record["when"],
                "promotion.seq": str(record["seq"]),
                "review.by": reviewer,
            },
        )
        for v in {str(version), before.get(registry.CHAMPION)} - {None}:
            refresh_description(params, paths, client, v, local=_is_local(paths, client, name, v))
    log.info("review of %s v%s by %s: %s", name, version, reviewer, decision)
    return {**record, "aliases_before": before, "aliases_after": after}


def rollback(params: Params, paths: Paths, *, actor: str | None, reason: str) -> dict[str, Any]:
    """Make the previous champion the champion again (the demoted one becomes previous)."""
    name = params.registry.model_name
    mirror = params.registry.mirror_stages
    client = _client(params)
    who = _actor(params, actor)
    with _lock(params, paths):
        before = registry.aliases(client, name)
        previous, current = before.get(registry.PREVIOUS), before.get(registry.CHAMPION)
        if previous is None:
            raise RegistryError(
                f"registered model '{name}' has no '{registry.PREVIOUS}' alias to roll back to"
            )
        registry.set_alias(client, name, registry.CHAMPION, previous, mirror)
        registry.set_alias(client, name, registry.PREVIOUS, current, mirror)
        if current is not None:
            registry.archive_stage(client, name, current, mirror)
        after = registry.aliases(client, name)
        record = registry.append(
            client,
            name,
            {
                "action": "rollback",
                "model_name": name,
                "version": previous,
                "decision": "rollback",
                "reason": reason or "rollback",
                "actor": who,
                "champion_before": current,
                "champion_after": previous,
            },
        )
        if current is not None:
            registry.tag_version(
                client, name, current, {"rolled_back.at": record["when"], "rolled_back.by": who}
            )
        for v in {previous, current} - {None}:
            refresh_description(params, paths, client, v, local=_is_local(paths, client, name, v))
    log.info("rolled back %s: champion v%s -> v%s", name, current, previous)
    return {**record, "aliases_before": before, "aliases_after": after}


def history_table(params: Params) -> list[dict[str, Any]]:
    client = _client(params)
    return registry.history(client, params.registry.model_name)

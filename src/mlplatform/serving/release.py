"""Deploy: register a deployment version (shadow or A/B of champion and challenger), move
its alias, and read back what is deployed.

``mlplatform deploy shadow --challenger 4`` registers a new version of the model whose
artifact is a ``deployment.json`` naming champion and challenger (``serving.deployment``)
and points the ``shadow`` alias at it, so ``mlflow models serve -m models:/NAME@shadow``
serves it. ``deploy off`` removes the ``shadow`` and ``ab`` aliases (the versions stay).
Every change is a record in the audit history, on the challenger's version.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from mlplatform import locks, model_trust, tracking
from mlplatform.config import Params, Paths
from mlplatform.errors import RegistryError
from mlplatform.registry import versions
from mlplatform.registry.events import CardStore, record_event
from mlplatform.serving.deployment import MODES, REQUEST_ID, DeploymentSpec, write_folder

log = logging.getLogger(__name__)

DEPLOYMENT_TAG = "mlplatform.deployment"  # on a deployment version: its mode
ALIASES = MODES  # the alias of a deployment is its mode: shadow, ab


def is_deployment(mv: Any) -> bool:
    """Is this registered version a deployment (not a model of its own)?"""
    return bool(mv.tags.get(DEPLOYMENT_TAG))


def spec_of(mv: Any) -> DeploymentSpec:
    """The spec a deployment version was made from (from its tags)."""
    t = mv.tags
    return DeploymentSpec(
        mode=t[DEPLOYMENT_TAG],
        model_name=mv.name,
        champion_version=t["mlplatform.deployment.champion"],
        challenger_version=t["mlplatform.deployment.challenger"],
        challenger_share=float(t.get("mlplatform.deployment.challenger_share", 0.5)),
        key_column=t.get("mlplatform.deployment.key_column") or None,
        salt=t.get("mlplatform.deployment.salt", "mlplatform-ab"),
        challenger_timeout_ms=float(t.get("mlplatform.deployment.timeout_ms", 50.0)),
    )


def deployed(client: Any, name: str, mode: str) -> tuple[str, Any] | None:
    """(deployment version, its model version) behind the ``shadow``/``ab`` alias, if any."""
    version = versions.alias_version(client, name, mode)
    if version is None:
        return None
    return version, versions.get_version(client, name, version)


def _check_challenger(client: Any, name: str, challenger: str, champion: str | None) -> Any:
    if not str(challenger).isdigit():
        raise RegistryError(f"--challenger {challenger!r}: give a version number (e.g. 4)")
    mv = versions.get_version(client, name, challenger)  # raises naming the version
    if is_deployment(mv):
        raise RegistryError(
            f"registered model '{name}' version {challenger} is a deployment, not a model"
        )
    if champion is None:
        raise RegistryError(f"registered model '{name}' has no champion to deploy against")
    if str(challenger) == str(champion):
        raise RegistryError(f"version {challenger} is the champion; choose another challenger")
    uri = f"models:/{name}/{challenger}"
    with model_trust.fetched(uri, uri) as folder:
        model_trust.verify_folder(folder, uri)  # one of ours, or refused with one line
    return mv


def _signature(name: str, champion: str, key_column: str | None) -> Any:
    """The champion's input signature, plus optional request_id (and key) text columns."""
    import mlflow
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    sig = mlflow.models.get_model_info(f"models:/{name}/{champion}").signature
    if sig is None or sig.inputs is None:
        raise RegistryError(f"registered model '{name}' version {champion} has no signature")
    cols = list(sig.inputs.inputs)
    names = {c.name for c in cols}
    for extra in (REQUEST_ID, key_column):
        if extra and extra not in names:
            cols.append(ColSpec("string", extra, required=False))
            names.add(extra)
    return ModelSignature(inputs=Schema(cols))


def deploy(
    params: Params, paths: Paths, mode: str, challenger: str, actor: str | None = None
) -> dict[str, Any]:
    """Register a shadow or A/B deployment of champion and ``challenger``; set its alias.

    Raises:
        RegistryError: bad mode, no champion, the challenger is missing, the champion, a
            deployment, or not a model of ours.
    """
    import mlflow

    if mode not in MODES:
        raise RegistryError(f"deploy: mode {mode!r} is not one of {', '.join(MODES)}")
    name = params.registry.model_name
    client, _ = tracking.setup(params)
    cfg = params.release
    who = actor or tracking.user(params)
    with locks.registry_lock(tracking.registry_uri(params), name, paths.state):
        champion = versions.alias_version(client, name, versions.CHAMPION)
        _check_challenger(client, name, str(challenger), champion)
        key = cfg.ab.key_column if mode == "ab" else None
        spec = DeploymentSpec(
            mode=mode,
            model_name=name,
            champion_version=str(champion),
            challenger_version=str(challenger),
            challenger_share=cfg.ab.challenger_share,
            key_column=key,
            salt=cfg.ab.salt,
            challenger_timeout_ms=cfg.shadow.challenger_timeout_ms,
        )
        signature = _signature(name, str(champion), key)
        mlflow.set_experiment(params.mlflow.experiment)
        with (
            tempfile.TemporaryDirectory() as tmp,
            mlflow.start_run(run_name=f"deploy-{mode}-v{champion}-v{challenger}") as run,
        ):
            folder = Path(tmp) / model_trust.DATA_DIR
            write_folder(folder, spec)
            mlflow.set_tags({"mlplatform.stage": "deploy", DEPLOYMENT_TAG: mode})
            info = mlflow.pyfunc.log_model(
                name="deployment",
                loader_module=model_trust.LOADER_MODULE,
                data_path=str(folder),
                signature=signature,
                pip_requirements=["mlflow", "mlplatform"],
                metadata={"deployment": spec.to_dict()},
            )
        tags = {
            DEPLOYMENT_TAG: mode,
            "mlplatform.deployment.champion": spec.champion_version,
            "mlplatform.deployment.challenger": spec.challenger_version,
            "mlplatform.deployment.challenger_share": str(spec.challenger_share),
            "mlplatform.deployment.key_column": spec.key_column or "",
            "mlplatform.deployment.salt": spec.salt,
            "mlplatform.deployment.timeout_ms": str(spec.challenger_timeout_ms),
        }
        mv = client.create_model_version(
            name,
            source=info.model_uri,
            run_id=run.info.run_id,
            tags=tags,
            description=f"{mode} deployment: champion v{champion}, challenger v{challenger}",
        )
        version = str(mv.version)
        client.set_registered_model_alias(name, mode, version)
        record = record_event(
            params,
            paths,
            client,
            CardStore(client),
            {
                "action": "deploy",
                "model_name": name,
                "version": spec.challenger_version,
                "decision": mode,
                "reason": f"{mode} deployment v{version} against champion v{champion}",
                "actor": who,
                "champion_before": champion,
                "champion_after": champion,
                "deployment_version": version,
                "deployment": spec.to_dict(),
            },
            touched=set(),
            tags=lambda r: (
                spec.challenger_version,
                {f"release.{mode}.deployment": version, f"release.{mode}.at": r["when"]},
            ),
        )
    log.info(
        "%s deployment of %s: v%s (champion v%s, challenger v%s)",
        mode,
        name,
        version,
        champion,
        challenger,
    )
    return {
        "mode": mode,
        "deployment_version": version,
        "alias": mode,
        "model_uri": f"models:/{name}@{mode}",
        "seq": record["seq"],
        **spec.to_dict(),
    }


def off(params: Params, paths: Paths, actor: str | None = None) -> list[str]:
    """Remove the ``shadow`` and ``ab`` aliases; returns the aliases removed."""
    name = params.registry.model_name
    client, _ = tracking.setup(params)
    who = actor or tracking.user(params)
    removed = []
    with locks.registry_lock(tracking.registry_uri(params), name, paths.state):
        for mode in ALIASES:
            found = deployed(client, name, mode)
            if found is None:
                continue
            version, mv = found
            client.delete_registered_model_alias(name, mode)
            removed.append(mode)
            spec = spec_of(mv)
            record_event(
                params,
                paths,
                client,
                CardStore(client),
                {
                    "action": "deploy",
                    "model_name": name,
                    "version": spec.challenger_version,
                    "decision": "off",
                    "reason": f"{mode} deployment v{version} ended",
                    "actor": who,
                    "champion_before": spec.champion_version,
                    "champion_after": spec.champion_version,
                    "deployment_version": version,
                },
                touched=set(),
            )
    return removed


def status(params: Params) -> dict[str, Any]:
    """What is deployed: per mode, the deployment version and its champion and challenger;
    ``stale`` when the champion has moved since the deployment was made."""
    name = params.registry.model_name
    client, _ = tracking.setup(params)
    champion = versions.alias_version(client, name, versions.CHAMPION)
    out: dict[str, Any] = {"model_name": name, "champion": champion}
    for mode in ALIASES:
        found = deployed(client, name, mode)
        if found is None:
            out[mode] = None
            continue
        version, mv = found
        spec = spec_of(mv)
        out[mode] = {
            "deployment_version": version,
            "champion_version": spec.champion_version,
            "challenger_version": spec.challenger_version,
            "challenger_share": spec.challenger_share if mode == "ab" else None,
            "key_column": spec.key_column,
            "created": mv.creation_timestamp,
            "stale": spec.champion_version != champion,
        }
    return out

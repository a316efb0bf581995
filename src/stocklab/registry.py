"""The MLflow Model Registry as this project uses it: one registered model per model family
(`stocklab-<model>`), aliases `champion` (what `predict` serves) and `challenger` (the best
version that did not beat it). Aliases, not the deprecated stages."""

from __future__ import annotations

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
CHALLENGER = "challenger"
PREFIX = "stocklab-"


def registered_name(model: str) -> str:
    """`stocklab-<model>`: the registered model that holds every version of one family."""
    return f"{PREFIX}{model}"


def champion_uri(model: str) -> str:
    return f"models:/{registered_name(model)}@{CHAMPION}"


def client() -> mlflow.tracking.MlflowClient:
    return mlflow.tracking.MlflowClient()


def alias_version(name: str, alias: str) -> ModelVersion | None:
    """The version holding `alias`, or None when no version has it."""
    try:
        return client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def set_alias(name: str, alias: str, version) -> None:
    client().set_registered_model_alias(name, alias, str(version))


def clear_alias(name: str, alias: str) -> bool:
    """Remove `alias` if some version has it; True when it was removed."""
    if alias_version(name, alias) is None:
        return False
    client().delete_registered_model_alias(name, alias)
    return True


def versions(name: str) -> list[ModelVersion]:
    return list(client().search_model_versions(f"name='{name}'"))


def register_run_model(name: str, run_id: str, tags: dict | None = None) -> tuple[int, bool]:
    """Register the model logged by `run_id` under `name` with `tags`, once: (version, created).
    A run that is already registered (e.g. a resumed study whose best trial did not change)
    returns its existing version instead of a duplicate."""
    existing = client().search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if existing:
        return int(existing[0].version), False
    run = client().get_run(run_id)
    uri = run.data.tags.get("stocklab.model_uri", f"runs:/{run_id}/model")
    version = mlflow.register_model(uri, name)
    for key, value in (tags or {}).items():
        client().set_model_version_tag(name, version.version, key, str(value))
    return int(version.version), True

"""The MLflow Model Registry as this project uses it: one registered model per model family
(`stocklab-<model>`), aliases `champion` (what `predict` serves) and `challenger` (the best
version that did not beat it). Aliases, not the deprecated stages."""

from __future__ import annotations

import datetime

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from stocklab.models import MODELS
from stocklab.tracking import unquote_param

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
    client().update_model_version(name, version.version, description=version_description(name, version.version, run))
    if not client().get_registered_model(name).description:
        family = run.data.params.get("model", name.removeprefix(PREFIX))
        client().update_registered_model(name, description=family_description(family))
    return int(version.version), True


# what a version's description states, in this order (params and metrics of its source run)
DESCRIBED_PARAMS = ("model", "seq_len", "features_resolved", "scaler", "label", "loss", "horizon", "label_scale",
                    "split", "folds")  # fmt: skip
DESCRIBED_METRICS = ("valid_loss_min", "valid_mse_min", "valid_rank_ic", "valid_ls_sharpe_net", "test_mse",
                     "test_mse_skill", "test_rank_ic", "test_icir", "test_ls_sharpe_net")  # fmt: skip


def version_description(name: str, version, run) -> str:
    """What a registered version is and how to call it (Markdown, shown on its registry page)."""
    p = {k: unquote_param(v) for k, v in run.data.params.items()}
    m = run.data.metrics
    data = f"`{p.get('data', '?')}`: {p.get('data_tickers', '?')} tickers, {p.get('data_date_range', '?')}"
    label = (
        f"{p.get('horizon', '?')}-day forward return x {p.get('label_scale', '?')}, trained on the "
        f"`{p.get('label', 'raw')}` target with loss `{p.get('loss', 'mse')}`"
    )
    config = ", ".join(f"{k}={p[k]}" for k in DESCRIBED_PARAMS if k in p)
    metrics = ", ".join(f"{k}={m[k]:.4g}" for k in DESCRIBED_METRICS if k in m)
    return "\n".join(
        [
            f"**{name} v{version}** from run `{run.info.run_id}`.",
            "",
            f"- Data: {data}; fingerprint `{p.get('data_fingerprint', '?')}`.",
            f"- Label: {label}.",
            f"- Configuration: {config}.",
            f"- Metrics (validation chooses, test is shown): {metrics}.",
            "",
            "Call it on raw daily bars (a DataFrame of date, ticker, open, high, low, close, volume):",
            f"`mlflow.pyfunc.load_model('models:/{name}/{version}').predict(bars)` returns (date, ticker, "
            "prediction) for each ticker's latest complete window (`params={'all_dates': True}`: every date); "
            f"`mlflow models serve -m models:/{name}@champion --env-manager local` serves the same on "
            "`/invocations`; `stocklab predict` writes it to a file.",
        ]
    )


def family_description(model: str) -> str:
    """The registered model's description: the family's docstring and what its versions are."""
    cls = MODELS[model][0] if model in MODELS else None
    doc = " ".join((cls.__doc__ or "").split("\n\n")[0].split()) if cls is not None else ""
    return (
        f"stocklab `{model}` models{': ' + doc if doc else ''}\n\n"
        "Every version is a raw-bar scoring model: the same DataFrame of daily bars in, "
        "(date, ticker, prediction) out, whatever its window length, features or scaler. "
        f"The `{CHAMPION}` alias is what `stocklab predict` serves; `promote` moves it on validation metrics only."
    )


def note_version(name: str, version, text: str) -> None:
    """Append a dated line to a version's description (what `promote` did to it)."""
    v = client().get_model_version(name, str(version))
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = (v.description or "").rstrip()
    history = "" if "**Promotion history**" in body else "\n\n**Promotion history**\n"
    client().update_model_version(name, str(version), description=f"{body}{history}\n- {stamp}: {text}")

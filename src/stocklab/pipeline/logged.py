"""Logged models: load one (its raw-bar pyfunc, or its plain network with its Bundle), and
complete a trial's run into one.

A tune trial logs its fitted state only (artifacts.log_state); `complete_run` gives the run its
model, plots and tear sheet when the study picks it (or when `evaluate` asks for it).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import torch

from stocklab import factor_eval
from stocklab.config import CACHE_DIR, StockLabError
from stocklab.models import build_model, model_config
from stocklab.pipeline import packaging
from stocklab.pipeline.artifacts import BUNDLE_ARTIFACT, STATE_ARTIFACT, log_full_evaluation
from stocklab.pipeline.inputs import Bundle, prepare
from stocklab.training.inference import eval_mode


def has_model(run_id: str) -> bool:
    return "stocklab.model_uri" in mlflow.get_run(run_id).data.tags


def complete_run(run_id: str, cache_dir: str = CACHE_DIR, tear_sheet: bool = True) -> bool:
    """Give a finished light run (a tune trial: metrics, predictions, Bundle and its fitted state only)
    the full evaluation of `log_full_evaluation`: its model, tear sheet and plots. The weights
    are loaded into a fresh model and the inputs rebuilt from the Bundle through `prepare`, as
    `evaluate` does, so the logged model is exactly the trial's. False if it already had one."""
    if has_model(run_id):
        return False
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=BUNDLE_ARTIFACT))
    bundle = json.loads(local.read_text())
    b = Bundle.from_dict(bundle)
    tcfg = b.train_config(cache_dir=cache_dir, tear_sheet=tear_sheet)
    prep = prepare(tcfg, "cpu", b)
    model = build_model(b.model, prep.ws.n_features, b.seq_len, model_config(b.model, b.model_config))
    model.load_state(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=STATE_ARTIFACT)))
    eval_mode(model)
    test = pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predictions.parquet"))
    # the tear sheet's own condition on these predictions (for walk-forward folds it differs
    # from the run's tag, which says whether any one fold's cross-section was too small)
    label_scale = b.inputs.get("label_scale", 1.0)
    skipped = factor_eval.factor_metrics(test, label_scale)[1] if len(test) else "no test predictions"
    # the run ended FINISHED; reopened to add artifacts, it ends FINISHED again
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        log_full_evaluation(model, prep, test, tcfg, bundle, skipped)
    return True


def load_network(model_uri: str) -> tuple[torch.nn.Module, Bundle]:
    """The plain torch network (a normal `nn.Module` in eval mode on CPU, ready for `.train()`,
    fine-tuning or inspection) and its Bundle, from a logged model URI (runs:/..., models:/...).
    A tune trial that logged its fitted state only gets its model logged first (`complete_run`)."""
    ensure_model(model_uri)
    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    state, bundle = local / "artifacts" / packaging.STATE, local / "artifacts" / packaging.BUNDLE
    if not (state.is_dir() and bundle.exists()):
        raise StockLabError(f"model: {model_uri} has no artifacts/{packaging.STATE} (not a stocklab scoring model)")
    return packaging.network_from_files(state, bundle)


def load_scoring_model(model_uri: str):
    """The raw-bar pyfunc (serving.py) of a logged model URI, as MLflow's own tools load it."""
    ensure_model(model_uri)
    return mlflow.pyfunc.load_model(model_uri)


def ensure_model(model_uri: str) -> None:
    """A `runs:/<id>/...` URI of a tune trial that logged its fitted state only: log its model now."""
    if model_uri.startswith("runs:/"):
        run_id = model_uri[len("runs:/") :].split("/")[0]
        client = mlflow.MlflowClient()
        if not has_model(run_id) and client.list_artifacts(run_id, STATE_ARTIFACT):
            complete_run(run_id)

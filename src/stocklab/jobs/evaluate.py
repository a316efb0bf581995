"""The `evaluate` job: re-score a logged model on a split, with factor metrics and tear sheet.

    mlflow run . -e evaluate --env-manager local -P run_id=<id>
    mlflow run . -e evaluate --env-manager local -P model_uri=models:/stocklab-lstm@champion -P split=valid
    mlflow run . -e evaluate --env-manager local -P run_id=<id> -P folds=3    # walk-forward, refit per fold

The model's own Bundle (feature recipe, column order, train-fitted scaler, window shape) rebuilds
its inputs through the same `pipeline.inputs.prepare` as training, on the data it was trained on unless
`data` is given. Results go to a new run tagged `stocklab.source_run_id` (and
`stocklab.source_model_uri`).
"""

from __future__ import annotations

import mlflow

from stocklab import tracking
from stocklab.config import EvaluateConfig, StockLabError, TrainConfig, split_params, with_values
from stocklab.errors import describe, one_line
from stocklab.pipeline.artifacts import evaluate_split
from stocklab.pipeline.fitting import train_in_run
from stocklab.pipeline.inputs import prepare
from stocklab.pipeline.logged import load_network


def _source(cfg: EvaluateConfig) -> tuple[str, str]:
    """(model URI, id of the run that logged it)."""
    client = mlflow.tracking.MlflowClient()
    if cfg.run_id:
        try:
            client.get_run(cfg.run_id)
        except mlflow.exceptions.MlflowException:
            raise StockLabError(f"run_id: no run '{cfg.run_id}' in {mlflow.get_tracking_uri()}") from None
        return f"runs:/{cfg.run_id}/model", cfg.run_id
    try:
        info = mlflow.models.get_model_info(cfg.model_uri)
    except Exception as e:  # noqa: BLE001 - MLflow raises several types for a bad URI
        raise StockLabError(f"model_uri: cannot resolve '{cfg.model_uri}' ({one_line(e)})") from None
    return cfg.model_uri, info.run_id


def run_evaluate(cfg: EvaluateConfig) -> dict:
    cfg.validate()
    model_uri, source_run_id = _source(cfg)
    if cfg.folds > 1:
        return _walk_forward(cfg, model_uri, source_run_id)
    model, bundle = load_network(model_uri)
    data = cfg.data or bundle.data
    if not data:
        raise StockLabError("data: the model's bundle records no data path; pass -P data=...")
    tcfg = bundle.train_config(
        data=data, cache_dir=cfg.cache_dir, eval_batch_size=cfg.eval_batch_size, tear_sheet=cfg.tear_sheet
    )
    prep = prepare(tcfg, "cpu", bundle)
    same_data = prep.report.fingerprint == bundle.data_fingerprint
    name = tracking.unique_name(f"evaluate {bundle.model} {cfg.split}")
    with tracking.job_run(cfg.experiment or "stocklab-evaluate", bool(cfg.experiment), run_name=name) as run:
        mlflow.set_tags(
            {
                "stocklab.source_run_id": source_run_id or "",
                "stocklab.source_model_uri": model_uri,
                "stocklab.model": bundle.model,
                "stocklab.data_fingerprint": prep.report.fingerprint[:16],
                "stocklab.same_data_as_training": str(same_data).lower(),
            }
        )
        tracking.log_params_once(
            {
                "model_uri": model_uri,
                "split": cfg.split,
                "data_scored": data,
                "model": bundle.model,
                **tracking.dataset_params(prep.report, len(prep.panel.tickers)),
            }
        )
        metrics = evaluate_split(model, prep, tcfg, cfg.split)
        return {"run_id": run.info.run_id, "source_run_id": source_run_id, **metrics}


def _walk_forward(cfg: EvaluateConfig, model_uri: str, source_run_id: str) -> dict:
    """Walk-forward evaluation of the configuration behind a logged model: the source run's
    effective configuration (its config.json) refit on `folds` folds, one run in stocklab-evaluate.
    A single fitted model cannot be judged on periods it was trained on, hence the refits."""
    try:
        logged = mlflow.artifacts.load_dict(f"runs:/{source_run_id}/config.json")
    except Exception as e:  # noqa: BLE001 - MLflow raises several types for a missing artifact
        raise StockLabError(f"run_id: run '{source_run_id}' has no config.json to refit ({one_line(e)})") from None
    values, overrides = split_params(logged)
    for key in ("experiment", "device"):  # this job's own, not the source run's
        values.pop(key, None)
    values.update(folds=cfg.folds, walk=cfg.walk, cache_dir=cfg.cache_dir, eval_batch_size=cfg.eval_batch_size,
                  tear_sheet=cfg.tear_sheet)  # fmt: skip
    if cfg.data:
        values["data"] = cfg.data
    tcfg = with_values(TrainConfig(), values)
    name = tracking.unique_name(f"evaluate {tcfg.model} walk-forward {cfg.folds} folds")
    with tracking.job_run(cfg.experiment or "stocklab-evaluate", bool(cfg.experiment), run_name=name) as run:
        mlflow.set_tags({"stocklab.source_run_id": source_run_id or "", "stocklab.source_model_uri": model_uri})
        try:
            res = train_in_run(tcfg, overrides)
        except Exception as e:
            mlflow.set_tag("stocklab.error", describe(e))
            raise
        return {"run_id": run.info.run_id, "source_run_id": source_run_id, **res}

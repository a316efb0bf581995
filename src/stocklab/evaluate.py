"""The `evaluate` job: re-score a logged model on a split, with factor metrics and tear sheet.

    mlflow run . -e evaluate --env-manager local -P run_id=<id>
    mlflow run . -e evaluate --env-manager local -P model_uri=models:/stocklab-lstm@champion -P split=valid

The model's own preprocess bundle (feature recipe, window length, train-fitted scaler) is used,
on the source run's data unless `data` is given. Results go to a new run tagged
`stocklab.source_run_id` (and `stocklab.source_model_uri`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlflow
import numpy as np

from stocklab import tracking
from stocklab.config import StockLabError, TrainConfig
from stocklab.tracking import load_bundle
from stocklab.train import evaluate_split, prepare
from stocklab.windows import Scaler


@dataclass
class EvaluateConfig:
    run_id: str = field(default="", metadata={"help": "a train run whose model to score"})
    model_uri: str = field(default="", metadata={"help": "or any model URI (models:/name@alias)"})
    split: str = field(default="test", metadata={"help": "valid|test"})
    data: str = field(default="", metadata={"help": "data to score (default: the source run's)"})
    cache_dir: str = ".stocklab_cache"
    eval_batch_size: int = 8192

    def validate(self) -> EvaluateConfig:
        if bool(self.run_id) == bool(self.model_uri):
            raise StockLabError("run_id/model_uri: give exactly one of them")
        if self.split not in ("valid", "test"):
            raise StockLabError(f"split: {self.split!r} must be valid or test")
        return self


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
        raise StockLabError(f"model_uri: cannot resolve '{cfg.model_uri}' ({str(e).splitlines()[0]})") from None
    return cfg.model_uri, info.run_id


def run_evaluate(cfg: EvaluateConfig) -> dict:
    cfg.validate()
    model_uri, source_run_id = _source(cfg)
    model, bundle = load_bundle(model_uri)
    params = mlflow.get_run(source_run_id).data.params if source_run_id else {}
    data = cfg.data or params.get("data")
    if not data:
        raise StockLabError("data: the source run records no data path; pass -P data=...")
    tcfg = TrainConfig(
        data=data,
        model=bundle["model"],
        features=bundle["features"],
        horizon=bundle["horizon"],
        seq_len=bundle["seq_len"],
        window_stride=bundle.get("window_stride", 1),
        return_period=bundle.get("return_period", 1),
        label_scale=bundle["label_scale"],
        split=bundle["split"],
        max_tickers=int(params.get("max_tickers", 0)),
        seed=int(params.get("seed", 0)),
        cache_dir=cfg.cache_dir,
        eval_batch_size=cfg.eval_batch_size,
        device="cpu",
    )
    scaler = Scaler.from_dict(bundle["scaler"])
    prep = prepare(tcfg, "cpu", scaler, feature_names=bundle["feature_names"])
    if np.asarray(scaler.shift).shape[0] > 1 and prep.panel.tickers != bundle["tickers"]:
        raise StockLabError(
            f"data: the model's per-ticker scaler was fit on {len(bundle['tickers'])} other tickers; "
            "score it on the data it was trained on or use a global scaler"
        )
    with mlflow.start_run() as run:
        mlflow.set_tags({"stocklab.source_run_id": source_run_id or "", "stocklab.source_model_uri": model_uri})
        tracking.log_params_once(
            {
                "model_uri": model_uri,
                "split": cfg.split,
                "data_scored": data,
                "model": bundle["model"],
                **tracking.dataset_params(prep.report),
            }
        )
        metrics = evaluate_split(model, prep, tcfg, cfg.split)
        return {"run_id": run.info.run_id, "source_run_id": source_run_id, **metrics}
